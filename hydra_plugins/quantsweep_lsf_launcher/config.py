"""The launcher's configuration, registered as `hydra/launcher=submitit_lsf`.

submitit's generic parameters (what hydra-submitit-launcher's BaseQueueConf holds) and the LSF
plugin's own (jobs.lsf.LsfExecutor), passed to `submitit.AutoExecutor(cluster="lsf")` with the
`lsf_` prefix.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules without registering them in
# sys.modules first, and OmegaConf reads the annotations themselves (typing.Optional / List, which
# it understands, not `Optional[int]`).
from dataclasses import dataclass, field
from typing import Any, List, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore

from jobs.resources import LsfOptions

_LSF = LsfOptions()  # the spec's resources.lsf defaults: one definition

GENERIC = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes",
           "name", "stderr_to_stdout")


@dataclass
class LsfQueueConf:
    _target_: str = "hydra_plugins.quantsweep_lsf_launcher.lsf_launcher.LsfLauncher"
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"
    # generic (submitit's names)
    timeout_min: int = 60
    cpus_per_task: Optional[int] = None  # noqa: UP045
    gpus_per_node: Optional[int] = None  # noqa: UP045
    tasks_per_node: int = 1
    mem_gb: Optional[int] = None  # noqa: UP045
    nodes: int = 1
    name: str = "${hydra.job.name}"
    stderr_to_stdout: bool = False
    # LSF's (bsub options; see jobs.lsf.LsfExecutor)
    queue: Optional[str] = None  # noqa: UP045  # -q
    project: Optional[str] = None  # noqa: UP045  # -P
    array_limit: Optional[int] = None  # noqa: UP045  # -J "name[1-N]%array_limit"
    warn_minutes: int = _LSF.warn_minutes  # -wa USR2 -wt N: the warning before the run limit
    gpu_syntax: str = _LSF.gpu_syntax  # -gpu "num=N" | rusage[<gpu_resource>=N]
    gpu_resource: str = _LSF.gpu_resource  # the site's GPU resource for gpu_syntax rusage
    mem_per: str = _LSF.mem_per  # rusage[mem=] per host or per core
    dialect: str = _LSF.dialect  # lsf10 | openlava | auto (lsid's first line)
    mem_unit: Optional[str] = _LSF.mem_unit  # noqa: UP045  # KB|MB|GB|TB; default: lsf.conf's, else MB
    extra: List[str] = field(default_factory=list)  # noqa: UP006  # raw #BSUB option lines
    shell_setup: List[str] = field(default_factory=list)  # noqa: UP006  # shell lines before the job
    # submitit's: how many times a checkpointable job may requeue itself
    max_num_timeout: int = 0

    def executor_parameters(self) -> dict[str, Any]:
        """What AutoExecutor.update_parameters takes: generic names as they are, the rest with
        the `lsf_` prefix; unset values left out."""
        skip = {"_target_", "submitit_folder", "max_num_timeout"}
        out = {}
        for key, value in vars(self).items():
            if key in skip or value is None:
                continue
            out[key if key in GENERIC else f"lsf_{key}"] = value
        return out


ConfigStore.instance().store(group="hydra/launcher", name="submitit_lsf", node=LsfQueueConf,
                             provider="quantsweep")
