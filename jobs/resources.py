"""The `resources` section of a spec: what each job asks of the cluster, in explicit units."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from typing import Any

from quantlib.configs import suggest
from quantlib.errors import SpecError, quote, shorten
from quantlib.preemption import MAX_REQUEUES

MAX_ARRAY = 1000  # elements per job array: LSF's MAX_JOB_ARRAY_SIZE default (SLURM's
# MaxArraySize default is 1001); dry runs render and launches submit chunks of this size
MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
TIME_RE = re.compile(r"^\s*(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?\s*$")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}\Z")
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.:@+&|,\[\]*()-]{1,512}\Z")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
MEM_FACTOR = {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024 * 1024}
# Variables resources.env may not set: the job scripts set them (PYTHONPATH to the code
# snapshot, PYTHONSAFEPATH, PYTHONUNBUFFERED, QUANTSWEEP_*, JOB_ID and CONFIG: _run.sh.j2 and the
# array templates), the local launcher or the scheduler does (CUDA_VISIBLE_DEVICES: each local
# job's GPUs; LSB_JOBINDEX / SLURM_ARRAY_TASK_ID pick the array element's job, so one of them
# set would run the same job in every element), torchrun and jobs.runtime do (RANK: a job
# that has it thinks it is a rank and starts no torchrun), or the shell reads them for the
# rest of the script itself (IFS, SHELLOPTS, BASHOPTS). PATH too: the value is exported as
# written (quoted: "$PATH" is not expanded), so it would replace the search path every script
# needs; prepend in resources.setup instead. The spec's exports run first, so each of these
# would be overridden silently or break every job. OMP_NUM_THREADS is the user's to set (the
# local launcher only fills it in where it is unset); HF_* too (HF_HOME is what env is for).
RESERVED_ENV_PREFIXES = ("LSB_", "LSF_", "SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SUBMITIT_",
                         "QUANTSWEEP_", "TORCHELASTIC_")
RESERVED_ENV = ("PATH", "PYTHONPATH", "PYTHONSAFEPATH", "PYTHONUNBUFFERED",
                "CUDA_VISIBLE_DEVICES", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "JOB_ID", "CONFIG", "IFS",
                "SHELLOPTS", "BASHOPTS")
# one NAME=value string of a process's environment: Linux's MAX_ARG_STRLEN (32 pages); a longer
# one makes every exec of the job fail (E2BIG), the shell's and python's alike
MAX_ENV_STRING = 128 * 1024
# comment lines that a scheduler reads as its options: LSF, SLURM, PBS/Torque, SGE, Moab,
# LoadLeveler, Flux (compared case-insensitively, after leading whitespace)
DIRECTIVE_PREFIXES = ("#bsub", "#sbatch", "#pbs", "#$", "#msub", "#@", "#flux:")
MAX_PACK = 64  # jobs per allocation at most (resources.pack)
SLURM_MAX_SIGNAL_S = 65535  # sbatch --signal=[B:]SIG@N takes N in 0..65535
BASH_CHECK_TIMEOUT_S = 10


@dataclass
class LsfOptions:
    gpu_syntax: str = "gpu"  # "gpu": -gpu "num=N:mode=exclusive_process"; "rusage": site resource
    gpu_resource: str = "ngpus_excl_p"  # the site resource name for gpu_syntax: rusage
    mem_per: str = "host"  # rusage[mem] is per host or per core at this site
    warn_minutes: int = 0  # -wa USR2 -wt N before the run limit (0 = off)
    extra: list[str] = field(default_factory=list)  # raw option lines, as '#BSUB <line>'
    dialect: str = "auto"  # "lsf10" | "openlava" | "auto": lsid's first line (jobs.backends.lsf)
    mem_unit: str | None = None  # KB | MB | GB ...: LSF_UNIT_FOR_LIMITS, else read from lsf.conf


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
    max_array_size: int | None = None  # elements per array; default: what the scheduler says
    max_requeues: int = MAX_REQUEUES  # time-limit requeues of one job
    pack: int = 1  # jobs run together in one allocation (N x gpus, cpus, mem): jobs.pack
    lsf: LsfOptions = field(default_factory=LsfOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    setup: list[str] = field(default_factory=list)  # the user's shell lines, run before the job
    env: dict[str, str] = field(default_factory=dict)  # exported, each value quoted
    python: str | None = None  # the jobs' interpreter; default: the one that launches

    def shell_lines(self) -> list[str]:
        """What every backend's job script runs before the job: the exports (quoted), then the
        setup lines as the user wrote them."""
        return [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()] + list(self.setup)

    def packed(self) -> Resources:
        """What one allocation of `pack` jobs asks for: pack x the GPUs, cores and memory of a
        job (the time limit is a job's: they run side by side)."""
        return replace(self, gpus=self.gpus * self.pack, cpus=self.cpus * self.pack,
                       mem_mb=self.mem_mb * self.pack)

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
                raise SpecError(path, f"{where}.{key}", f"{quote(value)} is not a whole number "
                                                        ">= 0")
            if key == "signal_seconds" and not 1 <= value <= SLURM_MAX_SIGNAL_S:
                # 0 would be no warning at all (the template used to put 90 in its place)
                raise SpecError(path, f"{where}.{key}", f"{value} is not allowed: SLURM warns "
                                f"1 to {SLURM_MAX_SIGNAL_S} seconds before the time limit "
                                "(default 90)")
        elif value is not None and not isinstance(value, str):
            raise SpecError(path, f"{where}.{key}", f"{quote(value)} is not a string")
        elif key in ("partition", "account") and value is not None:
            value = _name(value, path, f"{where}.{key}")
        elif key == "constraint" and value is not None and not CONSTRAINT_RE.match(value):
            raise SpecError(path, f"{where}.{key}", f"{quote(value)} is not a SLURM constraint "
                                                    "(features joined by & | , [ ] * ( ))")
        kwargs[key] = value
    opts = cls(**kwargs)
    for line in getattr(opts, "extra", []):
        if "\n" in line or "\r" in line or not line.strip():
            raise SpecError(path, f"{where}.extra", f"{quote(line)}: each option must be one "
                                                    "non-empty line")
    gpu_resource = getattr(opts, "gpu_resource", "x")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(gpu_resource)):
        raise SpecError(path, f"{where}.gpu_resource", f"{quote(gpu_resource)} is not an LSF "
                                                        "resource name")
    choices = {"gpu_syntax": ("gpu", "rusage") if cls is LsfOptions else ("gres", "gpus"),
               "mem_per": ("host", "core"), "dialect": ("auto", "lsf10", "openlava"),
               "mem_unit": (None, "KB", "MB", "GB", "TB")}
    for key, allowed_values in choices.items():
        if hasattr(opts, key) and getattr(opts, key) not in allowed_values:
            # None (mem_unit: unset) is no word to list: join only the strings
            words = ", ".join(v for v in allowed_values if v is not None)
            unset = " (or leave it unset)" if None in allowed_values else ""
            raise SpecError(path, f"{where}.{key}", f"{quote(getattr(opts, key))} is not "
                                                    f"allowed; allowed: {words}{unset}")
    return opts


def _name(value: Any, path: str, where: str) -> str:
    """A queue, partition, project or account name: one word of the scheduler's name set."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise SpecError(path, where, f"{quote(value)} is not a scheduler name (letters, digits and "
                                     "_ . - : @ +)")
    return value


def parse_resources(raw: Any, path: str) -> Resources:
    if raw is None:
        return Resources()
    allowed = ["gpus", "cpus", "mem", "time", "queue", "partition", "project", "account",
               "array_parallelism", "max_array_size", "max_requeues", "pack", "lsf", "slurm",
               "setup", "env", "python"]
    if not isinstance(raw, dict):
        raise SpecError(path, "resources", f"must be a mapping with keys {', '.join(allowed)}")
    res = Resources()
    for key, value in raw.items():
        where = f"resources.{key}"
        if key not in allowed:
            raise SpecError(path, where, f"unknown key{suggest(key, allowed)}; "
                                         f"allowed: {', '.join(allowed)}")
        if key in ("gpus", "cpus", "array_parallelism", "max_array_size", "max_requeues"):
            lo = 0 if key in ("gpus", "max_requeues") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise SpecError(path, where, f"{quote(value)} is not a whole number >= {lo}")
            setattr(res, key, value)
        elif key == "pack":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PACK:
                raise SpecError(path, where, f"{quote(value)} is not a whole number from 1 to "
                                f"{MAX_PACK} (jobs run together in one allocation)")
            res.pack = value
        elif key == "mem":
            try:
                res.mem_mb = parse_mem(value)
            except ValueError:
                raise SpecError(path, where, f"{quote(value)} is not a memory size above 0: "
                                             "write MB as a number (8164) or with a unit "
                                             "(8164MB, 16GB)") from None
        elif key == "time":
            try:
                res.time_minutes = parse_time(value)
            except ValueError:
                raise SpecError(path, where, f"{quote(value)} is not a wall time: write minutes "
                                             "(240), H:MM (4:00), H:MM:SS or D-H:MM") from None
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
            res.setup = _setup_lines(value, path, where)
        elif key == "env":
            if not isinstance(value, dict):
                raise SpecError(path, where, "must map variable names to values, e.g. "
                                             "{HF_HOME: /scratch/hf}")
            for name, v in value.items():
                if not ENV_NAME_RE.match(str(name)):
                    shown = name if str(name).isprintable() else repr(str(name))  # one line
                    raise SpecError(path, f"{where}.{shown}", "not a variable name (letters, "
                                                              "digits and _, not first a digit)")
                _env_name(str(name), path, f"{where}.{name}")
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    raise SpecError(path, f"{where}.{name}", f"{quote(v)} is not a string or "
                                                             "number")
                size = len(f"{name}={v}".encode()) + 1
                if size > MAX_ENV_STRING:
                    raise SpecError(path, f"{where}.{name}", f"a value of {size:,} bytes: the "
                                    f"kernel refuses an environment string over "
                                    f"{MAX_ENV_STRING // 1024} KiB (E2BIG), so no job could "
                                    "start; put large data in a file and give its path")
                res.env[str(name)] = str(v)
        elif key == "python":
            res.python = _interpreter(value, path, where)
        elif key == "lsf":
            res.lsf = _options(value, LsfOptions, path, where)
        else:
            res.slurm = _options(value, SlurmOptions, path, where)
    # LSF sends the warning warn_minutes before the run limit: at or above the limit it would
    # come at the start (or never), and the job would checkpoint and requeue at once
    if res.lsf.warn_minutes and res.lsf.warn_minutes >= res.time_minutes:
        raise SpecError(path, "resources.lsf.warn_minutes",
                        f"{res.lsf.warn_minutes} is not below the time limit (resources.time: "
                        f"{res.time_minutes} minutes): give fewer minutes, or 0 for no warning")
    return res


def _env_name(name: str, path: str, where: str) -> None:
    """Refuse a variable the job scripts, the launcher or the scheduler set (RESERVED_ENV)."""
    if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
        hint = (" (to prepend to the search path, write it in resources.setup: export "
                "PATH=/opt/x/bin:$PATH)" if name == "PATH" else "")
        raise SpecError(path, where, f"{name} is set by the job scripts, the launcher or the "
                        f"scheduler, which own it{hint}; resources.env may not set "
                        + ", ".join(f"{p}*" for p in RESERVED_ENV_PREFIXES) + ", "
                        + ", ".join(RESERVED_ENV))


def _interpreter(value: Any, path: str, where: str) -> str:
    """resources.python: one path or command name. It is the first word of the job's command
    (quoted): a leading '-' would read as an option of whatever runs it, and whitespace means
    options were written into it ("python -X dev" is no file)."""
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, where, f"{quote(value)} is not an interpreter (a path, or a "
                                     "command such as python3)")
    if value.startswith("-"):
        raise SpecError(path, where, f"{quote(value)} starts with '-': give the interpreter's "
                                     "path or command name (e.g. python3, /opt/venv/bin/python)")
    if value.startswith("~"):
        raise SpecError(path, where, f"{quote(value)}: the scripts quote the interpreter, so '~' "
                                     "is not expanded; give the full path")
    if re.search(r"\s", value):
        raise SpecError(path, where, f"{quote(value)} holds whitespace: give one path or "
                                     "command name without options (a path with spaces: "
                                     "link it from one without)")
    return value


def _setup_lines(lines: list[str], path: str, where: str) -> list[str]:
    """resources.setup, checked: no line a scheduler would read as its option, none that
    continues into the script's own next line, and together valid bash (`bash -n`): every
    backend's script runs them as written, so a syntax error there fails every job."""
    for i, line in enumerate(lines):
        if line.lstrip().lower().startswith(DIRECTIVE_PREFIXES):
            raise SpecError(path, f"{where}[{i}]", f"{quote(line, 80)} reads as a scheduler "
                            "directive (#BSUB, #SBATCH, #PBS, #$, #MSUB, #@, #flux:); scheduler "
                            "options go in resources.lsf.extra or resources.slurm.extra")
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            raise SpecError(path, f"{where}[{i}]", f"{quote(line, 80)} ends with '\\', which "
                            "would join the script's next line to it; end the line without it")
    problem = _bash_syntax("\n".join(lines) + "\n")
    if problem:
        line_no, message = problem
        at = f"{where}[{line_no - 1}]" if line_no and 0 < line_no <= len(lines) else where
        shown = f"{quote(lines[line_no - 1], 80)}: " if at != where else ""
        raise SpecError(path, at, f"{shown}not valid bash ({message}); every job script "
                                  "would fail on it")
    return list(lines)


def _bash_syntax(text: str) -> tuple[int | None, str] | None:
    """bash -n's complaint about `text` as (line number or None, message), or None when bash
    parses it (or there is no bash here to ask: the jobs' machines have one, this may not)."""
    bash = "/bin/bash" if os.path.exists("/bin/bash") else shutil.which("bash")
    if not bash:
        return None
    try:
        # extglob on: a setup that turns it on (shopt -s extglob) uses its patterns on the next
        # lines, which bash -n would otherwise call a syntax error (it runs no shopt)
        proc = subprocess.run([bash, "--norc", "--noprofile", "-O", "extglob", "-n"],
                              input=text.encode("utf-8"),
                              capture_output=True, timeout=BASH_CHECK_TIMEOUT_S,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        return None, f"bash -n took over {BASH_CHECK_TIMEOUT_S} s to read it"
    except OSError:
        return None
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode == 0 and not err:
        return None
    # "bash: line 3: syntax error near unexpected token `fi'"; a here-document never closed is
    # only a warning (exit 0), but it would swallow the rest of the script: refused as well
    first = err.splitlines()[0] if err else f"exit status {proc.returncode}"
    m = re.search(r"line (\d+)", first)
    message = re.sub(r"^(?:/bin/)?bash: (?:line \d+: )?", "", first)
    return (int(m.group(1)) if m else None), shorten(message, 160)
