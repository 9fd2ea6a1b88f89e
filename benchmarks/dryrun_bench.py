"""CPU time of a 10,000-job dry run (target: at most 2 s of CPU).

    python benchmarks/dryrun_bench.py [--jobs 10152] [--repeat 3]

`sweep launch SPEC --backend B --dry-run` in a fresh interpreter, as a user runs it, for a grid
of task x method x nbits x seed of about --jobs jobs: the CPU time (user + system, from
getrusage of the child) of a first run into an empty sweep directory (every config and script
written) and of a second run over it (nothing changed, nothing rewritten); median of --repeat.
The local backend writes a script per job besides its config (twice the files).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_of(args: list[str], cwd: Path) -> tuple[float, float, float]:
    """(user CPU seconds, system CPU seconds, wall seconds) of one run of the CLI."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10152)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=".", help="where the sweep directory is made (default: "
                    "here; on the development VM /tmp creates files 9x slower than /work)")
    args = ap.parse_args()
    seeds = max(1, round(args.jobs / (2 * 3 * 8)))
    print("| backend | jobs | first run: user + system CPU (s) | wall (s) | again: user + system "
          "CPU (s) | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".dryrun-bench-") as tmp:
        root = Path(tmp).absolute()
        spec = root / "big.yaml"
        spec.write_text(f"name: big\ngrid: {{task: [rte, mrpc], method: [lin, p2, mb], "
                        f"nbits: 1..8, seed: 1..{seeds}}}\n")
        n = 2 * 3 * 8 * seeds
        for backend in ("lsf", "slurm", "local"):
            first, again = [], []
            for i in range(args.repeat):
                # a fresh directory each time: deleting 10,000 files just before would charge
                # the file system's clean-up to the next run's system time
                cmd = ["launch", str(spec), "--backend", backend, "--dry-run",
                       "--sweep-dir", str(root / f"{backend}{i}")]
                first.append(cpu_of(cmd, root))
                again.append(cpu_of(cmd, root))
            fu, fs, fw = (statistics.median(x) for x in zip(*first))
            au, as_, aw = (statistics.median(x) for x in zip(*again))
            print(f"| {backend} | {n:,} | {fu:.2f} + {fs:.2f} | {fw:.2f} | {au:.2f} + {as_:.2f} | "
                  f"{aw:.2f} |")


if __name__ == "__main__":
    main()
