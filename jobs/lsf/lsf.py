"""IBM Spectrum LSF as a submitit plugin: `submitit.AutoExecutor(folder, cluster="lsf")`.

Submission: the script goes to `bsub` on stdin (bsub ignores #BSUB lines of a script given as an
argument unless the site sets LSB_BSUB_PARSE_SCRIPT). Arrays are `-J "name[1-N]%P"`; LSF
numbers elements from 1, and so do the submitit jobs of an array here: job "123_4" is LSF's
"123[4]", its log `<folder>/123_4_0_log.out` is LSF's `-o <folder>/%J_%I_0_log.out`.

LSF 10.1 and the OpenLava family alike: the options, the bjobs fields and the job script's
wrapper are jobs.backends.lsf's, the ones `sweep launch --backend lsf` submits (the dialect from
lsid, once per executor, or the `dialect` parameter).

State: one `bjobs -a -o "jobid stat job_name" -json` call for every id of interest, parsed
even when bjobs exits non-zero (it does for unknown ids under LSB_BJOBS_CONSISTENT_EXIT_CODE=Y);
a bjobs that fails, hangs or answers "busy" teaches nothing: the last known state stays.
Suspended jobs are running, not finished. Jobs that have aged out of bjobs (CLEAN_PERIOD) are
resolved from the exit-code file the job script writes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import typing as tp
import uuid
from pathlib import Path

from submitit.core import core, job_environment, logger, utils

from jobs.backends.base import REQUEUE, NotAnswered, run_query
from jobs.backends.lsf import (
    FIELDS,
    STATES,
    begin_option,
    bsub_options,
    lsf_target,
    read_bjobs,
    site,
)
from jobs.resources import MAX_ARRAY, LsfOptions, Resources
from quantlib.preemption import MAX_REQUEUES

EXIT_CODE_FILE = "%j_exit_code"
__all__ = ["LsfExecutor", "LsfInfoWatcher", "LsfJob", "LsfJobEnvironment", "lsf_target"]


class LsfInfoWatcher(core.InfoWatcher):
    def _make_command(self) -> list[str] | None:
        to_check = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not to_check:
            return None
        return ["bjobs", "-a", "-o", FIELDS, "-json", *to_check]

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def update(self) -> None:
        """As submitit's, but bjobs' output is read whatever its exit status, and a bjobs that
        does not answer changes nothing (retried with backoff first: jobs.backends.base)."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            info = run_query(command, accept_rc=(0, 255), parse=self.read_info)
        except NotAnswered as exc:
            logger.get_logger().warning(f"bjobs did not answer ({exc}); job states unchanged")
        else:
            asked = set(command[5:])
            for job_id in self._registered - self._finished:  # bjobs forgot it (CLEAN_PERIOD):
                if job_id.split("_")[0] in asked and job_id not in info:  # not its last state
                    info[job_id] = {"State": "UNKNOWN", "LsfState": ""}
            self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        """bjobs' JSON -> {job id: {"State": ..., "LsfState": STAT}}; raises ValueError when the
        output is not bjobs' JSON (submitit calls it on text of its own too: then {})."""
        if isinstance(string, bytes):
            string = string.decode(errors="replace")
        out: dict[str, dict[str, str]] = {}
        for key, stat in read_bjobs(string).items():
            if stat is not None:
                out[key] = {"State": STATES.get(stat, "UNKNOWN"), "LsfState": stat}
        return out


class LsfJob(core.Job[core.R]):
    """A submitted LSF job. Its state comes from its own files first (they outlive bjobs'
    memory: CLEAN_PERIOD), then from bjobs: the exit-code file (COMPLETED / FAILED), the
    cancel marker cancel() leaves (CANCELLED), the requeue marker a requeue leaves until the
    next run starts (PENDING, never FAILED in between). A job neither bjobs nor its files know
    of for `lost_after_s` is FAILED: result() never waits forever."""

    _cancel_command = "bkill"
    watcher = LsfInfoWatcher(delay_s=60)
    lost_after_s = 120.0

    def __init__(self, folder: str | Path, job_id: str, tasks: tp.Sequence[int] = (0,)):
        super().__init__(folder, job_id, tasks)
        self._unknown_since: float | None = None
        self._lost_said = False

    def _marker(self, what: str) -> Path:
        return self.paths.folder / f"{self.job_id}_{what}"

    @property
    def exit_code_file(self) -> Path:
        return self.paths.folder / EXIT_CODE_FILE.replace("%j", str(self.job_id))

    def _exit_code(self) -> int | None:
        try:
            return int(self.exit_code_file.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def state(self) -> str:
        code = self._exit_code()
        if code is not None:
            if self._marker("cancelled").exists():
                return "CANCELLED"
            return "COMPLETED" if code == 0 else "FAILED"
        state = self.watcher.get_state(self.job_id, mode="standard")
        if self._marker("requeued").exists() and state in ("FAILED", "UNKNOWN", "COMPLETED"):
            return "PENDING"  # brequeue'd: between its runs; the next run removes the marker
        if state == "FAILED" and self._marker("cancelled").exists():
            return "CANCELLED"
        if state != "UNKNOWN":
            self._unknown_since = None
            return state
        if self._unknown_since is None:
            self._unknown_since = time.monotonic()
        if time.monotonic() - self._unknown_since > self.lost_after_s:
            if not self._lost_said:
                self._lost_said = True
                logger.get_logger().warning(
                    f"LSF job {lsf_target(self.job_id)}: bjobs does not know it (any more) and "
                    f"it left no exit code in {self.paths.folder} for "
                    f"{self.lost_after_s:.0f}s: lost (FAILED)")
            return "FAILED"
        return state

    def done(self, force_check: bool = False) -> bool:
        if self._exit_code() is not None:
            return True
        if self.state in ("FAILED", "CANCELLED") and self._exit_code() is None:
            return not self._marker("requeued").exists()
        return super().done(force_check)

    def cancel(self, check: bool = True) -> None:
        try:
            self._marker("cancelled").write_text("bkill\n")
        except OSError:
            pass
        (subprocess.check_call if check else subprocess.call)(
            ["bkill", lsf_target(self.job_id)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)


class LsfJobEnvironment(job_environment.JobEnvironment):
    _env = {"job_id": "LSB_JOBID", "array_task_id": "LSB_JOBINDEX",
            "num_tasks": "QUANTSWEEP_NUM_TASKS", "num_nodes": "QUANTSWEEP_NUM_NODES",
            "node": "QUANTSWEEP_NODE", "global_rank": "QUANTSWEEP_RANK",
            "local_rank": "QUANTSWEEP_LOCAL_RANK"}
    repeat_window_s = 10.0  # a signal again within this is the same request (see make_bsub_script)

    @property
    def job_id(self) -> str:
        index = os.environ.get("LSB_JOBINDEX", "0")
        return self.raw_job_id if index in ("", "0") else f"{self.raw_job_id}_{index}"

    @property
    def array_job_id(self) -> str | None:
        index = os.environ.get("LSB_JOBINDEX", "0")
        return None if index in ("", "0") else self.raw_job_id

    @property
    def array_task_id(self) -> str | None:
        """None for a job that is not an array element (LSF sets LSB_JOBINDEX=0), as SLURM."""
        index = os.environ.get("LSB_JOBINDEX", "0")
        return None if index in ("", "0") else index

    @property
    def hostnames(self) -> list[str]:
        hosts = os.environ.get("LSB_HOSTS", "").split()
        return list(dict.fromkeys(hosts)) or [self.hostname]

    def _requeue(self, countdown: int) -> None:
        """brequeue this running job: LSF kills it and queues it again (PEND). The marker tells
        the job script not to record an exit code, and LsfJob that the job is pending."""
        target = lsf_target(self.job_id)
        folder = os.environ.get("SUBMITIT_FOLDER")
        if folder:
            try:
                (utils.JobPaths(folder, self.job_id).folder / f"{self.job_id}_requeued"
                 ).write_text(f"{countdown}\n")
            except OSError:
                pass
        subprocess.check_call(["brequeue", target], timeout=60, stdout=subprocess.DEVNULL)
        logger.get_logger().info(f"Requeued job {target} ({countdown} remaining requeues)")

    def _handle_signals(self, paths: utils.JobPaths, submission: utils.DelayedSubmission) -> None:
        super()._handle_signals(paths, submission)
        usr = signal.getsignal(self._usr_sig())
        if callable(usr):
            signal.signal(self._usr_sig(), _once_within(usr, self.repeat_window_s))
        # bkill and memory-limit kills start with SIGINT: record why the job stopped
        reason_file = paths.folder / f"{self.job_id}_stop_reason"

        def on_sigint(signum, frame):  # noqa: ARG001
            reason_file.write_text("SIGINT (bkill, or a memory limit)\n")
            logger.get_logger().warning("Caught SIGINT (bkill, or a memory limit)")
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, _once_within(on_sigint, self.repeat_window_s))


def _once_within(handler: tp.Callable, window_s: float) -> tp.Callable:
    """A signal handler that takes the same signal again within `window_s` as the same request
    (LSF may deliver it to every process of the job, and the job script passes it on too)."""
    last: dict[int, float] = {}

    def once(signum, frame):
        now = time.monotonic()
        if now - last.get(signum, -window_s - 1) <= window_s:
            return None
        last[signum] = now
        return handler(signum, frame)

    return once


class LsfExecutor(core.PicklingExecutor):
    """Submits to LSF with bsub.

    Parameters (update_parameters; through AutoExecutor with the `lsf_` prefix): submitit's
    generic ones (name, timeout_min, mem_gb, cpus_per_task, gpus_per_node, nodes,
    tasks_per_node, stderr_to_stdout), and LSF's: jobname, run_limit_min (-W), cpus (-n),
    mem_mb, gpus, queue, project, array_limit (the %P of -J "name[1-N]%P"), gpu_syntax ("gpu" |
    "rusage"), gpu_resource, mem_per ("host" | "core"), warn_minutes (-wa USR2 -wt N), extra
    (raw #BSUB option lines), shell_setup (shell lines), wait_done (a job id, "123_4" for an
    array element: -w "done(123[4])"). No LSF name is one that another executor uses: an
    installed plugin must not change what AutoExecutor does for SLURM or local users (it maps
    an unprefixed name to the last executor that declares it)."""

    job_class = LsfJob

    def __init__(self, folder: str | Path, max_num_timeout: int = MAX_REQUEUES,
                 max_pickle_size_gb: float = 1.0, python: str | None = None) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout,
                         max_pickle_size_gb=max_pickle_size_gb)
        self.python = shlex.quote(sys.executable) if python is None else python
        if not self.affinity() > 0:
            raise RuntimeError('Could not detect "bsub": is this an LSF cluster?')
        self.parameters = dict(_DEFAULTS)

    @classmethod
    def affinity(cls) -> int:
        return -1 if shutil.which("bsub") is None else 2

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {"name": "jobname", "timeout_min": "run_limit_min", "mem_gb": "mem_gb",
                "cpus_per_task": "cpus", "gpus_per_node": "gpus"}

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(_DEFAULTS) - {"map_count"} | {"mem_gb"}

    def _convert_parameters(self, params: dict[str, tp.Any]) -> dict[str, tp.Any]:
        return _mem_in_mb(super()._convert_parameters(params))

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        # submitit's generic names are welcome here too (Hydra's launcher sends them)
        kwargs = self._convert_parameters(kwargs)
        unknown = sorted(set(kwargs) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"Unavailable parameter(s): {unknown}; valid: "
                             f"{sorted(self._valid_parameters() | set(self._equivalence_dict()))}")
        for key in ("nodes", "tasks_per_node"):
            if kwargs.get(key, 1) != 1:
                raise ValueError(f"{key}={kwargs[key]}: this LSF executor runs one task on one "
                                 "host per job (span[hosts=1]); several are not supported")
        super()._internal_update_parameters(**kwargs)
        _resources(self.parameters)  # fails early on bad values

    @property
    def _submitit_command_str(self) -> str:
        return " ".join([self.python, "-u -m submitit.core._submit",
                         shlex.quote(str(self.folder))])

    def _num_tasks(self) -> int:
        return 1

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return make_bsub_script(command, self.folder, self.parameters,
                                self.parameters.get("map_count"))

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["/bin/sh", "-c", 'exec bsub < "$0"', str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        if isinstance(string, bytes):
            string = string.decode(errors="replace")
        m = re.search(r"Job <(\d+)>", string)
        if m is None:
            raise utils.FailedSubmissionError(f'Could not make sense of bsub output "{string}"')
        return m.group(1)

    def _internal_process_submissions(
            self, delayed_submissions: list[utils.DelayedSubmission]) -> list[core.Job[tp.Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        jobs: list[core.Job[tp.Any]] = []
        size = array_size()
        for start in range(0, len(delayed_submissions), size):
            jobs += self._submit_array(delayed_submissions[start:start + size])
        return jobs

    def _submit_array(self, chunk: list[utils.DelayedSubmission]) -> list[core.Job[tp.Any]]:
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickles = []
        for d in chunk:
            path = folder / f"{uuid.uuid4().hex}.pkl"
            d.set_timeout(self.parameters["run_limit_min"], self.max_num_timeout)
            d.dump(path)
            pickles.append(path)
        array = LsfExecutor(self.folder, self.max_num_timeout, python=self.python)
        array.parameters = {**self.parameters, "map_count": len(chunk)}
        first = array._submit_command(self._submitit_command_str)
        jobs: list[core.Job[tp.Any]] = [
            LsfJob(folder=self.folder, job_id=f"{first.job_id}_{i}", tasks=[0])
            for i in range(1, len(chunk) + 1)]
        for job, path in zip(jobs, pickles):
            job.paths.move_temporary_file(path, "submitted_pickle")
        return jobs


def array_size() -> int:
    """Elements per array: the site's MAX_JOB_ARRAY_SIZE (bparams -l), else MAX_ARRAY."""
    from jobs.backends import get

    return get("lsf").site_limits()[0] or MAX_ARRAY


# the spec's resources.lsf options, with their defaults (one definition: jobs.resources)
LSF_OPTIONS: dict[str, tp.Any] = {
    f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for f in dataclasses.fields(LsfOptions)}
_DEFAULTS: dict[str, tp.Any] = {
    "jobname": "submitit", "run_limit_min": 60, "cpus": 1, "mem_mb": 4096, "gpus": 0,
    "queue": None, "project": None, "array_limit": None, **LSF_OPTIONS,
    "shell_setup": [], "map_count": None, "wait_done": None, "nodes": 1, "tasks_per_node": 1,
    "stderr_to_stdout": False,
}


def _mem_in_mb(params: dict[str, tp.Any]) -> dict[str, tp.Any]:
    if "mem_gb" in params:
        params = dict(params)
        params["mem_mb"] = int(params.pop("mem_gb") * 1024)
    return params


def _resources(params: dict[str, tp.Any]) -> Resources:
    lsf = LsfOptions(**{k: list(params[k]) if isinstance(params[k], (list, tuple))
                        else params[k] for k in LSF_OPTIONS})
    if lsf.gpu_syntax not in ("gpu", "rusage") or lsf.mem_per not in ("host", "core") \
            or lsf.dialect not in ("auto", "lsf10", "openlava") \
            or lsf.mem_unit not in (None, "KB", "MB", "GB", "TB"):
        raise ValueError("gpu_syntax must be gpu or rusage, mem_per host or core, dialect auto, "
                         f"lsf10 or openlava, mem_unit KB, MB, GB or TB: {params}")
    return Resources(gpus=params["gpus"], cpus=params["cpus"], mem_mb=params["mem_mb"],
                     time_minutes=params["run_limit_min"], queue=params["queue"],
                     project=params["project"], array_parallelism=params["array_limit"],
                     lsf=lsf)


def lsf_folder(folder: str | Path, array: bool) -> str:
    """submitit's id tags in a folder as LSF's -o / -outdir patterns: %j is the job ("123",
    or "123_4" for an array element: LSF's %J_%I), %A the array's id, %a the element's index."""
    text = str(Path(folder).absolute())
    return (text.replace("%j", "%J_%I" if array else "%J").replace("%A", "%J")
            .replace("%a", "%I").replace("%t", "0"))


def shell_folder(folder: str | Path, array: bool) -> str:
    """The same folder as a shell word for the job script (LSF's variables in place of the
    tags), quoted but for the variables."""
    text = str(Path(folder).absolute())
    job = "${LSB_JOBID}_${LSB_JOBINDEX}" if array else "${LSB_JOBID}"
    out = []
    for part in re.split(r"(%[jAat])", text):
        out.append({"%j": f'"{job}"', "%A": '"${LSB_JOBID}"', "%a": '"${LSB_JOBINDEX}"',
                    "%t": "0"}.get(part) or (shlex.quote(part) if part else ""))
    return "".join(out)


def make_bsub_script(command: str, folder: str | Path, params: dict[str, tp.Any],
                     count: int | None = None) -> str:
    """The script bsub reads on stdin: the #BSUB options of the scheduler's dialect and the job
    wrapper of every LSF job script (templates/_lsf_child.sh.j2: the command as the shell's
    child, signals passed on, the exit-code file that outlives bjobs' memory). It sets the
    SUBMITIT_* variables explicitly (LSF copies the submitter's environment).

    A folder with a job id in it (submitit's %j) is made by LSF at the job's start where the
    dialect has -outdir (10.1); on OpenLava the script makes it and sends its own output there,
    LSF's job report going to the id-independent folder above it."""
    from templates import render  # jinja2, loaded only when submitting

    array = bool(count)
    res = _resources(params)
    st = site(res)
    pattern = lsf_folder(folder, array)
    stem = "%J_%I" if array else "%J"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", params["jobname"])[:200] or "submitit"
    has_id = pattern != str(Path(folder).absolute())
    job_ref = '${LSB_JOBID}' + ('_${LSB_JOBINDEX}' if array else "")
    own_output: list[str] = []
    if has_id and st.openlava:
        base = utils.JobPaths.get_first_id_independent_folder(folder).absolute()
        out_path, err_path, outdir = f"{base}/{stem}_lsf.out", None, None
        target = shell_folder(folder, array)
        own_output = [f"mkdir -p {target}",
                      f'exec >>{target}/"{job_ref}_0_log.out" '
                      + ("2>&1" if params["stderr_to_stdout"]
                         else f'2>>{target}/"{job_ref}_0_log.err"')]
    else:
        out_path = f"{pattern}/{stem}_0_log.out"
        err_path = None if params["stderr_to_stdout"] else f"{pattern}/{stem}_0_log.err"
        outdir = pattern if has_id else None
    options = bsub_options(res, st, name, count, out_path, err_path, params["array_limit"],
                           outdir=outdir)
    if params.get("wait_done"):
        options.append(f'-w "done({lsf_target(params["wait_done"])})"')
        begin = begin_option(st)  # OpenLava family: see jobs.backends.lsf.dependent_begin
        if begin:
            options.append(begin)
    return render(
        "submitit_lsf.sh.j2", bsub=options, own_output=own_output,
        setup=list(params["shell_setup"]), command=command, requeue_exit=REQUEUE,
        exit_file=f'{shell_folder(folder, array)}/"{EXIT_CODE_FILE.replace("%j", job_ref)}"',
        requeued=f'{shell_folder(folder, array)}/"{job_ref}_requeued"')
