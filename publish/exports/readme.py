"""What every export's README says about writing the export again: the command, complete.

The command must run as written: ``--input`` and ``--output`` are required, so it names the
real dataset and export folders as they were at export time (absolute, since the command
runs from another folder; a URI as given), and it says where it runs -- the mmpr-forge
checkout, with ``.venv/bin/python -m pipeline`` as the project's README runs every command
(the ``mmpr-forge`` console script pyproject declares is the same entry point, but is on
the PATH only with the virtualenv active).  These are the build machine's paths, on purpose
and only here: the data files themselves never name them.
"""
from __future__ import annotations

import os
import shlex

from pipeline.files import storage

#: how a README runs the exporter
CLI = ".venv/bin/python -m pipeline export"
#: where that command runs
WHERE = "the mmpr-forge checkout (with its `.venv`)"


def _real(path: str) -> str:
    """A folder as a command run from the checkout must name it: absolute, or the URI as given."""
    return path if storage.is_uri(path) else os.path.abspath(path)


def export_command(fmt: str, input_dir: str, output_dir: str, root: str | None) -> str:
    """The command line that writes ``input_dir``'s ``fmt`` export to ``output_dir`` (with ``--root``)."""
    args = ["--format", fmt, "--input", _real(input_dir), "--output", _real(output_dir)]
    if root:
        args += ["--root", root]
    return f"{CLI} {shlex.join(args)}"


def again_section(ex, root_hint: bool = False) -> str:
    """The README's closing section: the command that wrote this export folder (``ex``, a
    ``common.ExportFolder``), runnable as written, and (``root_hint``) how to add ``--root``."""
    command = export_command(ex.fmt, ex.input_dir, ex.root, ex.image_root)
    shared = ("## Images\n\nThe images are in `../images/`, one content-addressed folder that every export of "
              "this build shares: move or copy the whole `exports/` folder, not this one alone (the command below, "
              "given another `--output`, writes this export alone with its own `images/`).\n\n") if ex.shared is not None else ""
    hint = ("\nAdd `--root DIR` to write absolute paths under DIR, the folder this export will have on the "
            "training machine.\n") if root_hint and not ex.image_root else ""
    return (f"{shared}## Export it again\n\nOn the machine that wrote this export, from {WHERE}, this command writes "
            f"it again:\n\n```bash\n{command}\n```\n{hint}")
