"""`sweep collect --to xlsx` over N job directories (target: 10,000 in at most 10 s, linear in N).

    python benchmarks/collect_bench.py [--sizes 1250 2500 5000 10000] [--repeat 3]

Each size is a sweep as `sweep launch` leaves it: a ledger registering every job, and per job
config.json (the full resolved configuration, ~45 keys), status.json, eval_results.json and
eval_results.txt; GLUE tasks × lin/p2/mb × 1..8 bits plus FP32, over as many seeds as it takes,
with a few single-class runs among them. Timed in a fresh interpreter, as a user runs it (the
whole command: start-up, walk, read, tables, workbook, atomic write); the median of --repeat
runs, and the phases of one run in-process (find_runs / blocks and summaries / workbook).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = {"cola": ["matthews_correlation"], "sst2": ["accuracy"], "mrpc": ["accuracy", "f1",
         "combined_score"], "qnli": ["accuracy"], "rte": ["accuracy"], "stsb": ["pearson",
         "spearmanr", "combined_score"], "wnli": ["accuracy"], "qqp": ["accuracy", "f1",
         "combined_score"]}
BASE = {"act_granularity": "tensor", "act_nbits": 8, "attention_weight": 1.0, "batch_size": 32,
        "bf16": False, "ce_weight": 0.0, "dataset_name": "nyu-mll/glue", "ema_decay": 0.9999,
        "eval_batch_size": 64, "finetune": "auto", "finetune_epochs": 3.0, "fp16": False,
        "kd_temperature": 1.0, "layer_weight": 1.0, "learning_rate": 2e-5, "logging_steps": 100,
        "logits_loss": "mse", "logits_weight": 1.0, "max_eval_samples": None,
        "max_grad_norm": 1.0, "max_seq_length": 128, "max_train_samples": None,
        "model_name_or_path": "bert-base-uncased", "nproc_per_node": 1, "qat_epochs": 1.0,
        "quantize_modules": ["*encoder.layer.*"], "save_model": False, "tokenizer_name": None,
        "warmup_ratio": 0.1, "weight_decay": 0.0, "epochs_per_stage": 2.0,
        "inq_steps": [0.5, 0.75, 0.875, 1.0], "data_dir": None, "gradient_accumulation_steps": 1,
        "eval_steps": None, "save_steps": 500, "save_total_limit": 2, "lr_scheduler": "linear",
        "adam_epsilon": 1e-8, "per_channel": False, "calibration": "max",
        "calibration_batches": 16, "percentile": 99.99, "num_bits_act": 8}


def make_sweep(root: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    sweep = root / f"bench{n}"
    jobs_dir = sweep / "jobs"
    jobs_dir.mkdir(parents=True)
    grid = [(t, "fp32", None) for t in TASKS] + [
        (t, m, b) for t in TASKS for m in ("lin", "p2", "mb") for b in range(8, 0, -1)]
    ledger = {"sweep": f"bench{n}", "spec": str(sweep / "spec.yaml"), "spec_text": "name: b\n",
              "jobs": {}}
    for i in range(n):
        task, method, bits = grid[i % len(grid)]
        run_seed = i // len(grid) + 1
        jid = f"{i:010x}"
        out = jobs_dir / f"{task}_{method}_{bits}_s{run_seed}-{jid}"
        out.mkdir()
        config = {**BASE, "task": task, "method": method, "seed": run_seed, "job_id": jid,
                  "sweep": f"bench{n}", "output_dir": str(out)}
        if bits is not None:
            config["nbits"] = bits
        collapsed = bits is not None and bits <= 2 and rng.random() < 0.3
        metrics = {}
        for m in TASKS[task]:
            metrics[f"eval_{m}"] = 0.0 if collapsed and m == "matthews_correlation" else (
                0.5092 if collapsed and task == "sst2" else rng.uniform(0.5, 0.92))
        results = {**metrics, "eval_loss": rng.uniform(0.2, 0.7), "eval_runtime": 3.2,
                   "eval_samples_per_second": 300.0, "train_loss": rng.uniform(0.1, 0.5),
                   "quantized_fraction": 1.0, "pred_classes": 1 if collapsed else 2}
        (out / "config.json").write_text(json.dumps(config, indent=4, sort_keys=True))
        (out / "status.json").write_text(json.dumps({"state": "completed", "host": "n1"}))
        (out / "eval_results.json").write_text(json.dumps(results, indent=4, sort_keys=True))
        (out / "eval_results.txt").write_text("".join(f"{k[5:]} = {v}\n" for k, v in
                                                      sorted(metrics.items())))
        ledger["jobs"][jid] = {"state": "completed", "attempts": 1, "index": i,
                               "config": config, "output_dir": str(out)}
    (sweep / "ledger.json").write_text(json.dumps(ledger, indent=1))
    return sweep


def cli_seconds(sweep: Path, out: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "jobs.cli", "collect", str(sweep), "--to",
                               "xlsx", "-o", str(out)], cwd=REPO, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    return statistics.median(times)


def phases(sweep: Path, out: Path) -> dict[str, float]:
    import contextlib
    import gc
    import io

    from analysis.blocks import build_blocks
    from analysis.results import find_runs
    from analysis.summary import summarize
    from analysis.tables import tidy
    from analysis.workbook import write_xlsx

    gc.disable()  # as `sweep collect` does
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        runs = find_runs([str(sweep)]).runs
    t1 = time.perf_counter()
    header, rows = tidy(runs)
    blocks = build_blocks(runs)
    summaries = summarize(blocks)
    t2 = time.perf_counter()
    write_xlsx(out, blocks, summaries, header, rows)
    t3 = time.perf_counter()
    gc.enable()
    return {"read": t1 - t0, "tables": t2 - t1, "xlsx": t3 - t2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1250, 2500, 5000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("| jobs | `sweep collect --to xlsx` (s) | per 1,000 jobs (s) | read | tables | "
              "xlsx | workbook size |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.sizes:
            sweep = make_sweep(root, n)
            out = root / f"bench{n}.xlsx"
            seconds = cli_seconds(sweep, out, args.repeat)
            parts = phases(sweep, out)
            size = out.stat().st_size / 1e6
            print(f"| {n:,} | {seconds:.2f} | {seconds / n * 1000:.3f} | {parts['read']:.2f} | "
                  f"{parts['tables']:.2f} | {parts['xlsx']:.2f} | {size:.1f} MB |", flush=True)


if __name__ == "__main__":
    main()
