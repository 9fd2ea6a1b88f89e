"""The launcher: a Hydra sweep as one LSF job array, each element one Hydra job.

Follows Hydra's Launcher contract (setup, launch) as hydra-submitit-launcher's launchers do: the
launcher object itself is what submitit pickles and each array element calls, with that job's
overrides; it rebuilds the job's configuration there and runs the task function with Hydra's
run_job, so each job has its own output directory, logging and return value.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class LsfLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int,
                 singleton_state: dict[type, Singleton]) -> JobReturn:
        """One array element: this job's configuration, then the task."""
        import submitit

        assert self.hydra_context is not None and self.config is not None
        assert self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(
            self.config, sweep_overrides)
        with open_dict(sweep_config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id
            job.num = job_num
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                       config=sweep_config, job_dir_key=job_dir_key,
                       job_subdir_key="hydra.sweep.subdir")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On LSF's warning: requeue the same call (a task that resumes from its own
        checkpoints continues; submitit counts the requeues against max_num_timeout)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from hydra_plugins.quantsweep_lsf_launcher.config import LsfQueueConf

        assert self.config is not None and len(job_overrides) > 0
        conf = LsfQueueConf(**{k: (OmegaConf.to_container(v, resolve=True)
                                   if OmegaConf.is_config(v) else v)
                               for k, v in self.params.items() if k != "_target_"})
        executor = submitit.AutoExecutor(folder=conf.submitit_folder, cluster="lsf",
                                         lsf_max_num_timeout=conf.max_num_timeout)
        executor.update_parameters(**conf.executor_parameters())
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"LSF sweep output dir: {sweep_dir}")
        calls = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            calls.append((list(overrides), "hydra.sweep.dir", idx, Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*calls))  # one bsub: an array of len(calls)
        return [job.results()[0] for job in jobs]
