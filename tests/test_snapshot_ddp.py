"""Jobs run a snapshot of the code taken at launch; several GPUs run under torchrun (DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO, sweep_cli, write_spec
from sweepfiles import sweep_configs

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
    snap = snaps[0]  # one zip file, not a tree of files
    assert snap.suffix == ".zip" and snap.is_file()
    with zipfile.ZipFile(snap) as zf:
        assert zf.read("jobs/runtime.py") == (REPO / "jobs/runtime.py").read_bytes()
        assert {"jobs/backends/lsf.py", "templates/_run.sh.j2"} <= set(zf.namelist())
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
    # and its templates load from it (the submitit plugin renders its script in the job's code)
    code = ("import templates; print(templates.__file__); "
            "print(templates.environment().get_template('_lsf_child.sh.j2').filename)")
    probe = subprocess.run([sys.executable, "-c", code],
                           env={**os.environ, "PYTHONPATH": str(snap)}, capture_output=True,
                           text=True, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[0] == str(snap / "templates/__init__.py")


def test_several_gpus_run_under_torchrun(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("GPUS", "2"))
    for backend in ("local", "lsf", "slurm"):
        assert sweep_cli("launch", str(spec), "--backend", backend, "--dry-run",
                         cwd=tmp_path).returncode == 0
    for script in (tmp_path / "runs/snap/scripts").glob("*.sh"):  # jobs.runtime starts it
        assert "--nproc_per_node=2" in script.read_text(), script.name
    config = next(iter(sweep_configs(tmp_path / "runs/snap").values()))
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
        out = tmp_path / f"out{n}"
        cfg.write_text(json.dumps({**base, "output_dir": str(out), "nproc_per_node": n}))
        code = (f"from jobs.runtime import run_config; import json; "
                f"print('RESULTS', json.dumps(run_config({str(cfg)!r})))")

        def attempt(code=code, out=out, n=n) -> str:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=300, cwd=tmp_path)
            if n > 1:  # only DDP talks over gloo
                _check_ddp(proc.returncode == 0, proc.stdout + proc.stderr, out)
            assert proc.returncode == 0, proc.stderr[-2000:]
            return proc.stdout

        stdout = _once_more_on_gloo_failure(attempt)
        results[n] = json.loads(stdout.split("RESULTS ", 1)[1])
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


# what gloo's TCP transport says when a peer's connection drops (gloo/transport/tcp/pair.cc)
GLOO_TRANSPORT_FAILURES = ("Connection closed by peer", "Connection reset by peer",
                           "gloo/transport/tcp")


class GlooTransportFailure(AssertionError):
    """A DDP run failed in gloo's transport; `out` is its output folder."""

    def __init__(self, message: str, out: Path):
        super().__init__(message)
        self.out = out


def _check_ddp(ok: bool, log: str, out: Path) -> None:
    """A failed DDP run's diagnostics as a failure, raised as GlooTransportFailure where its
    log shows gloo's transport failing (what _once_more_on_gloo_failure reruns)."""
    if ok:
        return
    if any(marker in log for marker in GLOO_TRANSPORT_FAILURES):
        raise GlooTransportFailure(_why(log, out), out)
    raise AssertionError(_why(log, out))


def _once_more_on_gloo_failure(attempt):
    """attempt()'s value; where gloo's transport failed it, attempt() once more from a clean
    output folder, with the first failure's diagnostics as a warning; a second failure fails
    the test. Gloo on loopback has failed a DDP run once on the 2-core CI, stop 18 (a rank
    exited while the other waited in an all_gather: "Connection closed by peer", the same
    transport flake as pytorch's own gloo tests, e.g. pytorch/pytorch#53138, #53270); not
    reproduced here in 63 DDP runs under CPU contention. Any other failure is not retried."""
    import shutil
    import warnings

    try:
        return attempt()
    except GlooTransportFailure as failure:
        warnings.warn(f"DDP run failed in gloo's transport once, rerun:\n{failure}",
                      stacklevel=2)
        shutil.rmtree(failure.out, ignore_errors=True)
    return attempt()


def _reference_run(start) -> Path:
    """An uninterrupted DDP run that another is compared with; its output folder."""

    def attempt() -> Path:
        proc, out = start()
        log, _ = proc.communicate(timeout=300)
        _check_ddp(proc.returncode == 0, log, out)
        return out

    return _once_more_on_gloo_failure(attempt)


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
                f"sys.exit(run_ddp([{str(cfg)!r}], 2, Path({str(out)!r})))")
        # unbuffered (the ranks inherit it): the loss lines must reach us as they are logged
        return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}), out

    def cut_and_resume() -> tuple[Path, dict]:
        """The run cut by the warning, then its rerun (a gloo failure in either: both again)."""
        proc, out = start("cut")
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if sum("'loss'" in x for x in seen) >= 2:  # training: step 4 logged
                proc.send_signal(signal.SIGUSR2)
                break
        rest, _ = proc.communicate(timeout=300)
        log = "".join(seen) + rest
        _check_ddp(proc.returncode == 75, log, out)  # preemption.REQUEUE
        status = json.loads((out / "status.json").read_text())
        assert status["state"] == "interrupted" and status["checkpoint_step"] > 0, status
        assert "rank 1: preempted" in log  # the other rank stopped too, at the same step
        assert (out / "checkpoints" / f"checkpoint-{status['checkpoint_step']}").is_dir()
        again, _ = start("cut")
        again_log, _ = again.communicate(timeout=300)
        _check_ddp(again.returncode == 0, again_log, out)
        return out, status

    out, status = _once_more_on_gloo_failure(cut_and_resume)
    plain_out = _reference_run(lambda: start("plain"))
    resumed = json.loads((out / "eval_results.json").read_text())
    uninterrupted = json.loads((plain_out / "eval_results.json").read_text())
    assert resumed["resumed_from_step"] == status["checkpoint_step"]
    for key in ("eval_accuracy", "eval_loss", "train_steps"):
        assert resumed[key] == uninterrupted[key], key

