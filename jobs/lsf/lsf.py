"""IBM Spectrum LSF as a submitit plugin: `submitit.AutoExecutor(folder, cluster="lsf")`.

Submission: the script goes to `bsub` on stdin (bsub ignores #BSUB lines of a script given as an
argument unless the site sets LSB_BSUB_PARSE_SCRIPT). Arrays are `-J "name[1-N]%P"`; LSF
numbers elements from 1, and so do the submitit jobs of an array here: job "123_4" is LSF's
"123[4]", its log `<folder>/123_4_0_log.out` is LSF's `-o <folder>/%J_%I_0_log.out`.

State: one `bjobs -a -o "jobid jobindex stat exit_code" -json` call for every id of interest,
parsed even when bjobs exits non-zero (it does for unknown ids under
LSB_BJOBS_CONSISTENT_EXIT_CODE=Y). Suspended jobs are running, not finished. Jobs that have aged
out of bjobs (CLEAN_PERIOD) are resolved from the exit-code file the job script writes.
"""

from __future__ import annotations

import json
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

from jobs.resources import MAX_ARRAY, LsfOptions, Resources
from quantlib.preemption import REQUEUE

# LSF STAT -> the state names submitit understands (unfinished: PENDING, RUNNING, UNKNOWN, ...)
STATES = {"PEND": "PENDING", "PROV": "PENDING", "WAIT": "PENDING", "PSUSP": "PENDING",
          "RUN": "RUNNING", "USUSP": "RUNNING", "SSUSP": "RUNNING",
          "DONE": "COMPLETED", "EXIT": "FAILED", "ZOMBI": "FAILED", "UNKWN": "UNKNOWN"}
EXIT_CODE_FILE = "%j_exit_code"


def lsf_target(job_id: str) -> str:
    """submitit's "123_4" -> LSF's "123[4]"; "123" stays."""
    main, _, index = job_id.partition("_")
    return f"{main}[{index}]" if index else main


class LsfInfoWatcher(core.InfoWatcher):
    def _make_command(self) -> list[str] | None:
        to_check = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not to_check:
            return None
        return ["bjobs", "-a", "-o", "jobid jobindex stat exit_code", "-json", *to_check]

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def update(self) -> None:
        """As submitit's, but bjobs' output is read whatever its exit status."""
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            proc = subprocess.run(command, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.get_logger().warning(f"bjobs failed ({exc}); job states may be stale")
        else:
            self._info_dict.update(self.read_info(proc.stdout))
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if isinstance(string, bytes):
            string = string.decode(errors="replace")
        try:
            records = json.loads(string).get("RECORDS", [])
        except (ValueError, AttributeError):
            return {}
        out: dict[str, dict[str, str]] = {}
        for r in records:
            if "ERROR" in r or "JOBID" not in r:
                continue
            index = str(r.get("JOBINDEX") or "0")
            key = r["JOBID"] if index == "0" else f"{r['JOBID']}_{index}"
            stat = str(r.get("STAT", "UNKWN"))
            out[key] = {"State": STATES.get(stat, "UNKNOWN"), "LsfState": stat,
                        "ExitCode": str(r.get("EXIT_CODE", ""))}
        return out


class LsfJob(core.Job[core.R]):
    _cancel_command = "bkill"
    watcher = LsfInfoWatcher(delay_s=60)

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
        """The job's own exit-code file first (it outlives bjobs' memory), then bjobs."""
        code = self._exit_code()
        if code is not None:
            return "COMPLETED" if code == 0 else "FAILED"
        return self.watcher.get_state(self.job_id, mode="standard")

    def done(self, force_check: bool = False) -> bool:
        if self._exit_code() is not None:
            return True
        return super().done(force_check)

    def cancel(self, check: bool = True) -> None:
        (subprocess.check_call if check else subprocess.call)(
            ["bkill", lsf_target(self.job_id)], stdout=subprocess.DEVNULL)


class LsfJobEnvironment(job_environment.JobEnvironment):
    _env = {"job_id": "LSB_JOBID", "array_task_id": "LSB_JOBINDEX",
            "num_tasks": "QUANTSWEEP_NUM_TASKS", "num_nodes": "QUANTSWEEP_NUM_NODES",
            "node": "QUANTSWEEP_NODE", "global_rank": "QUANTSWEEP_RANK",
            "local_rank": "QUANTSWEEP_LOCAL_RANK"}

    @property
    def job_id(self) -> str:
        index = os.environ.get("LSB_JOBINDEX", "0")
        return self.raw_job_id if index in ("", "0") else f"{self.raw_job_id}_{index}"

    @property
    def array_job_id(self) -> str | None:
        index = os.environ.get("LSB_JOBINDEX", "0")
        return None if index in ("", "0") else self.raw_job_id

    @property
    def hostnames(self) -> list[str]:
        hosts = os.environ.get("LSB_HOSTS", "").split()
        return list(dict.fromkeys(hosts)) or [self.hostname]

    def _requeue(self, countdown: int) -> None:
        target = lsf_target(self.job_id)
        subprocess.check_call(["brequeue", target], timeout=60, stdout=subprocess.DEVNULL)
        logger.get_logger().info(f"Requeued job {target} ({countdown} remaining timeouts)")

    def _handle_signals(self, paths: utils.JobPaths, submission: utils.DelayedSubmission) -> None:
        super()._handle_signals(paths, submission)
        # bkill and memory-limit kills start with SIGINT: record why the job stopped
        reason_file = paths.folder / f"{self.job_id}_stop_reason"

        def on_sigint(signum, frame):  # noqa: ARG001
            reason_file.write_text("SIGINT (bkill, or a memory limit)\n")
            logger.get_logger().warning("Caught SIGINT (bkill, or a memory limit)")
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)


class LsfExecutor(core.PicklingExecutor):
    """Submits to LSF with bsub. Parameters (update_parameters, or lsf_<name> through
    AutoExecutor): job_name, time (minutes), cpus, mem_mb, gpus, queue, project,
    array_parallelism, gpu_syntax ("gpu" | "rusage"), gpu_resource, mem_per ("host" | "core"),
    warn_minutes (-wa USR2 -wt N), extra (raw #BSUB option lines), setup (shell lines),
    dependency (a job id, "123_4" for an array element: -w "done(123[4])")."""

    job_class = LsfJob

    def __init__(self, folder: str | Path, max_num_timeout: int = 3,
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
        return {"name": "job_name", "timeout_min": "time", "mem_gb": "mem_gb",
                "cpus_per_task": "cpus", "gpus_per_node": "gpus"}

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(_DEFAULTS) | {"mem_gb"}

    def _convert_parameters(self, params: dict[str, tp.Any]) -> dict[str, tp.Any]:
        return _mem_in_mb(super()._convert_parameters(params))

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        kwargs = _mem_in_mb(kwargs)
        unknown = sorted(set(kwargs) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"Unavailable parameter(s): {unknown}; valid: {sorted(_DEFAULTS)}")
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
        for start in range(0, len(delayed_submissions), MAX_ARRAY):
            jobs += self._submit_array(delayed_submissions[start:start + MAX_ARRAY])
        return jobs

    def _submit_array(self, chunk: list[utils.DelayedSubmission]) -> list[core.Job[tp.Any]]:
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickles = []
        for d in chunk:
            path = folder / f"{uuid.uuid4().hex}.pkl"
            d.set_timeout(self.parameters["time"], self.max_num_timeout)
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


_DEFAULTS: dict[str, tp.Any] = {
    "job_name": "submitit", "time": 60, "cpus": 1, "mem_mb": 4096, "gpus": 0, "queue": None,
    "project": None, "array_parallelism": None, "gpu_syntax": "gpu",
    "gpu_resource": "ngpus_excl_p", "mem_per": "host", "warn_minutes": 0, "extra": [],
    "setup": [], "map_count": None, "dependency": None,
}


def _mem_in_mb(params: dict[str, tp.Any]) -> dict[str, tp.Any]:
    if "mem_gb" in params:
        params = dict(params)
        params["mem_mb"] = int(params.pop("mem_gb") * 1024)
    return params


def _resources(params: dict[str, tp.Any]) -> Resources:
    lsf = LsfOptions(gpu_syntax=params["gpu_syntax"], gpu_resource=params["gpu_resource"],
                     mem_per=params["mem_per"], warn_minutes=params["warn_minutes"],
                     extra=list(params["extra"]))
    if lsf.gpu_syntax not in ("gpu", "rusage") or lsf.mem_per not in ("host", "core"):
        raise ValueError(f"gpu_syntax must be gpu or rusage and mem_per host or core: {params}")
    return Resources(gpus=params["gpus"], cpus=params["cpus"], mem_mb=params["mem_mb"],
                     time_minutes=params["time"], queue=params["queue"],
                     project=params["project"], array_parallelism=params["array_parallelism"],
                     lsf=lsf)


def make_bsub_script(command: str, folder: str | Path, params: dict[str, tp.Any],
                     count: int | None = None) -> str:
    """The script bsub reads on stdin. It sets the SUBMITIT_* variables explicitly (LSF copies
    the submitter's environment) and writes the exit-code file that outlives bjobs' memory."""
    from jobs.scripts import render_lsf_options  # jinja2, loaded only when submitting

    folder = Path(folder).absolute()
    stem = "%J_%I" if count else "%J"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", params["job_name"])[:200] or "submitit"
    options = render_lsf_options(_resources(params), name, count,
                                 str(folder / f"{stem}_0_log.out"),
                                 str(folder / f"{stem}_0_log.err"), params["array_parallelism"])
    if params.get("dependency"):
        options = options.rstrip("\n") + f'\n#BSUB -w "done({lsf_target(params["dependency"])})"\n'
    job_ref = '${LSB_JOBID}' + ('_${LSB_JOBINDEX}' if count else "")
    exit_file = f'{shlex.quote(str(folder))}/"{EXIT_CODE_FILE.replace("%j", job_ref)}"'
    lines = ["#!/bin/bash", "", "# Parameters", options.rstrip("\n"), "",
             "# setup", *params["setup"], "",
             "unset $(env | sed -n 's/^\\(SUBMITIT_[A-Z_]*\\)=.*/\\1/p')",
             "export SUBMITIT_EXECUTOR=lsf", "",
             f"rm -f {exit_file}  # a requeued job starts without its previous exit code",
             "# bkill and memory limits send SIGINT first: outlive it to record the exit code",
             "trap 'echo \"quantsweep: SIGINT (bkill, or a memory limit)\" >&2' INT",
             "# command", command, "rc=$?",
             f"# {REQUEUE}: the job requeued itself (brequeue) and runs again: no exit code yet",
             f'[ "$rc" = {REQUEUE} ] || echo "$rc" > {exit_file}', 'exit "$rc"', ""]
    return "\n".join(lines)
