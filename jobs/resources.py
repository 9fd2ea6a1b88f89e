"""The `resources` section of a spec: what each job asks of the cluster, in explicit units."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from jobs.errors import SpecError
from quantlib.configs import suggest

MAX_ARRAY = 1000  # elements per job array: LSF's MAX_JOB_ARRAY_SIZE default (SLURM's
# MaxArraySize default is 1001); dry runs render and launches submit chunks of this size
MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
TIME_RE = re.compile(r"^\s*(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?\s*$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}$")
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.:@+&|,\[\]*()-]{1,512}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MEM_FACTOR = {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024 * 1024}


@dataclass
class LsfOptions:
    gpu_syntax: str = "gpu"  # "gpu": -gpu "num=N:mode=exclusive_process"; "rusage": site resource
    gpu_resource: str = "ngpus_excl_p"  # the site resource name for gpu_syntax: rusage
    mem_per: str = "host"  # rusage[mem] is per host or per core at this site
    warn_minutes: int = 0  # -wa USR2 -wt N before the run limit (0 = off)
    extra: list[str] = field(default_factory=list)  # raw option lines, as '#BSUB <line>'


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    gpu_syntax: str = "gres"  # "gres": --gres=gpu:N; "gpus": --gpus-per-node=N
    signal_seconds: int = 90  # --signal=USR2@N
    extra: list[str] = field(default_factory=list)  # raw option lines, as '#SBATCH <line>'


@dataclass
class Resources:
    gpus: int = 0
    cpus: int = 1
    mem_mb: int = 4096
    time_minutes: int = 240
    queue: str | None = None  # LSF queue, SLURM partition unless slurm.partition is set
    project: str | None = None  # LSF -P, SLURM --account unless slurm.account is set
    array_parallelism: int | None = None
    max_requeues: int = 3  # time-limit requeues of one job (submitit's max_num_timeout)
    lsf: LsfOptions = field(default_factory=LsfOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    setup: list[str] = field(default_factory=list)  # the user's shell lines, run before the job
    env: dict[str, str] = field(default_factory=dict)  # exported, each value quoted
    python: str | None = None  # the jobs' interpreter; default: the one that launches

    def shell_lines(self) -> list[str]:
        """What every backend's job script runs before the job: the exports (quoted), then the
        setup lines as the user wrote them."""
        return [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()] + list(self.setup)

    @property
    def lsf_rusage_mem(self) -> str:
        """rusage[mem=...] with its unit: per job, or per core where the site counts so."""
        mem = -(-self.mem_mb // self.cpus) if self.lsf.mem_per == "core" else self.mem_mb
        return f"{mem}MB"

    @property
    def time_hhmm(self) -> str:
        return f"{self.time_minutes // 60}:{self.time_minutes % 60:02d}"

    @property
    def time_slurm(self) -> str:
        days, minutes = divmod(self.time_minutes, 24 * 60)
        clock = f"{minutes // 60:02d}:{minutes % 60:02d}:00"
        return f"{days}-{clock}" if days else clock


def parse_mem(value: Any) -> int:
    """Megabytes from 8164, '8164MB', '16G', '16GiB'."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        if value < 1:
            raise ValueError
        return value
    m = MEM_RE.match(str(value))
    if not m:
        raise ValueError
    mb = float(m.group(1)) * MEM_FACTOR[m.group(2).upper()]
    if mb <= 0:
        raise ValueError
    return max(1, round(mb))


def parse_time(value: Any) -> int:
    """Minutes from 240, '4:00' (H:MM), '4:00:00' (H:MM:SS) or '1-00:00' (D-H:MM)."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    m = TIME_RE.match(str(value))
    if not m:
        raise ValueError
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if minutes >= 60 or seconds >= 60:
        raise ValueError
    return days * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)


def _options(raw: Any, cls: type, path: str, where: str) -> Any:
    if raw is None:
        return cls()
    defaults = cls()
    allowed = list(vars(defaults))
    if not isinstance(raw, dict):
        raise SpecError(path, where, f"must be a mapping with keys {', '.join(allowed)}")
    kwargs = {}
    for key, value in raw.items():
        if key not in allowed:
            raise SpecError(path, f"{where}.{key}", f"unknown key{suggest(key, allowed)}; "
                                                    f"allowed: {', '.join(allowed)}")
        default = getattr(defaults, key)
        if isinstance(default, list):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError(path, f"{where}.{key}", "must be a list of option strings")
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SpecError(path, f"{where}.{key}", f"{value!r} is not a whole number >= 0")
        elif value is not None and not isinstance(value, str):
            raise SpecError(path, f"{where}.{key}", f"{value!r} is not a string")
        elif key in ("partition", "account") and value is not None:
            value = _name(value, path, f"{where}.{key}")
        elif key == "constraint" and value is not None and not CONSTRAINT_RE.match(value):
            raise SpecError(path, f"{where}.{key}", f"{value!r} is not a SLURM constraint "
                                                    "(features joined by & | , [ ] * ( ))")
        kwargs[key] = value
    opts = cls(**kwargs)
    for line in getattr(opts, "extra", []):
        if "\n" in line or "\r" in line or not line.strip():
            raise SpecError(path, f"{where}.extra", f"{line!r}: each option must be one "
                                                    "non-empty line")
    gpu_resource = getattr(opts, "gpu_resource", "x")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(gpu_resource)):
        raise SpecError(path, f"{where}.gpu_resource", f"{gpu_resource!r} is not an LSF "
                                                        "resource name")
    choices = {"gpu_syntax": ("gpu", "rusage") if cls is LsfOptions else ("gres", "gpus"),
               "mem_per": ("host", "core")}
    for key, allowed_values in choices.items():
        if hasattr(opts, key) and getattr(opts, key) not in allowed_values:
            raise SpecError(path, f"{where}.{key}", f"{getattr(opts, key)!r} is not allowed; "
                                                    f"allowed: {', '.join(allowed_values)}")
    return opts


def _name(value: Any, path: str, where: str) -> str:
    """A queue, partition, project or account name: one word of the scheduler's name set."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise SpecError(path, where, f"{value!r} is not a scheduler name (letters, digits and "
                                     "_ . - : @ +)")
    return value


def parse_resources(raw: Any, path: str) -> Resources:
    if raw is None:
        return Resources()
    allowed = ["gpus", "cpus", "mem", "time", "queue", "partition", "project", "account",
               "array_parallelism", "max_requeues", "lsf", "slurm", "setup", "env", "python"]
    if not isinstance(raw, dict):
        raise SpecError(path, "resources", f"must be a mapping with keys {', '.join(allowed)}")
    res = Resources()
    for key, value in raw.items():
        where = f"resources.{key}"
        if key not in allowed:
            raise SpecError(path, where, f"unknown key{suggest(key, allowed)}; "
                                         f"allowed: {', '.join(allowed)}")
        if key in ("gpus", "cpus", "array_parallelism", "max_requeues"):
            lo = 0 if key in ("gpus", "max_requeues") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise SpecError(path, where, f"{value!r} is not a whole number >= {lo}")
            setattr(res, key, value)
        elif key == "mem":
            try:
                res.mem_mb = parse_mem(value)
            except ValueError:
                raise SpecError(path, where, f"{value!r} is not a memory size above 0: write MB "
                                             "as a number (8164) or with a unit (8164MB, 16GB)"
                                ) from None
        elif key == "time":
            try:
                res.time_minutes = parse_time(value)
            except ValueError:
                raise SpecError(path, where, f"{value!r} is not a wall time: write minutes (240),"
                                             " H:MM (4:00), H:MM:SS or D-H:MM") from None
            if res.time_minutes < 1:
                raise SpecError(path, where, "must be at least one minute")
        elif key in ("queue", "partition", "project", "account"):
            setattr(res, {"partition": "queue", "account": "project"}.get(key, key),
                    _name(value, path, where))
        elif key == "setup":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip()
                                                      for v in value):
                raise SpecError(path, where, "must be a list of shell lines, e.g. "
                                             "['module load cuda/12.1']")
            res.setup = list(value)
        elif key == "env":
            if not isinstance(value, dict):
                raise SpecError(path, where, "must map variable names to values, e.g. "
                                             "{HF_HOME: /scratch/hf}")
            for name, v in value.items():
                if not ENV_NAME_RE.match(str(name)):
                    raise SpecError(path, f"{where}.{name}", "not a variable name (letters, "
                                                             "digits and _, not first a digit)")
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    raise SpecError(path, f"{where}.{name}", f"{v!r} is not a string or number")
                res.env[str(name)] = str(v)
        elif key == "python":
            if not isinstance(value, str) or not value.strip():
                raise SpecError(path, where, f"{value!r} is not an interpreter (a path, or a "
                                             "command such as python3)")
            res.python = value
        elif key == "lsf":
            res.lsf = _options(value, LsfOptions, path, where)
        else:
            res.slurm = _options(value, SlurmOptions, path, where)
    return res
