"""Shared fixtures: tiny models and small data written to temp dirs (nothing is downloaded)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


TOKEN_VAR = "QUANTSWEEP_TEST_TOKEN"


def processes_with(token: str) -> list[int]:
    """The processes whose environment carries `token` (those a test started, and theirs: job
    scripts, the LSF stand-in's dispatchers and jobs, SLURM jobs, which inherit it)."""
    needle = f"{TOKEN_VAR}={token}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read() + b"\0":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(autouse=True)
def reap_leaked_processes(monkeypatch):
    """Every process a test starts ends with the test, pass or fail: a failing test must not
    leave a job requeueing itself for an hour under every later test."""
    import signal
    import uuid

    token = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_VAR, token)
    yield
    for pid in processes_with(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from quantlib.demo import write_model

    return write_model(tmp_path_factory.mktemp("model") / "tiny-bert")


@pytest.fixture(scope="session")
def demo_task(tmp_path_factory) -> Path:
    from quantlib.demo import write_glue_tsv

    return write_glue_tsv(tmp_path_factory.mktemp("glue") / "SST-2", n_train=400, n_dev=100)


# the base of a tiny sweep that trains for seconds (format with model= and data=)
TINY_BASE = """
base:
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 16
  finetune_epochs: 0.25
  max_train_samples: 32
  max_eval_samples: 16
"""


def recording(env: dict[str, str], tmp_path: Path, command: str
              ) -> tuple[dict[str, str], Path]:
    """`env` with `command` (bsub, sbatch) wrapped: each call's arguments appended to the file
    returned, then the real command run."""
    wrapper = tmp_path / f"record-{command}"
    wrapper.mkdir()
    calls = tmp_path / f"{command}-calls"
    real = shutil.which(command, path=env["PATH"])
    (wrapper / command).write_text(f'#!/bin/bash\necho "$*" >> {calls}\nexec {real} "$@"\n')
    (wrapper / command).chmod(0o755)
    return {**env, "PATH": f"{wrapper}{os.pathsep}{env['PATH']}"}, calls


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def sweep_cli(*args: str, cwd: Path | None = None):
    """Run the `sweep` CLI in a fresh interpreter, as a user would."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


# --- LSF: a real LSF-family scheduler (volclava, tests/lsf/start.sh) and the LSF 10.1 stand-in
LSF_DIR = Path(os.environ.get("QUANTSWEEP_LSF_DIR", "/tmp/quantsweep-lsf"))
STANDIN_BIN = REPO / "tests" / "lsf_standin" / "bin"


def volclava_env() -> tuple[dict[str, str] | None, str]:
    """(the environment clients of the test volclava need, "") when it answers; else (None,
    why)."""
    import subprocess

    envdir, bindir = LSF_DIR / "volclava" / "etc", LSF_DIR / "volclava" / "bin"
    if not (envdir / "lsf.conf").is_file() or not (bindir / "bsub").is_file():
        return None, f"no volclava configured (looked for {envdir}/lsf.conf)"
    env = {**os.environ, "LSF_ENVDIR": str(envdir),
           "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    try:
        out = subprocess.run([str(bindir / "bhosts")], env=env, capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"bhosts: {exc}"
    # ok, or closed while its slots are taken (a previous test's jobs still ending)
    if not any(len(line.split()) > 1 and line.split()[1] in ("ok", "closed")
               for line in out.stdout.splitlines()[1:]):
        return None, f"volclava does not take jobs: {(out.stdout + out.stderr).strip()[:200]}"
    return env, ""


@pytest.fixture(autouse=True)
def _no_ambient_lsf(monkeypatch):
    """A test meets an LSF only through its fixture (volclava, lsf_standin): an `lsid` already
    on the PATH (a developer's sourced volclava profile) would change the dialect a dry run
    picks, and a dialect found by an earlier test in this process is forgotten."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    keep = [d for d in dirs if not (d and (Path(d) / "lsid").is_file())]
    if keep != dirs:
        monkeypatch.setenv("PATH", os.pathsep.join(keep))
    monkeypatch.delenv("LSF_ENVDIR", raising=False)
    _forget_the_site()


def _forget_the_site() -> None:
    """What the LSF backend read of the scheduler at hand, once per process: read anew."""
    from jobs.backends import lsf

    lsf._lsid_cache.clear()
    lsf._bparams_cache.clear()


def _use_env(monkeypatch, env: dict[str, str]) -> None:
    """This process runs the scheduler's commands too (the submitit plugin, in-process CLI
    calls): the environment goes to os.environ as well; the dialect is found anew."""
    for key in ("PATH", "LSF_ENVDIR", "LSF_STANDIN_DIR", "LSF_STANDIN_TERMINATE_INTERVAL"):
        if key in env:
            monkeypatch.setenv(key, env[key])
    _forget_the_site()


@pytest.fixture
def volclava(monkeypatch):
    """The test volclava's client environment (a real LSF-family scheduler: OpenLava's
    command set). Skips, saying why, where none runs (start one with tests/lsf/start.sh, as
    root); on CI, where .ci/run started it, a volclava that does not answer fails the test.
    Every job a test leaves there is killed at its end."""
    import subprocess

    env, why = volclava_env()
    if env is None:
        if os.environ.get("CI") and (LSF_DIR / "volclava" / "etc" / "lsf.conf").is_file():
            pytest.fail(why)
        pytest.skip(f"{why} (start one with tests/lsf/start.sh)")
    env.pop("LSB_BJOBS_CONSISTENT_EXIT_CODE", None)
    _use_env(monkeypatch, env)
    yield env
    subprocess.run(["bkill", "-u", "all", "0"], env=env, capture_output=True, timeout=60)
    import time

    deadline = time.monotonic() + 40  # bkill's INT, TERM, KILL come 10 s apart: let them end
    while time.monotonic() < deadline:
        out = subprocess.run(["bjobs", "-u", "all"], env=env, capture_output=True, text=True,
                             timeout=60)
        if not any(" RUN " in line or " PEND " in line for line in out.stdout.splitlines()):
            break
        time.sleep(1)


@pytest.fixture
def lsf_standin(tmp_path, monkeypatch):
    """The LSF 10.1 stand-in (tests/lsf_standin): for what only LSF 10.1 has and volclava
    lacks (-wa/-wt, -gpu, -outdir, several -R, bjobs JOBINDEX / EXIT_CODE,
    LSB_BJOBS_CONSISTENT_EXIT_CODE, JOB_TERMINATE_INTERVAL, signal scopes); each test that
    uses it says which."""
    env = {**os.environ, "PATH": f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}",
           "LSF_STANDIN_DIR": str(tmp_path / "lsf-state"),
           "LSF_STANDIN_TERMINATE_INTERVAL": "2"}
    env.pop("LSF_ENVDIR", None)
    monkeypatch.delenv("LSF_ENVDIR", raising=False)
    _use_env(monkeypatch, env)
    return env


# --- tiers: `pytest -m "not slow"` is the quick tier (unit tests, in-process CLI checks) ----
# modules whose tests train in job subprocesses or run whole sweeps end to end
SLOW_MODULES = {
    "test_cluster_sweeps", "test_export_onnx", "test_hydra_launcher", "test_launcher_faults",
    "test_local_e2e", "test_lsf_plugin", "test_methods_e2e", "test_preemption",
    "test_prefetch", "test_report", "test_seed_study_volclava", "test_snapshot_code",
    "test_snapshot_ddp", "test_spec_edits", "test_stages_e2e", "test_sweep_files",
    "test_tracking",
}
# fixtures that are a scheduler: a test that takes one is slow wherever it is
SCHEDULER_FIXTURES = {"volclava", "lsf_standin", "slurm", "lsf", "lsf10", "lsf_env"}


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or SCHEDULER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# --- SLURM: the real single-node cluster tests/slurm/start.sh starts ------------------------
SLURM_CONF = Path(os.environ.get("QUANTSWEEP_SLURM_DIR", "/tmp/quantsweep-slurm")) / "slurm.conf"


def slurm_state(env: dict[str, str]) -> tuple[bool | None, str]:
    """(the controller answered: True, refused: False, too slow to tell: None; sinfo's text)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%N %T"], env=env, capture_output=True,
                             text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None, "sinfo took over 10 s"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"sinfo: {exc}"
    text = (out.stdout + out.stderr).strip() or f"sinfo exit status {out.returncode}"
    return out.returncode == 0, text


def slurm_env(wait: float = 0.0) -> tuple[dict[str, str] | None, str]:
    """(environment, "") once the test SLURM's node can take jobs (idle, mixed, allocated or
    still completing a previous test's job), waiting up to `wait` seconds; else (None, why)."""
    if not SLURM_CONF.is_file() or shutil.which("sinfo") is None:
        return None, f"no SLURM configured (looked for {SLURM_CONF})"
    env = {**os.environ, "SLURM_CONF": str(SLURM_CONF)}
    deadline = time.monotonic() + wait
    while True:
        answered, state = slurm_state(env)
        if answered and re.search(r"\b(idle|mixed|allocated|alloc|completing)\b", state):
            return env, ""
        if answered is False or time.monotonic() >= deadline:  # no waiting on a dead one
            return None, f"SLURM at {SLURM_CONF} does not take jobs: {state}"
        time.sleep(2)


@pytest.fixture
def slurm():
    """The test SLURM's environment; every job a test leaves on it is cancelled at the test's
    end, pass or fail (the test cluster is this suite's own: tests run one at a time)."""
    env, why = slurm_env(wait=60.0)
    if env is None:
        if os.environ.get("CI") and SLURM_CONF.is_file():  # .ci/run started it: must work
            pytest.fail(why)
        pytest.skip(f"{why} (start one with tests/slurm/start.sh)")
    yield env
    import getpass

    subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=env, capture_output=True,
                   timeout=60)
