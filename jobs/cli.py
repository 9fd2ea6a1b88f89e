"""The `sweep` command. Nothing here imports torch or transformers."""

from __future__ import annotations

import argparse
import os
import sys

from analysis.safe_text import terminal
from analysis.writers import FORMATS, formats_help
from jobs import backends
from quantlib.errors import UserError, os_error


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quantsweep")
    except PackageNotFoundError:
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep", description="Run BERT compression sweeps.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    la = sub.add_parser("launch", help="run or submit every job of a sweep spec")
    la.add_argument("spec", help="sweep spec (YAML)")
    la.add_argument("--backend", choices=backends.names(), default="local",
                    help="where the jobs run: this machine (local), or submitted to LSF or "
                    "SLURM as job arrays (default: %(default)s)")
    la.add_argument("--dry-run", action="store_true",
                    help="render every job script and show the submission commands only")
    la.add_argument("--force", action="store_true", help="rerun completed jobs too")
    la.add_argument("--max-parallel", type=int, default=None,
                    help="local: jobs at once (default: visible GPUs / GPUs per job, 1 on CPU)")
    la.add_argument("--sweep-dir", default=None, help="override the spec's sweep_dir")
    la.add_argument("--no-prefetch", action="store_true",
                    help="do not fetch models and datasets into the Hugging Face cache at launch; "
                    "each job resolves its own (needs the hub on the compute nodes)")
    la.add_argument("--max-jobs", type=int, default=None, metavar="N",
                    help="refuse specs that expand to more jobs (default: the spec's "
                    "max_jobs, else 100,000)")

    st = sub.add_parser("status", help="a table of every job of the sweep(s), with totals")
    st.add_argument("sweeps", nargs="*", help="sweep directories, specs or names (default: runs/*)")
    st.add_argument("--long", action="store_true",
                    help="each job's whole reason on a line of its own (the table cuts it)")

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
    co.add_argument("--to", choices=FORMATS, default="xlsx",
                    help=f"{formats_help()} (default: %(default)s)")
    co.add_argument("-o", "--output", default=None,
                    help="output file (default: results.<ext> in the first directory)")
    co.add_argument("--pattern", action="append", default=[], metavar="PATTERN",
                    help="how directories without a config.json name their runs, e.g. "
                    "'{task}_{method}quant{nbits}bit' (the default; repeatable, first match "
                    "wins; '/' spans directories, other fields such as {seed} become columns)")

    pb = sub.add_parser("plan-bits", help="bits per module group under a size budget, from a "
                        "sensitivity study; writes the chosen model's spec")
    pb.add_argument("paths", nargs="+", help="the sensitivity sweep's directory (or results)")
    pb.add_argument("--budget-mb", type=float, required=True,
                    help="the largest model size allowed, in MB (10^6 bytes)")
    pb.add_argument("-o", "--output", default=None,
                    help="the spec to write (default: planned.yaml; never overwritten)")
    pb.add_argument("--metric", default=None,
                    help="the metric to keep (default: the task's first, SQuAD's f1)")
    return p


class _ClosedPipeSafe:
    """stdout that survives its reader going away (`sweep status | head`): the first broken
    pipe sends the rest of the output to /dev/null instead of raising, so a launch that is
    running jobs goes on and nothing prints a traceback."""

    def __init__(self, stream):
        self._stream = stream

    def _devnull(self) -> None:
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, self._stream.fileno())
            os.close(fd)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._devnull()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not isinstance(sys.stdout, _ClosedPipeSafe):
        try:  # file names that are not UTF-8 print as escapes, not as a traceback
            sys.stdout.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
        sys.stdout = _ClosedPipeSafe(sys.stdout)
    try:
        if args.command == "launch":
            if args.max_parallel is not None and args.max_parallel < 1:
                raise UserError("--max-parallel: must be at least 1")
            from jobs.launch import launch

            if args.max_jobs is not None and args.max_jobs < 1:
                raise UserError("--max-jobs: must be at least 1")
            return launch(args.spec, args.backend, dry=args.dry_run, force=args.force,
                          max_parallel=args.max_parallel, sweep_dir=args.sweep_dir,
                          max_jobs=args.max_jobs, prefetch=not args.no_prefetch)
        if args.command in ("status", "cancel", "logs"):
            from jobs import running

            if args.command == "status":
                return running.status(args.sweeps, long=args.long)
            if args.command == "cancel":
                return running.cancel(args.sweeps, args.where)
            return running.logs(args.job, args.sweeps)
        if args.command == "plan-bits":
            from analysis.bitplan import plan_bits

            return plan_bits(args.paths, args.budget_mb, args.output, args.metric)
        from analysis.collect import collect
        from jobs.running import sweep_states

        return collect(args.paths, args.to, args.output, args.pattern, sweep_states)
    except UserError as exc:  # whatever it quotes prints as itself (analysis.safe_text.terminal)
        print(f"sweep: error: {terminal(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only directory, a full disk: the file and why, one line
        print(f"sweep: error: {terminal(os_error(exc))}", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
