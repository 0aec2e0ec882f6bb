"""What a build shows on the terminal, and where everything else goes.

A build starts Ray (raylet, GCS, workers) and vLLM (engine processes, weight
loading, compiler notices); each writes to the file descriptors it inherited.
Left alone, that buries the few lines a user wants -- one progress bar per
stage, the per-stage summaries, warnings about their data or config -- under
hundreds of others.  ``quiet_build`` therefore points the process's own
stdout/stderr (fd 1 and 2, so child processes and C libraries follow) at a log
file under the work folder, and keeps the terminal for what this module writes:
``echo`` (summary lines), ``progress`` (the stage bars) and warnings of the
``pipeline`` logger.  Ray workers' output reaches that log file through Ray's
``log_to_driver``, vLLM's engine processes through the fds they inherit.
``--verbose`` skips the redirection: everything is live, as before.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import traceback
from typing import IO, Iterator

#: the process's original stdout and stderr while a quiet build runs; None otherwise
_console: tuple[IO[str], IO[str]] | None = None
#: the log file a quiet build named on the terminal with the traceback of the error that ended it
_error_log: str | None = None


def is_quiet() -> bool:
    return _console is not None


def _stream() -> IO[str]:
    return _console[1] if _console else sys.stderr


def echo(line: str) -> None:
    """A line the user should see (summaries): on the original stdout, and in the log when quiet."""
    if _console is not None:
        _console[0].write(line + "\n")
        _console[0].flush()
    print(line, flush=True)


def progress(iterable=None, total: int | None = None, desc: str = ""):
    """A stage's progress bar, on the terminal (``MMPR_NO_PROGRESS=1`` turns bars off)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="partition", file=_stream(), dynamic_ncols=True,
                disable=os.environ.get("MMPR_NO_PROGRESS") == "1")


def error_log() -> str | None:
    """The log named on the terminal that holds the traceback of the error that ended the last
    quiet build; None when there is none (no log could be made, the traceback could not be
    written to it, or the error came before the build): the terminal must not send anyone to it."""
    return _error_log


def log_dir(work_dir: str) -> str:
    """Local folder for the build's log files: ``<work_dir>/logs``, or a temp folder when the
    work folder is on an object store (a file descriptor needs a local file)."""
    from pipeline.files import storage

    if storage.is_uri(work_dir):
        return os.path.join(tempfile.gettempdir(), "mmpr-logs")
    return os.path.join(os.path.abspath(work_dir), "logs")


@contextlib.contextmanager
def quiet_build(work_dir: str, verbose: bool = False,
                discard_on: tuple[type[BaseException], ...] = ()) -> Iterator[str | None]:
    """Run the body with fd 1/2 in ``<work_dir>/logs/build-<time>.log``; yields that path.

    On the way out (also on an error) the fds are restored and the terminal is told where
    the log is, so an error raised from the body can be reported on the terminal.  When the
    body raises one of ``discard_on`` (config mistakes: no work may start), the log and the
    folders made for it are removed again and nothing is said about them.
    """
    global _console, _error_log
    _error_log = None
    if verbose or _console is not None:
        yield None
        return
    folder = log_dir(work_dir)
    made = []  # folders this call creates, deepest last
    parent = folder
    while not os.path.exists(parent):
        made.insert(0, parent)
        parent = os.path.dirname(parent)
    path = os.path.join(folder, time.strftime("build-%Y%m%d-%H%M%S.log"))
    try:
        os.makedirs(folder, exist_ok=True)
        log = open(path, "ab", buffering=0)
    except OSError as e:
        # a read-only or full work folder: say so now, naming the place; there is no log for
        # the terminal to point to
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise OSError(e.errno, f"{e.strerror or e}: {e.filename or folder} (the build log goes there: "
                               "the work folder, --work-dir or run.work_dir, must be writable)") from e
    _flush()
    saved = os.dup(1), os.dup(2)
    console = tuple(os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace") for fd in (1, 2))
    handler = logging.StreamHandler(console[1])
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    with log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    _console = console
    logging.getLogger("pipeline").addHandler(handler)
    discard = logged = False
    try:
        yield path
    except BaseException as e:
        discard = isinstance(e, discard_on)
        try:  # into the log; the caller reports the error on the terminal
            traceback.print_exc()
            sys.stderr.flush()
            logged = True
        except OSError:  # the disk is full: the caller must not point to a log without it
            pass
        raise
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
        _console = None
        _flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if discard:
            os.remove(path)
            for d in reversed(made):
                with contextlib.suppress(OSError):  # not empty: something else was written there
                    os.rmdir(d)
        else:
            console[0].write(f"log: {path}  (Ray, vLLM and worker output; --verbose shows it live)\n")
            _error_log = path if logged else None
        for stream in console:
            stream.close()


def _flush() -> None:
    """Flush Python's stdout and stderr, whose fds may point at the build log: a full disk
    there must not keep the terminal from getting its fds back (or hide the error itself)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
