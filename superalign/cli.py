"""One CLI: ``superalign <command>``; ``superalign <command> --help`` for each.

Stage commands take config overrides as ``key=value``, ``--key value`` or ``--key=value``
(nested keys with dots: ``task_options.n_entities=40``; in ``--key`` a dash reads as an
underscore: ``--kl-budget``), on top of an optional ``--config`` YAML file.

Everything a stage or pipeline needs is checked before anything runs (see
:mod:`superalign.preflight`). A user error (an unknown key, a bad value, task, level or model
spec, invalid YAML) prints one ``superalign <command>: error: ...`` line, exits 2 and leaves no run
folder; ``--check`` stops after the checks. Any other error is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from superalign.bench import add_arguments as add_bench_arguments
from superalign.config import ConfigError, describe, load_config, one_line
from superalign.runs import process_rank
from superalign.stages import STAGES


def overrides_from_args(extra: list[str]) -> list[str]:
    """Turn leftover CLI tokens into ``key=value`` overrides. In the ``--key`` spellings a dash in
    the key stands for an underscore (``--kl-budget 2`` is ``kl_budget=2``), as flags are written."""
    out, i = [], 0
    while i < len(extra):
        tok = extra[i]
        if tok.startswith("--"):
            name, eq, value = tok[2:].partition("=")
            key = name.replace("-", "_") + eq + value
            if eq:
                out.append(key)
            elif (
                i + 1 < len(extra) and not extra[i + 1].startswith("--") and "=" not in extra[i + 1]
            ):
                out.append(f"{key}={extra[i + 1]}")
                i += 1
            else:
                out.append(f"{key}=true")
        elif "=" in tok:
            out.append(tok)
        else:
            raise ConfigError(f"unexpected argument {tok!r}: give config values as key=value")
        i += 1
    return out


def _stage_parser(sub: Any, name: str) -> None:
    stage = STAGES[name]
    p = sub.add_parser(
        name,
        help=stage.help,
        description=stage.help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument("-h", "--help", action="store_true", help="show the config fields and exit")
    _common_run_args(p)
    p.set_defaults(stage=name)


def _common_run_args(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", type=Path, help="YAML file of config values (CLI overrides win)")
    p.add_argument(
        "--runs-dir", type=Path, help="folder of run folders (default $SUPERALIGN_RUNS or ./runs)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute even if a finished run with this config exists",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config (every step of a pipeline) and exit without running anything",
    )


def _print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"\n{title}")
    width = max((len(k) for k in summary), default=0)
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        print(f"  {k:<{width}}  {v}")


def run_stage_command(name: str, args: argparse.Namespace, extra: list[str]) -> int:
    from superalign.stages import execute

    cfg_cls, _ = STAGES[name].load()
    if args.help:
        print(
            f"usage: superalign {name} [key=value ...] [--config FILE] [--runs-dir DIR] [--force]"
            " [--check]\n"
        )
        print(f"{STAGES[name].help}\n\nconfig fields:\n{describe(cfg_cls)}")
        return 0
    overrides = overrides_from_args(extra)
    # report_to is not a config field: it changes neither the result nor the run folder
    report_to = [o.partition("=")[2] for o in overrides if o.startswith("report_to=")]
    overrides = [o for o in overrides if not o.startswith("report_to=")]
    cfg = load_config(cfg_cls, args.config, overrides)
    if args.check:
        from superalign.preflight import check_stage

        check_stage(name, cfg)
        print(f"{name}: config checked, nothing run")
        return 0
    res = execute(
        name, cfg, root=args.runs_dir, force=args.force, report_to=(report_to or [None])[-1]
    )
    if process_rank()[0] == 0:  # under accelerate launch / torchrun, rank 0 speaks for all
        verb = "reused finished run (--force recomputes)" if res.reused else "finished"
        _print_summary(f"{name} {verb}: {res.dir}", res.summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from superalign.demo import demo

    claims = demo(root=args.runs_dir, force=args.force, overrides=args.overrides, seed=args.seed)
    return 0 if all(c.passed for c in claims) or not args.strict else 1


def cmd_run(args: argparse.Namespace) -> int:
    from superalign.pipeline import load_pipeline, run_pipeline

    steps = load_pipeline(args.pipeline, args.overrides)
    if args.check:
        from superalign.pipeline import check_pipeline

        check_pipeline(steps)
        print(f"{args.pipeline}: {len(steps)} steps checked, nothing run")
        return 0
    results = run_pipeline(steps, root=args.runs_dir, force=args.force)
    for step_id, res in results.items():
        _print_summary(f"{step_id}: {res.dir}", res.summary)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from superalign.report import build_report

    if not args.run_dir.is_dir():
        raise ConfigError(f"no such runs folder: {args.run_dir}")
    print(f"wrote {build_report(args.run_dir, args.output)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from superalign.bench import run_bench

    return run_bench(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from superalign.models.serve import serve

    serve(args.model, host=args.host, port=args.port, request_timeout=args.request_timeout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="superalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in STAGES:
        _stage_parser(sub, name)
    st = sub.add_parser(
        "stage", help="run any stage by name: superalign stage NAME [key=value ...]", add_help=False
    )
    st.add_argument("name", choices=sorted(STAGES), help="stage to run")
    st.add_argument(
        "-h", "--help", action="store_true", help="show the stage's config fields and exit"
    )
    _common_run_args(st)
    d = sub.add_parser("demo", help="run the main job on its embedded default (make demo)")
    d.add_argument(
        "overrides",
        nargs="*",
        metavar="id.key=value",
        help="change a step of the embedded pipeline",
    )
    d.add_argument(
        "--runs-dir", type=Path, help="folder of run folders (default $SUPERALIGN_RUNS or ./runs)"
    )
    d.add_argument("--force", action="store_true", help="recompute finished stages")
    d.add_argument(
        "--seed", type=int, default=0, help="shift every seed of the demo by N (default 0)"
    )
    d.add_argument(
        "--strict", action="store_true", help="exit 1 unless every claim passed (for scripts)"
    )
    d.set_defaults(func=cmd_demo)
    r = sub.add_parser("run", help="run a pipeline of stages from a YAML file")
    r.add_argument("pipeline", type=Path, help="pipeline YAML (see pipelines/)")
    r.add_argument("overrides", nargs="*", metavar="id.key=value", help="change a step's config")
    _common_run_args(r, config=False)
    r.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="one self-contained HTML report of a folder of run folders")
    rep.add_argument("run_dir", type=Path, help="folder of run folders (e.g. runs)")
    rep.add_argument(
        "-o", "--output", type=Path, help="HTML file to write (default RUN_DIR/report.html)"
    )
    rep.set_defaults(func=cmd_report)
    b = sub.add_parser("bench", help="benchmarks: generation, RL step vs bare PyTorch, demo time")
    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    s = sub.add_parser("serve", help="serve a model on localhost with OpenAI-compatible endpoints")
    s.add_argument(
        "model", help="model spec: folder, run folder, .gguf file, preset name or hub id"
    )
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds one request may generate before it is cut (default 60; 0: no limit)",
    )
    s.set_defaults(func=cmd_serve)
    from superalign.stress.blind import add_arguments as add_blind_arguments

    bl = sub.add_parser(
        "blind", help="an auditing game: stripped organism copies, random names, key kept apart"
    )
    add_blind_arguments(bl)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "stage":
            return run_stage_command(args.name, args, extra)
        if getattr(args, "stage", None):
            return run_stage_command(args.stage, args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except ConfigError as e:  # a user error: one line, no traceback (internal errors keep theirs)
        print(f"superalign {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
