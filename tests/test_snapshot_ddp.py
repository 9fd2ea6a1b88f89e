"""Jobs run a snapshot of the code taken at launch; several GPUs run under torchrun (DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, sweep_cli, write_spec

SPEC = """
name: snap
grid: {task: [rte], method: [lin], nbits: [4]}
resources: {gpus: GPUS}
"""


def test_scripts_run_the_snapshot_taken_at_launch(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("GPUS", "1"))
    assert sweep_cli("launch", str(spec), "--dry-run", cwd=tmp_path).returncode == 0
    snaps = list((tmp_path / "runs/snap/snapshots").iterdir())
    assert len(snaps) == 1
    snap = snaps[0]
    assert (snap / "jobs/runtime.py").read_bytes() == (REPO / "jobs/runtime.py").read_bytes()
    assert (snap / "jobs/lsf/lsf.py").is_file() and (snap / "templates/_run.sh.j2").is_file()
    script = next((tmp_path / "runs/snap/scripts").glob("*.sh")).read_text()
    assert f"export PYTHONPATH={snap}" in script
    # relaunching the same code reuses the snapshot
    assert sweep_cli("launch", str(spec), "--dry-run", cwd=tmp_path).returncode == 0
    assert list((tmp_path / "runs/snap/snapshots").iterdir()) == [snap]
    # the snapshot is what a job imports
    code = "import jobs.runtime; print(jobs.runtime.__file__)"
    probe = subprocess.run([sys.executable, "-c", code],
                           env={**os.environ, "PYTHONPATH": str(snap)}, capture_output=True,
                           text=True, cwd=tmp_path)
    assert probe.stdout.strip() == str(snap / "jobs/runtime.py")


def test_several_gpus_run_under_torchrun(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("GPUS", "2"))
    for backend in ("local", "lsf", "slurm"):
        assert sweep_cli("launch", str(spec), "--backend", backend, "--dry-run",
                         cwd=tmp_path).returncode == 0
    for script in (tmp_path / "runs/snap/scripts").glob("*.sh"):  # jobs.runtime starts it
        assert "--nproc_per_node=2" in script.read_text(), script.name
    config = json.loads(next((tmp_path / "runs/snap/configs").glob("*.json")).read_text())
    assert config["nproc_per_node"] == 2


def test_ddp_job_on_two_cpu_processes(tmp_path, tiny_model, demo_task):
    """What a cluster job with gpus: 2 runs (run_config -> torchrun), here on CPU with gloo."""
    base = {"task": "sst2", "method": "lin", "nbits": 4, "model_name_or_path": str(tiny_model),
            "data_dir": str(demo_task), "max_seq_length": 24, "batch_size": 16,
            "finetune_epochs": 1, "epochs_per_stage": 0.5, "max_train_samples": 128,
            "max_eval_samples": 64}
    results = {}
    for n in (1, 2):
        cfg = tmp_path / f"c{n}.json"
        cfg.write_text(json.dumps({**base, "output_dir": str(tmp_path / f"out{n}"),
                                   "nproc_per_node": n}))
        code = (f"from jobs.runtime import run_config; import json; "
                f"print('RESULTS', json.dumps(run_config({str(cfg)!r})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results[n] = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    assert results[2]["train_steps"] * 2 == results[1]["train_steps"]  # two ranks share batches
    assert results[2]["quantized_fraction"] == 1.0
    status = json.loads((tmp_path / "out2" / "status.json").read_text())
    assert status["state"] == "completed"  # rank 0 keeps the records
    assert Path(status["code"]).is_dir()


def _why(log: str, out: Path) -> str:
    """What a failed DDP run said: its status reason, then the lines of its ranks' own errors
    (rank 0's come first in the log, and the tail holds only the survivors' tracebacks)."""
    try:
        reason = json.loads((out / "status.json").read_text()).get("reason")
    except (OSError, ValueError):
        reason = None
    lines = log.splitlines()
    errors = [x for x in lines if "Error" in x or "jobs.runtime:" in x or "[rank0]" in x]
    return f"status reason: {reason}\n" + "\n".join(errors[:60]) + "\n...\n" + log[-1500:]


def _reference_run(start) -> Path:
    """An uninterrupted DDP run that another is compared with; its output folder. Gloo on
    loopback has failed such a run once on the 2-core CI, stop 18 (a rank exited while the
    other waited in an all_gather: "Connection closed by peer", the same transport flake as
    pytorch's own gloo tests, e.g. pytorch/pytorch#53138, #53270); not reproduced here in 63 DDP
    runs under CPU contention. The reference is run once more then, from a clean folder, with
    the first failure's diagnostics as a warning; a second failure fails the test."""
    import shutil
    import warnings

    proc, out = start()
    log, _ = proc.communicate(timeout=300)
    if proc.returncode != 0:
        warnings.warn(f"DDP reference run failed once, rerun:\n{_why(log, out)}", stacklevel=2)
        shutil.rmtree(out)
        proc, out = start()
        log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, _why(log, out)
    return out


def test_ddp_job_checkpoints_on_the_warning_and_resumes(tmp_path, tiny_model, demo_task):
    """gpus: 2 under a scheduler's warning: the signal reaches the job's process; every rank
    stops at the same step, rank 0 checkpoints, the job says REQUEUE; the rerun resumes and
    ends with the results of an uninterrupted run."""
    import signal


    base = {"task": "sst2", "method": "fp32", "model_name_or_path": str(tiny_model),
            "data_dir": str(demo_task), "max_seq_length": 24, "batch_size": 16,
            "finetune_epochs": 6, "max_train_samples": 128, "max_eval_samples": 64,
            "logging_steps": 2, "learning_rate": 5e-4, "nproc_per_node": 2, "seed": 3}

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        cfg = tmp_path / f"{name}.json"
        out = tmp_path / name
        cfg.write_text(json.dumps({**base, "output_dir": str(out)}))
        code = (f"import sys; from pathlib import Path; from jobs.runtime import run_ddp; "
                f"sys.exit(run_ddp({str(cfg)!r}, 2, Path({str(out)!r})))")
        return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT), out

    proc, out = start("cut")
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if sum("'loss'" in x for x in seen) >= 2:  # training: step 4 logged
            proc.send_signal(signal.SIGUSR2)
            break
    rest, _ = proc.communicate(timeout=300)
    log = "".join(seen) + rest
    assert proc.returncode == 75, _why(log, out)  # preemption.REQUEUE
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and status["checkpoint_step"] > 0, status
    assert "rank 1: preempted" in log  # the other rank stopped too, at the same step
    assert (out / "checkpoints" / f"checkpoint-{status['checkpoint_step']}").is_dir()
    again, _ = start("cut")
    again_log, _ = again.communicate(timeout=300)
    assert again.returncode == 0, _why(again_log, out)
    plain_out = _reference_run(lambda: start("plain"))
    resumed = json.loads((out / "eval_results.json").read_text())
    uninterrupted = json.loads((plain_out / "eval_results.json").read_text())
    assert resumed["resumed_from_step"] == status["checkpoint_step"]
    for key in ("eval_accuracy", "eval_loss", "train_steps"):
        assert resumed[key] == uninterrupted[key], key

