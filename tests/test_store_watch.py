"""The object store's peak is measured from the driver (``pipeline.run.store_watch``), where
Ray's memory-info request is allowed with token authentication on: the reading must see
what is in the store, not read 0 as the raylet's resident shared memory did (issue 30)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import ROOT

_PUT_50_MB = r'''
import json, time
import numpy as np
import ray
from pipeline.run.store_watch import ObjectStoreWatch

ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
watch = ObjectStoreWatch(every_s=0.2)
before = watch.sample()
watch.start()
ref = ray.put(np.ones(50 * 2**20, dtype=np.uint8))  # 50 MB: over the inline limit, so in the store
time.sleep(1.5)
during = watch.last_used
del ref
time.sleep(1.5)
summary = watch.stop()
print("RESULT " + json.dumps({"before": before, "during": during, "after": watch.last_used, **summary}))
'''


def test_the_watch_sees_a_50_mb_object_in_the_store_and_its_release():
    proc = subprocess.run([sys.executable, "-c", _PUT_50_MB], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads(line[len("RESULT "):])
    assert "error" not in got, got
    assert got["before"] < 2**20 and got["after"] < 2**20, got  # an empty store reads (near) 0 ...
    assert got["during"] >= 50 * 2**20, got                     # ... and the object while it lives
    assert 50 <= got["peak_used_mb"] < 60 and got["samples"] >= 5, got
