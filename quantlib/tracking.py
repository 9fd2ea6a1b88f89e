"""Training curves (`report_to`): the HF Trainer's own integrations, set up for a sweep job.

- tensorboard: event files in `<job>/tensorboard` (TENSORBOARD_LOGGING_DIR).
- wandb: run name = the job id, group = the sweep, project = WANDB_PROJECT or the sweep; files
  in `<job>/wandb`; offline (`wandb sync` later) when WANDB_MODE is unset and the wandb server
  cannot be reached within 3 s, as on compute nodes without internet.
- mlflow: experiment = the sweep, run name = the job id; the store is MLFLOW_TRACKING_URI or
  `<job>/mlruns` (a file store: no server needed).
What the user set in the environment wins. Nothing here imports the tools: the Trainer does.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

CHOICES = ("none", "tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
WANDB_HOST = ("api.wandb.ai", 443)


class TrackingError(RuntimeError):
    pass


def _reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def setup(report_to: str, out_dir: Path, job_id: str, sweep: str) -> dict[str, str]:
    """Set the environment the Trainer's integration reads; returns what was set."""
    if report_to == "none":
        return {}
    package = PACKAGES[report_to]
    if importlib.util.find_spec(package) is None:
        raise TrackingError(f"report_to {report_to}: the {package} package is not installed in "
                            f"this job's environment (pip install {package}, or "
                            "'quantsweep[tracking]' for tensorboard)")
    env: dict[str, str] = {}
    if report_to == "tensorboard":
        env["TENSORBOARD_LOGGING_DIR"] = str(out_dir / "tensorboard")
    elif report_to == "wandb":
        env.update(WANDB_DIR=str(out_dir), WANDB_RUN_GROUP=sweep, WANDB_NAME=job_id,
                   WANDB_PROJECT=sweep)
        (out_dir / "wandb").mkdir(parents=True, exist_ok=True)
        if "WANDB_MODE" not in os.environ and not _reachable(WANDB_HOST):
            env["WANDB_MODE"] = "offline"
    elif report_to == "mlflow":
        env.update(MLFLOW_TRACKING_URI=(out_dir / "mlruns").absolute().as_uri(),
                   MLFLOW_EXPERIMENT_NAME=sweep, MLFLOW_RUN_NAME=job_id)
    env = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(env)
    return env


def where(report_to: str, out_dirs: list[str]) -> str:
    """For `sweep status`: where the curves of these jobs are and how to look at them."""
    if not out_dirs:
        return ""
    parent = os.path.commonpath(out_dirs) if len(out_dirs) > 1 else out_dirs[0]
    if report_to == "tensorboard":
        return (f"tensorboard --logdir {parent}  (event files in each job's tensorboard/; "
                f"{len(out_dirs)} jobs)")
    if report_to == "wandb":
        return (f"wandb: project and group = the sweep, run = the job id; offline runs in each "
                f"job's wandb/ (wandb sync {parent}/**/wandb/offline-run-*)")
    if report_to == "mlflow":
        return (f"mlflow ui --backend-store-uri {out_dirs[0]}/mlruns  (a store per job, "
                f"{len(out_dirs)} jobs, unless MLFLOW_TRACKING_URI was set)")
    return ""
