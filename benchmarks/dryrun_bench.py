"""CPU and files of a 10,000-job dry run (issue 23, item 3).

    python benchmarks/dryrun_bench.py [--jobs 10152] [--repeat 3] [--dir .]

`sweep launch SPEC --backend B --dry-run` in a fresh interpreter, as a user runs it, for a grid
of task x method x nbits x seed of about --jobs jobs: the CPU time (user + system, from
getrusage of the child) of a first run into an empty sweep directory (every config and script
written) and of a second run over it (nothing changed, nothing rewritten); median of --repeat.

Interleaved with those runs, in the same loop, the reference `python -c "import torch,
transformers.trainer"` (the same interpreter) is measured the same way, so that both see the
same state of the machine. Targets, per backend:

- the first run's CPU is at most 0.25x the reference's (medians);
- the first run creates at most ceil(N/1000) + 10 regular files (recursively) in its sweep
  directory: configs go in one file per array (configs/<digest>.jsonl), not one per job.

A benchmark reports, it does not fail: each row says PASS or OVER against each target.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = "import torch, transformers.trainer"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
CPU_TARGET = 0.25


def cpu_of(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """(user CPU seconds, system CPU seconds, wall seconds) of one run of `python argv...`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, wall


def count_files(root: Path) -> int:
    """Regular files under root, recursively (symlinks not followed, not counted)."""
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def cpu_info() -> tuple[str, list[str]]:
    """(model name, the flags of CPU_FLAGS that /proc/cpuinfo lists) of the first CPU."""
    model, flags = "", None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    return model or platform.processor() or "unknown", [f for f in CPU_FLAGS if f in (flags or ())]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "OVER"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10152)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="lsf,slurm,local",
                    help="in this order (the first one's runs meet the machine coldest)")
    ap.add_argument("--dir", default=".", help="where the sweep directory is made (default: "
                    "here; on the development VM /tmp creates files 9x slower than /work)")
    args = ap.parse_args()
    model, flags = cpu_info()
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {model}; nproc {nproc}; flags: {' '.join(flags) or 'none'} "
          f"(of {', '.join(CPU_FLAGS)})")
    print(f"Python {platform.python_version()} ({sys.executable}); reference: "
          f'python -c "{REFERENCE}"; median of {args.repeat}')
    print()
    seeds = max(1, round(args.jobs / (2 * 3 * 8)))
    n = 2 * 3 * 8 * seeds
    bound = math.ceil(n / 1000) + 10
    print("| backend | jobs | first run: user / system (s) | first run: CPU (s) | wall (s) | "
          "again: user / system (s) | wall (s) | reference: user / system (s) | reference: CPU "
          f"(s) | first / reference | <= {CPU_TARGET} | files created | bound | files <= bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".dryrun-bench-") as tmp:
        root = Path(tmp).absolute()
        spec = root / "big.yaml"
        spec.write_text(f"name: big\ngrid: {{task: [rte, mrpc], method: [lin, p2, mb], "
                        f"nbits: 1..8, seed: 1..{seeds}}}\n")
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            first, again, ref, files = [], [], [], []
            for i in range(args.repeat):
                # a fresh directory each time: deleting 10,000 files just before would charge
                # the file system's clean-up to the next run's system time
                sweep = root / f"{backend}{i}"
                cmd = ["-m", "jobs.cli", "launch", str(spec), "--backend", backend,
                       "--dry-run", "--sweep-dir", str(sweep)]
                first.append(cpu_of(cmd, root))
                files.append(count_files(sweep))
                ref.append(cpu_of(["-c", REFERENCE], root))
                again.append(cpu_of(cmd, root))
            fu, fs, fw = (statistics.median(x) for x in zip(*first))
            au, as_, aw = (statistics.median(x) for x in zip(*again))
            ru, rs, _ = (statistics.median(x) for x in zip(*ref))
            f_cpu = statistics.median(u + s for u, s, _ in first)
            r_cpu = statistics.median(u + s for u, s, _ in ref)
            ratio = f_cpu / r_cpu
            nfiles = max(files)
            print(f"| {backend} | {n:,} | {fu:.2f} / {fs:.2f} | {f_cpu:.2f} | {fw:.2f} | "
                  f"{au:.2f} / {as_:.2f} | {aw:.2f} | {ru:.2f} / {rs:.2f} | {r_cpu:.2f} | "
                  f"{ratio:.3f} | {verdict(ratio <= CPU_TARGET)} | {nfiles} | {bound} | "
                  f"{verdict(nfiles <= bound)} |", flush=True)


if __name__ == "__main__":
    main()
