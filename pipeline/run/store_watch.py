"""The Ray object store's peak over a run, sampled from the driver.

The pipeline moves rows through Parquet files, not the object store, so the store
should stay small; a soak at scale has to show it (issue 30).  Ray reports the
store's use per node through the raylet's memory-info RPC
(``ray._private.internal_api.get_memory_info_reply``: one raylet asks every node).
From outside the run that RPC is refused when Ray's token authentication is on, so
the driver, which is connected and holds the token, asks it: a daemon thread, one
request every ``SAMPLE_S``.  A failing request is recorded, never raised: this is a
measurement, the build does not depend on it.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("pipeline")

#: seconds between samples (a request costs ~10-80 ms of a raylet's time on 2 busy cores)
SAMPLE_S = 1.0
MB = 2 ** 20


class ObjectStoreWatch(threading.Thread):
    """Samples the cluster's object store until ``stop``; ``summary`` has the peaks (MB)."""

    def __init__(self, every_s: float = SAMPLE_S) -> None:
        super().__init__(name="object-store-watch", daemon=True)
        self.every_s = every_s
        self.peak_used = self.peak_fallback = self.spilled = 0
        self.last_used = 0
        self.samples = 0
        self.error: str | None = None
        self._halt = threading.Event()
        self._state = None

    def sample(self) -> int:
        """One request: the bytes in the store now (cluster-wide); peaks updated."""
        import ray
        from ray._private import internal_api

        if self._state is None:
            self._state = internal_api.get_state_from_address(ray.get_runtime_context().gcs_address)
        stats = internal_api.get_memory_info_reply(self._state, timeout_seconds=10).store_stats
        self.last_used = stats.object_store_bytes_used
        self.peak_used = max(self.peak_used, stats.object_store_bytes_used)
        self.peak_fallback = max(self.peak_fallback, stats.object_store_bytes_fallback)
        self.spilled = max(self.spilled, stats.spilled_bytes_total)
        self.samples += 1
        return stats.object_store_bytes_used

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 -- a measurement; the build goes on without it
                if self.error is None:
                    log.debug("object store not sampled: %s", e)
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            self._halt.wait(self.every_s)

    def stop(self) -> dict:
        """End the sampling and return ``summary``."""
        if self.is_alive():
            self._halt.set()
            self.join(timeout=15)
        return self.summary()

    def summary(self) -> dict:
        """For report.json: the peak bytes in the store, in fallback (disk) allocations and
        spilled, in MB, over ``samples`` samples; ``error``: the last failed request."""
        out = {"peak_used_mb": round(self.peak_used / MB, 1), "peak_fallback_mb": round(self.peak_fallback / MB, 1),
               "spilled_mb": round(self.spilled / MB, 1), "samples": self.samples, "every_s": self.every_s}
        if self.error:
            out["error"] = self.error
        return out
