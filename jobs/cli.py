"""The `sweep` command. Nothing here imports torch or transformers."""

from __future__ import annotations

import argparse
import sys

from jobs.errors import UserError

BACKENDS = ("local", "lsf", "slurm")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep", description="Run BERT compression sweeps.")
    sub = p.add_subparsers(dest="command", required=True)

    la = sub.add_parser("launch", help="run or submit every job of a sweep spec")
    la.add_argument("spec", help="sweep spec (YAML)")
    la.add_argument("--backend", choices=BACKENDS, default="local")
    la.add_argument("--dry-run", action="store_true",
                    help="render every job script and show the submission commands only")
    la.add_argument("--force", action="store_true", help="rerun completed jobs too")
    la.add_argument("--max-parallel", type=int, default=None,
                    help="local: jobs at once (default: visible GPUs / GPUs per job, 1 on CPU)")
    la.add_argument("--sweep-dir", default=None, help="override the spec's sweep_dir")

    st = sub.add_parser("status", help="a table of every job of the sweep(s), with totals")
    st.add_argument("sweeps", nargs="*", help="sweep directories, specs or names (default: runs/*)")

    ca = sub.add_parser("cancel", help="cancel pending and running jobs")
    ca.add_argument("sweeps", nargs="*", help="sweep directories, specs or names")
    ca.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                    help="only jobs whose config matches (repeatable), e.g. task=mrpc")

    lo = sub.add_parser("logs", help="show a job's log")
    lo.add_argument("job", help="job id (or its prefix), or the scheduler's id")
    lo.add_argument("sweeps", nargs="*", help="sweep directories, specs or names")

    co = sub.add_parser("collect", help="gather job results into a workbook, CSV, Markdown or "
                        "an HTML report")
    co.add_argument("paths", nargs="*", default=["runs"],
                    help="sweep or job directories, ours or other tools' (default: runs)")
    co.add_argument("--to", choices=("xlsx", "csv", "md", "html"), default="xlsx")
    co.add_argument("-o", "--output", default=None,
                    help="output file (default: results.<ext> in the first directory)")
    co.add_argument("--pattern", action="append", default=[], metavar="PATTERN",
                    help="how directories without a config.json name their runs, e.g. "
                    "'{task}_{method}quant{nbits}bit' (the default; repeatable, first match "
                    "wins; '/' spans directories, other fields such as {seed} become columns)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "launch":
            if args.max_parallel is not None and args.max_parallel < 1:
                raise UserError("--max-parallel: must be at least 1")
            from jobs.launch import launch

            return launch(args.spec, args.backend, dry=args.dry_run, force=args.force,
                          max_parallel=args.max_parallel, sweep_dir=args.sweep_dir)
        if args.command in ("status", "cancel", "logs"):
            from jobs import manage

            if args.command == "status":
                return manage.status(args.sweeps)
            if args.command == "cancel":
                return manage.cancel(args.sweeps, args.where)
            return manage.logs(args.job, args.sweeps)
        from analysis.collect import collect

        return collect(args.paths, args.to, args.output, args.pattern)
    except UserError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
