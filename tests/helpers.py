"""What the tests share besides fixtures (those are in conftest.py): the inputs they build
(images, configs), the commands they run (``python -m pipeline ...``) and the outputs they
read back (a stage's rows and markers, a dataset's shards).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
#: the sample config, as the CLI takes it when run from ROOT
SAMPLE_CONFIG = "configs/sample.yaml"
#: ``--set``s that make the sample build small: 32 prompts in 4 partitions, 4 short samples each,
#: no exports; a small scheduler budget makes partitions finish one after another, so a kill or a
#: signal lands mid-stage
SMALL = ["--set", "sources.0.limit=24", "--set", "sources.1.limit=8", "--set", "generate.n=4",
         "--set", "generate.max_tokens=48", "--set", "dropout_ntp.max_tokens=48",
         "--set", "run.partition_rows=8", "--set", "write.shard_rows=40", "--set", "export.formats=[]",
         "--set", "model.engine_kwargs={max_num_seqs: 16}"]
#: an InternLM-style chat template (InternVL's): it prints ``message['content']`` as a string
INTERNLM_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                     "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# -- inputs ----------------------------------------------------------------------------------

def encode(img, fmt: str = "PNG", **params) -> bytes:
    """A PIL image as the bytes of an image file (``params`` go to ``Image.save``)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def png(color=(200, 30, 30), size=(24, 16), mode: str = "RGB") -> bytes:
    """A PNG of one colour."""
    from PIL import Image

    return encode(Image.new(mode, size, color))


def users_folder(path: Path) -> Path:
    """A folder of someone's own files (``src/train.py``, ``notes.txt``), as a project is."""
    (path / "src").mkdir(parents=True)
    (path / "src" / "train.py").write_text("print('mine')\n")
    (path / "notes.txt").write_text("mine\n")
    return path


def shipped_config(name: str = "sample.yaml") -> dict:
    """A config under configs/, as the YAML data it holds."""
    import yaml

    return yaml.safe_load((ROOT / "configs" / name).read_text())


def make_config(**sections):
    """A validated config for tests: the sample config with overrides per section."""
    from pipeline.config.settings import PipelineConfig

    data = shipped_config()
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    for src in data.get("sources", []):
        if not os.path.isabs(src["path"]) and "://" not in src["path"]:
            src["path"] = str(ROOT / src["path"])
    data["model"]["tiny_model_dir"] = str(ROOT / "models" / "tiny-idefics3")
    data["model"]["tiny_model_data"] = str(ROOT / "data" / "sample")
    return PipelineConfig.model_validate(data)


def config_file(folder: Path, config: dict | str, name: str = "c.yaml") -> Path:
    """A config file in ``folder``: a dict as YAML, or YAML text (dedented)."""
    import yaml

    path = Path(folder) / name
    path.write_text(yaml.safe_dump(config) if isinstance(config, dict) else textwrap.dedent(config))
    return path


def load_config_file(folder: Path, config: dict | str):
    """``load_config`` of ``config_file(folder, config)``: what a user's file would give."""
    from pipeline.config.loading import load_config

    return load_config(config_file(folder, config))


@contextlib.contextmanager
def short_temp_dir() -> Iterator[Path]:
    """A fresh folder under the system's temp dir, removed after: for a ``TMPDIR`` whose
    contents a test checks.  pytest's ``tmp_path`` is too long for one: the sockets vLLM makes
    under it would pass the 107-byte limit of a unix socket path."""
    path = Path(tempfile.mkdtemp(prefix="mmpr-t-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def checked_temp_env(tmp: Path, ray_tmp: Path) -> dict[str, str]:
    """The environment of a run whose ``TMPDIR`` (``tmp``) a test checks is as empty after it.
    Torch's compile cache stays where it is (``<temp dir>/torchinductor_<user>``: a cache torch
    keeps on purpose, and warm), and a local Ray keeps its session folder (its logs, which Ray
    keeps on purpose) in a folder of its own, ``RAY_TMPDIR`` (``ray_tmp``)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return {"TMPDIR": str(tmp), "RAY_TMPDIR": str(ray_tmp), "TORCHINDUCTOR_CACHE_DIR": default_cache_dir()}


def folder_state(path: Path) -> list[str]:
    """Every path below ``path`` (relative), sorted: what a run left there."""
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


# -- the command line ------------------------------------------------------------------------

def cli(*args) -> list[str]:
    """``python -m pipeline ARGS`` (run it from ROOT, where ``SAMPLE_CONFIG`` is)."""
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without injected faults (``MMPR_FAULT*``), progress bars off, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMPR_FAULT")}
    env.update(MMPR_NO_PROGRESS="1", **extra)
    return env


def run_cli(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` from ROOT to its end, its output as text (captured unless
    ``stdout`` is given); ``kwargs`` go to ``subprocess.run`` (env, start_new_session, ...)."""
    if "stdout" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run(cli(*args), cwd=ROOT, text=True, timeout=timeout, **kwargs)


class CliRun:
    """``python -m pipeline ARGS`` started now, in a session of its own (so stopping it stops its
    engine too), its output into ``log``: for runs that go on beside a test's other work (each
    with its own work folder, output and engine, one core each on a 2-core machine)."""

    def __init__(self, *args, log: Path, env: dict[str, str] | None = None) -> None:
        self._start(cli(*args), log, cli_env() if env is None else env)

    def _start(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with open(log, "w") as sink:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def finish(self, timeout: float = 900) -> str:
        """Waits for its end (stopped past ``timeout``), asserts it ended well, returns its output."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        output = self.log.read_text(errors="replace")
        assert self.proc.returncode == 0, output[-6000:]
        return output

    def stop(self) -> None:
        if self.proc.poll() is None:  # a test that failed or timed out: its engine too
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_early(request, *fixtures: str) -> None:
    """Sets up each of ``fixtures`` (background runs: ``CliRun``s) that a selected test of
    ``request``'s module (of the session, from a session fixture) uses, now: called from a module's
    autouse fixture, the module's runs that do not wait for one another start together with its
    first test instead of each with its own test, one after another.  A fixture no selected test
    uses is not started."""
    items = [item for item in request.session.items if request.scope == "session" or item.module is request.module]
    used = {name for item in items for name in item.fixturenames}
    for name in fixtures:
        if name in used:
            request.getfixturevalue(name)


def small_ingest(out: Path) -> Path:
    """``stage ingest`` of the sample config made ``SMALL``, into ``out`` (no model is loaded)."""
    proc = run_cli("stage", "ingest", "--config", SAMPLE_CONFIG, "--output", out, *SMALL, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _on_terminal(cmd: list[str], transcript: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The ``script`` command line that runs ``cmd`` on a pseudo-terminal 120 columns wide, and its
    environment (progress bars on)."""
    shell = f"stty cols 120 rows 40; exec {shlex.join(cmd)}"
    return ["script", "-qec", shell, str(transcript)], {**os.environ, "MMPR_NO_PROGRESS": "0", **env}


def run_on_terminal(cmd: list[str], transcript: Path, timeout: int, **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` on a real pseudo-terminal (util-linux ``script``), as a user at a shell would,
    with progress bars on; ``transcript`` gets what the terminal showed (``terminal_lines``)."""
    script, run_env = _on_terminal(cmd, transcript, env)
    return subprocess.run(script, cwd=ROOT, env=run_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


class TerminalRun(CliRun):
    """``run_on_terminal`` started now, in the background (a ``CliRun``): what the terminal showed
    goes to ``log`` too."""

    def __init__(self, cmd: list[str], transcript: Path, log: Path, **env: str) -> None:
        script, run_env = _on_terminal(cmd, transcript, env)
        self._start(script, log, run_env)


def terminal_lines(transcript: Path) -> list[str]:
    """The lines a terminal scrolled through (a progress bar redrawn with \\r stays one line)."""
    text = transcript.read_bytes().decode("utf-8", "replace").replace("\r\n", "\n")  # no universal newlines
    return [ln for ln in text.split("\n")[:-1] if not ln.startswith(("Script started", "Script done"))]


# -- running a stage -------------------------------------------------------------------------

def run_stage_on(name: str, cfg, rows: list[dict], schema, folder: Path, engine=None) -> tuple[list[dict], object]:
    """One partition of stage ``name`` over ``rows`` (written to ``folder/in.parquet`` as ``schema``),
    through ``run_task`` as the executors run it: (the rows it wrote, its stats)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.run.runner import Task, run_task
    from stages import make_stage

    src = Path(folder) / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), src)
    task = Task(name, "p", (str(src),), str(Path(folder) / "out"), cfg.stage_hash(name))
    stats = run_task(make_stage(name, cfg), task, engine)
    return pq.read_table(task.data_uri()).to_pylist(), stats


# -- outputs ---------------------------------------------------------------------------------

def stage_rows(folder, part: str = "data") -> list[dict]:
    """The rows of a stage folder's ``part`` (data, quarantine), local or on a store, file by file
    in name order."""
    from pipeline.files import storage

    return [r for uri in storage.list_files(storage.join(str(folder), part), ".parquet")
            for r in storage.read_table(uri).to_pylist()]


def markers(folder) -> dict[str, dict]:
    """A stage folder's partition markers, local or on a store: file name -> what it holds
    (none when the folder or its markers/ do not exist)."""
    from pipeline.files import storage

    return {uri.rsplit("/", 1)[1]: storage.read_json(uri)
            for uri in storage.list_files(storage.join(str(folder), "markers"), ".json")}


def finished_at(folder) -> dict[str, float]:
    """When each partition of a stage folder finished, by marker file name (a rerun that redoes a
    partition rewrites its time)."""
    return {name: m["finished_at"] for name, m in markers(folder).items()}


def shard_hashes(dataset) -> dict[str, str]:
    """Shard path under data/ -> SHA-256 of its bytes, for a dataset folder local or on a store."""
    from pipeline.files import storage

    data = storage.join(str(dataset), "data")
    return {rel: hashlib.sha256(storage.read_bytes(storage.join(data, rel))).hexdigest()
            for rel in storage.walk_files(data) if rel.endswith(".parquet")}


def read_jsonl(path) -> list[dict]:
    """The objects of a JSON Lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]
