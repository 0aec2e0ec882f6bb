"""Command line: ``python -m pipeline {run,stage,export,report,config,tiny-model,sample-data}``.

Config mistakes exit with status 2 and one message per wrong key, before any
work starts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from pipeline.run.signals import MESSAGE, Interrupted, shutdown, stop_on_signals
from pipeline.run.terminal import echo, error_log, quiet_build


def _overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """The config keys the command line sets, and for each the argument as typed: a wrong
    value is reported as that argument (``--set generate.n=abc``), not as the config file."""
    from pipeline.config.settings import ConfigError

    values, origins = {}, {}

    def put(key: str, value, origin: str) -> None:
        values[key], origins[key] = value, origin

    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expects KEY=VALUE, e.g. --set generate.n=16")
        key, value = item.split("=", 1)
        try:
            put(key, yaml.safe_load(value), f"--set {item}")
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not valid YAML: {e}".replace("\n", " ")) from None
    if getattr(args, "work_dir", None):
        put("run.work_dir", args.work_dir, f"--work-dir {args.work_dir}")
    if getattr(args, "output", None) and args.command == "run":
        put("run.output_dir", args.output, f"--output {args.output}")
    if getattr(args, "executor", None):
        put("executor.kind", args.executor, f"--executor {args.executor}")
    if getattr(args, "ray_address", None):
        put("executor.address", args.ray_address, f"--ray-address {args.ray_address}")
    if getattr(args, "stages", None):
        put("run.stages", [s.strip() for s in args.stages.split(",") if s.strip()], f"--stages {args.stages}")
    return values, origins


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/sample.yaml", help="YAML config (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set generate.n=16 (repeatable)")
    p.add_argument("--executor", choices=["ray", "local"], help="override executor.kind")
    p.add_argument("--ray-address", help="override executor.address (a Ray cluster)")
    p.add_argument("--work-dir", help="override run.work_dir")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and vLLM's output live instead of in <work_dir>/logs/")
    p.add_argument("--adopt", action="store_true",
                   help="write into non-empty folders mmpr-forge did not create (their files are never "
                        "touched; a file the pipeline would replace stops it instead)")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.core import graph
    from publish.exports import FORMATS

    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole pipeline (resumes finished partitions)")
    _config_args(p)
    p.add_argument("--output", help="override run.output_dir (the final dataset folder)")
    p.add_argument("--stages", help="comma-separated subset of stages to run")
    p.add_argument("--restart", action="store_true", help="discard the work folder and start clean")

    p = sub.add_parser("stage", help="run one stage on any Parquet input",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="stages:\n" + "\n".join(f"  {n:<12} {graph.stage_class(n).help()}" for n in graph.ordered()))
    p.add_argument("name", help="stage name (" + ", ".join(graph.ordered()) + ")")
    _config_args(p)
    p.add_argument("--input", help="a Parquet file or a folder of them (ignored by ingest)")
    p.add_argument("--output", required=True, help="output folder")

    p = sub.add_parser("export", help="lay a built dataset out for a trainer")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--input", required=True, help="dataset folder written by the pipeline")
    p.add_argument("--output", required=True, help="export folder")
    p.add_argument("--adopt", action="store_true",
                   help="write into a non-empty folder mmpr-forge did not create (its files are never touched)")
    p.add_argument("--root", metavar="DIR", help="where the export folder will be on the training machine: "
                                                 "paths are written under DIR (default: relative to the export)")

    p = sub.add_parser("report", help="print the run report of a work folder, or (--input) write "
                                      "a dataset folder's HTML report")
    _config_args(p)
    p.add_argument("--input", help="a dataset folder written by the pipeline: write INPUT/report.html")
    p.add_argument("--html", metavar="PATH", help="with --input: write the HTML report here instead")
    p.add_argument("--seed", type=int, default=0, help="with --input: seed of the sampled pairs (default: %(default)s)")
    p.add_argument("--per-method", type=int, default=20,
                   help="with --input: sampled pairs shown per method (default: %(default)s)")

    p = sub.add_parser("config", help="print every config key with its type, default and description, "
                                      "or (--config/--set) a config's resolved values")
    p.add_argument("--config", help="a YAML config: print the resolved value of each of its keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set generate.n=16 (repeatable; without --config: "
                        "over the defaults)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="the reference as Markdown (docs/config.md)")
    form.add_argument("--json-schema", action="store_true",
                      help="the config model as a JSON schema (docs/config.schema.json)")

    p = sub.add_parser("tiny-model", help="build the project's tiny local VLM")
    p.add_argument("--out", default="models/tiny-idefics3")
    p.add_argument("--data", default="data/sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="training steps (default: the built-in recipe)")
    p.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")

    p = sub.add_parser("sample-data", help="generate the shipped sample data")
    p.add_argument("--out", default="data/sample")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _html_report(config) -> None:
    """After a run that wrote the dataset: its HTML report (a failure here does not fail the build)."""
    from pipeline.core import graph
    from pipeline.files import storage
    from publish.html_report import write_html_report

    out = config.run.output_dir
    wrote = any(graph.stage_class(s).kind == "dataset" for s in config.run.stages)
    if not wrote or not storage.exists(storage.join(out, "manifest.json")):
        return
    try:
        echo(f"html report: {write_html_report(out)}")
    except Exception as e:  # noqa: BLE001 -- the dataset is complete; the report is a view of it
        logging.getLogger("pipeline").warning("html report not written: %s: %s", type(e).__name__, e)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config.settings import ConfigError
    from pipeline.config.loading import load_config
    from pipeline.run.logs import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tiny-model":
            from demo.tiny_model import build_tiny_model
            steps = {"steps": args.steps} if args.steps else {}
            print(build_tiny_model(Path(args.out), Path(args.data), seed=args.seed, force=args.force,
                                   log=lambda m: print(m, file=sys.stderr, flush=True), **steps))
            return 0
        if args.command == "sample-data":
            from demo.sample_data import build_sample_data
            print(json.dumps(build_sample_data(Path(args.out), seed=args.seed)))
            return 0
        if args.command == "export":
            from publish.exports import export
            print(json.dumps(export(args.format, args.input, args.output, root=args.root, adopt=args.adopt)["rows"]))
            return 0
        if args.command == "config":
            from pipeline.config import reference
            if args.config or args.set:
                if args.markdown or args.json_schema:
                    raise ConfigError("config: --markdown and --json-schema print the reference, not values")
                print(reference.resolved_text(load_config(args.config, *_overrides(args))), end="")
            else:
                print(reference.json_schema() if args.json_schema else
                      reference.reference_markdown() if args.markdown else reference.reference_text(), end="")
            return 0
        if args.command == "report" and args.input:
            from publish.html_report import write_html_report
            print(f"report: {write_html_report(args.input, args.html, seed=args.seed, per_method=args.per_method)}")
            return 0
        config = load_config(args.config, *_overrides(args))
        setup_logging(config.run.log_level)
        if args.command in ("run", "stage"):
            from pipeline.run.orchestrator import NothingToPassOn
            from pipeline.run.folders import claim_folders

            stage = _stage_name(args.name) if args.command == "stage" else None
            try:
                # before anything is written, the log included: folders checked, locked and claimed
                with claim_folders(config, stage, args.output if stage else None, adopt=args.adopt), \
                        quiet_build(config.run.work_dir, verbose=args.verbose, discard_on=(ConfigError,)), \
                        stop_on_signals():
                    _run_or_stage(args, config)
            except NothingToPassOn as e:  # after the log's name: the last line says what went wrong
                print(e, file=sys.stderr)
                return 1
        elif args.command == "report":
            from pipeline.run.report import build_report, format_summary
            report = build_report(config)
            print(json.dumps(report, indent=2))
            print(format_summary(report))
    except ConfigError as e:  # a folder refusal (pipeline.files.ownership) is no config mistake: "error:"
        print(f"{getattr(e, 'label', 'config error')}: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # SIGINT/SIGTERM: everything the run started is stopped by now
        shutdown()  # (a signal after the build's own block: nothing was stopped yet)
        print(MESSAGE, file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 -- a quiet build's traceback is in its log file
        if args.command not in ("run", "stage") or args.verbose:
            raise
        # point to the log only when the terminal named one and the traceback is in it
        where = "the traceback is in the log named above" if error_log() else "--verbose shows the traceback"
        print(f"error: {type(e).__name__}: {e}\n({where})", file=sys.stderr)
        return 1
    return 0


def _stage_name(name: str) -> str:
    from pipeline.config.settings import ConfigError
    from pipeline.core.graph import ordered

    if name not in ordered():
        raise ConfigError(f"stage: unknown stage {name!r}; known: {ordered()}")
    return name


def _run_or_stage(args: argparse.Namespace, config) -> None:
    from pipeline.config.settings import ConfigError

    if args.command == "run":
        from pipeline.run.orchestrator import run_pipeline
        from pipeline.run.report import format_summary
        report = run_pipeline(config, restart=args.restart)
        for line in format_summary(report).splitlines():
            echo(line)
        echo(f"report: {os.path.join(config.run.work_dir, 'report.json')}")
        _html_report(config)
    else:
        from pipeline.core.graph import stage_class
        from pipeline.run.orchestrator import run_stage
        from pipeline.run.preflight import check_ray_address, check_sources, ensure_model
        cls = stage_class(_stage_name(args.name))
        if cls.kind == "source":
            check_sources(config)
        elif not args.input:
            raise ConfigError(f"--input is required for stage {args.name}")
        else:
            from pipeline.files import storage
            if not storage.is_uri(args.input) and not os.path.exists(args.input):
                # before the model is built or an engine started (a minute on CPU), not after
                raise ConfigError(f"--input: {args.input} does not exist (give a stage's output folder "
                                  "or a .parquet file)")
        check_ray_address(config)
        if cls.kind == "engine":
            from pipeline.run.preflight import check_model
            ensure_model(config)
            check_model(config)
        run_stage(config, args.name, args.input, args.output)
