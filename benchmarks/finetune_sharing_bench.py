"""What shared fine-tuning saves (jobs.sharing): the seed study's trained epochs, and the CPU
time of a seed-study-shaped sweep on the tiny assets, with and without sharing, in one run.

    python benchmarks/finetune_sharing_bench.py [--nbits 2,4] [--train 512] [--repeat 1]

1. Epochs: sweeps/inq_mrpc.yaml expanded with and without sharing; each job's epochs are its
   FP32 fine-tuning (none for a job that resumes from the shared one) plus INQ's retraining
   (epochs_per_stage for every partition before the last); the shared job trains its
   fine-tuning once.
2. CPU: the same grid (lin, p2, mb x --nbits, the seed study's epochs: 3 + 3 x 2) on the demo's
   tiny BERT and generated SST-2 data, launched locally (one job at a time) with
   `finetune_sharing: false` and with sharing, alternately; the user + system CPU of the whole
   launch (every job's process), median of --repeat.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def trained_epochs(jobs: list) -> float:
    """Epochs the jobs train in all: fine-tuning (unless shared) + INQ's retraining stages."""
    from jobs.spec import FINETUNE_STAGE
    from quantlib.configs import defaults

    total = 0.0
    for job in jobs:
        c = {**defaults(job.get("method")), **job.config}
        if job.stage == FINETUNE_STAGE:
            total += c["finetune_epochs"]
            continue
        own = 0.0 if job.shared_finetune else c["finetune_epochs"]
        retrain = c["epochs_per_stage"] * sum(1 for f in c["inq_steps"] if f < 1.0)
        total += own + retrain
    return total


def seed_study_epochs() -> tuple[int, float, int, float]:
    from jobs.grid import expand
    from jobs.spec import load_spec

    spec = load_spec(REPO / "sweeps" / "inq_mrpc.yaml")
    shared = expand(spec)
    spec.finetune_sharing = False
    alone = expand(spec)
    return len(alone), trained_epochs(alone), len(shared), trained_epochs(shared)


SPEC = """name: bench
{extra}
grid:
  task: [sst2]
  method: [lin, p2, mb]
  nbits: [{nbits}]
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 32
  batch_size: 32
  learning_rate: 5.0e-4
  finetune_epochs: 3
  epochs_per_stage: 2
  inq_steps: [0.5, 0.75, 0.875, 1.0]
  max_train_samples: {train}
  max_eval_samples: 64
  logging_steps: 1000
"""


def launch_cpu(spec: Path, sweep_dir: Path) -> tuple[float, float]:
    """(user + system CPU seconds of the launch and its jobs, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "launch", str(spec), "--backend",
                           "local", "--sweep-dir", str(sweep_dir)], cwd=REPO,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nbits", default="2,4")
    ap.add_argument("--train", type=int, default=512, help="training examples per job")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    n_alone, e_alone, n_shared, e_shared = seed_study_epochs()
    print("sweeps/inq_mrpc.yaml (the seed study):")
    print("| | jobs | trained epochs |\n|---|---:|---:|")
    print(f"| each job fine-tunes | {n_alone} | {e_alone:g} |")
    print(f"| shared fine-tuning | {n_shared} | {e_shared:g} |")
    print(f"ratio: {e_shared / e_alone:.3f} (target <= 0.70)\n")

    from quantlib.demo import write_glue_tsv, write_model

    with tempfile.TemporaryDirectory(prefix="sharing-bench-") as tmp:
        root = Path(tmp)
        model = write_model(root / "model")
        data = write_glue_tsv(root / "SST-2", n_train=max(args.train, 64), n_dev=64)
        nbits = ", ".join(x.strip() for x in args.nbits.split(","))
        specs = {}
        for name, extra in (("alone", "finetune_sharing: false"), ("shared", "")):
            specs[name] = root / f"{name}.yaml"
            specs[name].write_text(SPEC.format(extra=extra, nbits=nbits, model=model,
                                               data=data, train=args.train))
        cpu: dict[str, list[float]] = {"alone": [], "shared": []}
        wall: dict[str, list[float]] = {"alone": [], "shared": []}
        for i in range(args.repeat):
            for name in ("alone", "shared"):
                c, w = launch_cpu(specs[name], root / f"{name}{i}")
                cpu[name].append(c)
                wall[name].append(w)
        jobs = 3 * len(nbits.split(","))
        print(f"tiny assets: lin, p2, mb x nbits {nbits} ({jobs} jobs, {args.train} training "
              "examples, 3 + 3 x 2 epochs each), one job at a time:")
        print("| | CPU user + system (s) | wall (s) |\n|---|---:|---:|")
        for name in ("alone", "shared"):
            print(f"| {'each job fine-tunes' if name == 'alone' else 'shared fine-tuning'} | "
                  f"{statistics.median(cpu[name]):.1f} | {statistics.median(wall[name]):.1f} |")
        ratio = statistics.median(cpu["shared"]) / statistics.median(cpu["alone"])
        print(f"CPU ratio: {ratio:.3f} (epochs: {(3 + jobs * 6) / (jobs * 9):.3f}; the rest is "
              "each job's start-up, evaluation and the parent's own evaluation)")


if __name__ == "__main__":
    main()
