"""The seed study on a real LSF-family scheduler: `sweeps/inq_mrpc.yaml` (24 INQ jobs, one
array) on the test volclava (tests/lsf/start.sh), the tiny model and a small MRPC-layout task in
place of bert-base and GLUE through a spec override; then a 1-minute `-W` run limit on a job
that trains longer: checkpoint at the limit's USR2 -> brequeue -> resume, to the results of an
uninterrupted run.

    python benchmarks/seed_study_volclava.py [WORKDIR]   # prints the timings; exit 0 = all held

Steps: launch (timed), status while running (no job lost), `sweep cancel --where method=mb`,
relaunch (submits the 8 cancelled jobs only), every job completed, collect to xlsx (24 runs);
the run limit. tests/test_seed_study_volclava.py runs the same.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from hold import held_until_warned

REPO = Path(__file__).resolve().parents[1]
LSF_DIR = Path(os.environ.get("QUANTSWEEP_LSF_DIR", "/tmp/quantsweep-lsf"))


class Failed(AssertionError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


def volclava_env() -> dict[str, str]:
    envdir, bindir = LSF_DIR / "volclava" / "etc", LSF_DIR / "volclava" / "bin"
    check((envdir / "lsf.conf").is_file(), f"no volclava at {LSF_DIR} (tests/lsf/start.sh)")
    return {**os.environ, "LSF_ENVDIR": str(envdir),
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def write_mrpc(task_dir: Path, n_train: int = 96, n_dev: int = 32, seed: int = 0) -> Path:
    """A paraphrase-like task in MRPC's layout (GLUE's train.tsv / dev.tsv columns): label 1
    when both sentences carry the same sentiment."""
    sys.path.insert(0, str(REPO))
    from quantlib.demo import sentence

    task_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    head = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [head]
        for i in range(n):
            (a, ya), (b, yb) = sentence(rng), sentence(rng)
            rows.append(f"{int(ya == yb)}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}")
        (task_dir / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return task_dir


def seed_spec(workdir: Path, model: Path, data: Path, nbits: list[int] | None = None) -> Path:
    """sweeps/inq_mrpc.yaml as shipped, overridden: tiny model and data, seconds of training,
    no GPU (volclava here has none), a 20-minute limit; `nbits`: fewer bit widths."""
    import yaml

    spec = yaml.safe_load((REPO / "sweeps" / "inq_mrpc.yaml").read_text())
    if nbits:
        spec["grid"]["nbits"] = nbits
    spec["base"].update(model_name_or_path=str(model), data_dir=str(data), max_seq_length=16,
                        batch_size=16, finetune_epochs=0.5, epochs_per_stage=0.25,
                        max_train_samples=32, max_eval_samples=16)
    spec["resources"].update(gpus=0, mem="1000MB", time=20)  # minutes
    path = workdir / "inq_mrpc.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(env, cwd, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def totals(env, cwd, sweep) -> str:
    proc = cli(env, cwd, "status", sweep)
    check(proc.returncode == 0, proc.stderr)
    return proc.stdout.strip().splitlines()[-1]


def wait_for(env, cwd, sweep, pattern: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        line = totals(env, cwd, sweep)
        if re.search(pattern, line):
            return line
        check(time.monotonic() < deadline, f"waited {seconds:.0f} s for {pattern!r}: {line}")
        time.sleep(2)


def seed_study(env: dict[str, str], workdir: Path, nbits: list[int] | None = None
               ) -> dict[str, float]:
    """The whole study (24 jobs), or the grid with only the bit widths `nbits`."""
    from quantlib.demo import write_model

    model = write_model(workdir / "tiny-bert")
    data = write_mrpc(workdir / "MRPC")
    spec = seed_spec(workdir, model, data, nbits)
    n = 3 * (len(nbits) if nbits else 8)
    figures: dict[str, float] = {}
    t0 = time.monotonic()
    launched = cli(env, workdir, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
    figures["launch_s"] = time.monotonic() - t0
    check(launched.returncode == 0, launched.stderr)
    # launch returns once the jobs are submitted, not when they end: none had completed then
    sys.path.insert(0, str(REPO))
    from jobs.ledger import Ledger
    from quantlib.jobdir import is_complete

    entries = Ledger(workdir / "runs/inq_mrpc").jobs.values()
    check(len(entries) == n, f"{len(entries)} jobs in the ledger, not {n}")
    figures["completed_at_launch"] = float(sum(is_complete(e["output_dir"]) for e in entries))
    check(f"submitted {n} jobs to LSF" in launched.stdout, launched.stdout)
    line = wait_for(env, workdir, "inq_mrpc", r"running", 120)
    check("lost" not in line and "failed" not in line, line)
    cancelled = cli(env, workdir, "cancel", "inq_mrpc", "--where", "method=mb")
    check(cancelled.returncode == 0 and re.search(r"cancelled [1-8] jobs", cancelled.stdout),
          cancelled.stdout + cancelled.stderr)  # those of the mb third still pending or running
    n_cancelled = int(re.search(r"cancelled (\d+) jobs", cancelled.stdout).group(1))
    wait_for(env, workdir, "inq_mrpc", rf"^{n} jobs: (?!.*(running|pending))", 900)
    again = cli(env, workdir, "launch", str(spec), "--backend", "lsf", "--no-prefetch")
    check(again.returncode == 0 and f"submitted {n_cancelled} jobs" in again.stdout,
          again.stdout + again.stderr)
    line = wait_for(env, workdir, "inq_mrpc", rf"^{n} jobs: {n} completed$", 900)
    figures["sweep_s"] = time.monotonic() - t0
    collected = cli(env, workdir, "collect", "runs/inq_mrpc", "-o", "results.xlsx")
    check(collected.returncode == 0 and collected.stdout.startswith(f"{n} jobs"),
          collected.stdout + collected.stderr)
    check((workdir / "results.xlsx").is_file(), "no workbook")
    return figures


LONG = {"name": "limited", "grid": {"task": ["mrpc"], "method": ["lin"], "nbits": [4]},
        "base": {"max_seq_length": 24, "batch_size": 8, "learning_rate": 5.0e-4,
                 "finetune_epochs": 20, "epochs_per_stage": 2, "max_train_samples": 256,
                 "max_eval_samples": 32, "seed": 11},
        "resources": {"cpus": 1, "mem": 2000, "time": 1, "max_requeues": 20}}


def run_limit(env: dict[str, str], workdir: Path) -> dict[str, float]:
    """-W 1 (OpenLava has no -wa: USR2 comes at the limit, the kill 10 minutes later): the job
    checkpoints, requeues itself (brequeue), resumes, and ends with an uninterrupted run's
    results. Its training (about 700 steps) is held until the USR2 (hold.held_until_warned)."""
    import yaml

    spec = json.loads(json.dumps(LONG))
    spec["base"].update(model_name_or_path=str(workdir / "tiny-bert"),
                        data_dir=str(workdir / "MRPC"))
    path = workdir / "limited.yaml"
    path.write_text(yaml.safe_dump(spec))
    t0 = time.monotonic()
    launched = cli(env, workdir, "launch", str(path), "--backend", "lsf", "--no-prefetch")
    check(launched.returncode == 0, launched.stderr)
    # USR2 comes at -W; past it and sbatchd's next check (SBD_SLEEP_TIME 2) at the latest
    held_until_warned(workdir / "runs" / "limited", 60 * spec["resources"]["time"] + 15)
    wait_for(env, workdir, "limited", r"1 completed", 900)
    seconds = time.monotonic() - t0
    sys.path.insert(0, str(REPO))
    from jobs.ledger import Ledger

    jid, entry = next(iter(Ledger(workdir / "runs/limited").jobs.items()))
    out = Path(entry["output_dir"])
    resumed = json.loads((out / "eval_results.json").read_text())
    check(resumed.get("resumed_from_step", 0) > 0, f"never cut by the limit: {resumed}")
    status = json.loads((out / "status.json").read_text())
    config = json.loads((out / "config.json").read_text())
    config["output_dir"] = str(workdir / "uninterrupted")
    (workdir / "plain.json").write_text(json.dumps(config))
    plain = subprocess.run([sys.executable, "-m", "jobs.runtime", str(workdir / "plain.json")],
                           capture_output=True, text=True, timeout=900, cwd=workdir,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    check(plain.returncode == 0, plain.stderr[-2000:])
    reference = json.loads((workdir / "uninterrupted" / "eval_results.json").read_text())
    for key in ("eval_accuracy", "eval_loss", "train_steps"):
        check(resumed[key] == reference[key], f"{key}: {resumed[key]} != {reference[key]}")
    return {"run_limit_s": seconds, "requeues": float(status.get("requeues") or 0)}


def main(argv: list[str]) -> int:
    import tempfile

    workdir = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="seed-volclava-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**volclava_env(), "PYTHONPATH": str(REPO)}
    figures = seed_study(env, workdir)
    figures.update(run_limit(env, workdir))
    for key, value in figures.items():
        print(f"{key}: {value:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
