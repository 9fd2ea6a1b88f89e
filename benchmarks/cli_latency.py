"""How fast the commands that do not train answer (target: well under a second).

    python benchmarks/cli_latency.py

Times, in fresh interpreters as a user runs them: `sweep launch sweeps/inq_mrpc.yaml --backend
lsf --dry-run` (24 jobs), the same for a 1,040-job sweep (two LSF arrays), and `sweep collect`
over 24 and 1,000 job directories. Median of 5 runs each.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 5


def timed(args: list[str], cwd: Path) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
    return statistics.median(times)


def fake_jobs(root: Path, n: int) -> None:
    for i in range(n):
        out = root / f"job{i}"
        out.mkdir(parents=True)
        config = {"task": "mrpc", "method": ["lin", "p2", "mb"][i % 3], "nbits": i % 8 + 1,
                  "seed": i // 24, "learning_rate": 2e-5}
        (out / "config.json").write_text(json.dumps(config))
        (out / "status.json").write_text(json.dumps({"state": "completed"}))
        (out / "eval_results.json").write_text(json.dumps(
            {"eval_accuracy": 0.8, "eval_f1": 0.85, "eval_combined_score": 0.825,
             "eval_pred_classes": 2}))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big = root / "big.yaml"
        big.write_text("name: big\ngrid: {task: [rte], method: [lin, p2], nbits: 1..8, "
                       "seed: 1..65}\n")
        rows = [
            ("launch inq_mrpc.yaml --backend lsf --dry-run (24 jobs)",
             timed(["launch", str(REPO / "sweeps/inq_mrpc.yaml"), "--backend", "lsf",
                    "--dry-run"], root)),
            ("launch --backend lsf --dry-run (1,040 jobs, 2 arrays)",
             timed(["launch", str(big), "--backend", "lsf", "--dry-run"], root)),
        ]
        for n in (24, 1000):
            fake_jobs(root / f"c{n}", n)
            rows.append((f"collect --to xlsx ({n} job dirs)",
                         timed(["collect", str(root / f"c{n}"), "-o", str(root / "r.xlsx")],
                               root)))
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} s |")


if __name__ == "__main__":
    main()
