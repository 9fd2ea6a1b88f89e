"""jobs.resources: the `resources` section of a spec. Units (memory, wall time), defaults, the
LSF and SLURM option sets, resources.env / setup / python, and the one-line errors (SpecError)
that name the key and say what is allowed."""

from __future__ import annotations

import pytest

from jobs.resources import (
    MAX_ARRAY,
    LsfOptions,
    Resources,
    SlurmOptions,
    parse_mem,
    parse_resources,
    parse_time,
)
from quantlib.errors import MAX_MESSAGE, SpecError
from quantlib.preemption import MAX_REQUEUES

PATH = "spec.yaml"


def refused(raw, key: str, *fragments: str) -> str:
    """The one-line SpecError parse_resources gives for `raw`; it names the file and `key`
    and holds every fragment."""
    with pytest.raises(SpecError) as info:
        parse_resources(raw, PATH)
    message = str(info.value)
    assert "\n" not in message and len(message) <= MAX_MESSAGE + 200, message[:300]
    assert message.startswith(f"{PATH}: {key}: "), message[:300]
    assert info.value.key == key
    for fragment in fragments:
        assert fragment in message, message
    return message


def accepted(raw) -> Resources:
    return parse_resources(raw, PATH)


# --- units ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, mb", [
    (8164, 8164), ("8164", 8164), ("8164MB", 8164), ("8164 MB", 8164), ("16G", 16384),
    ("16GB", 16384), ("16GiB", 16384), ("16gb", 16384), ("1.5G", 1536), ("1T", 1024 * 1024),
    ("2048K", 2), ("1536K", 2), ("512K", 1), ("100KB", 1), (1.5, 2), ("  4G  ", 4096),
])
def test_parse_mem(value, mb):
    assert parse_mem(value) == mb


@pytest.mark.parametrize("value", [0, -1, True, False, "0", "0GB", "-5GB", "16PB", "16 G B",
                                   "G", "", "1e3", None])
def test_parse_mem_refuses(value):
    with pytest.raises(ValueError):
        parse_mem(value)


@pytest.mark.parametrize("value, minutes", [
    (240, 240), ("4:00", 240), ("4:00:00", 240), ("0:05", 5), ("4:00:30", 241),  # seconds: up
    ("1-00:00", 24 * 60), ("1-02:30", 26 * 60 + 30), ("2-0:00:01", 2 * 24 * 60 + 1),
    ("26:30", 26 * 60 + 30), (" 1:00 ", 60),
])
def test_parse_time(value, minutes):
    assert parse_time(value) == minutes


@pytest.mark.parametrize("value", ["0:60", "1:00:60", "4", "4h", "1-", "-1:00", True, "1.5",
                                   "1:2:3:4", ""])
def test_parse_time_refuses(value):
    with pytest.raises(ValueError):
        parse_time(value)


@pytest.mark.parametrize("minutes, hhmm, slurm_time", [
    (240, "4:00", "04:00:00"), (61, "1:01", "01:01:00"), (5, "0:05", "00:05:00"),
    (24 * 60, "24:00", "1-00:00:00"), (26 * 60 + 30, "26:30", "1-02:30:00"),
    (3 * 24 * 60 + 7, "72:07", "3-00:07:00"),
])
def test_time_forms(minutes, hhmm, slurm_time):
    res = Resources(time_minutes=minutes)
    assert (res.time_hhmm, res.time_slurm) == (hhmm, slurm_time)


def test_lsf_rusage_mem_per_host_or_per_core():
    assert Resources(mem_mb=8164, cpus=4).lsf_rusage_mem == "8164MB"
    per_core = Resources(mem_mb=1000, cpus=3, lsf=LsfOptions(mem_per="core"))
    assert per_core.lsf_rusage_mem == "334MB"  # rounded up: the job gets at least mem
    assert Resources(mem_mb=1000, cpus=4, lsf=LsfOptions(mem_per="core")).lsf_rusage_mem == \
        "250MB"


def test_shell_lines_export_quoted_then_setup_as_written():
    res = accepted({"env": {"HF_HOME": "/scratch/my hf", "N": 3, "X": 0.5, "T": "a'b"},
                    "setup": ["module load cuda", "export Y=$HOME"]})
    assert res.env == {"HF_HOME": "/scratch/my hf", "N": "3", "X": "0.5", "T": "a'b"}
    assert res.shell_lines() == ["export HF_HOME='/scratch/my hf'", "export N=3",
                                 "export X=0.5", "export T='a'\"'\"'b'", "module load cuda",
                                 "export Y=$HOME"]
    assert Resources().shell_lines() == []


# --- defaults and the keys --------------------------------------------------------------------

def test_defaults():
    res = parse_resources(None, PATH)
    assert res == Resources() == accepted({})
    assert (res.gpus, res.cpus, res.mem_mb, res.time_minutes) == (0, 1, 4096, 240)
    assert (res.queue, res.project, res.python) == (None, None, None)
    assert (res.array_parallelism, res.max_array_size) == (None, None)
    assert res.max_requeues == MAX_REQUEUES == 3
    assert res.lsf == LsfOptions("gpu", "ngpus_excl_p", "host", 0, [], "auto", None)
    assert res.slurm == SlurmOptions(None, None, None, "gres", 90, [])
    assert (res.setup, res.env) == ([], {})
    assert MAX_ARRAY == 1000


def test_the_keys_as_written():
    res = accepted({"gpus": 2, "cpus": 8, "mem": "32GB", "time": "1-00:00", "queue": "gpu.q",
                    "project": "p-1", "array_parallelism": 4, "max_array_size": 500,
                    "max_requeues": 0, "python": "/opt/venv/bin/python"})
    assert (res.gpus, res.cpus, res.mem_mb, res.time_minutes) == (2, 8, 32768, 1440)
    assert (res.queue, res.project, res.array_parallelism, res.max_array_size) == (
        "gpu.q", "p-1", 4, 500)
    assert res.max_requeues == 0 and res.python == "/opt/venv/bin/python"


def test_partition_and_account_are_queue_and_project():
    res = accepted({"partition": "short", "account": "acct@site"})
    assert (res.queue, res.project) == ("short", "acct@site")


def test_not_a_mapping():
    refused([1], "resources", "must be a mapping with keys gpus, cpus, mem")


def test_an_unknown_key_is_named_with_a_suggestion():
    refused({"gpu": 1}, "resources.gpu", "unknown key (did you mean 'gpus'?)",
            "allowed: gpus, cpus, mem, time")


@pytest.mark.parametrize("key, value, lo", [
    ("gpus", -1, 0), ("gpus", True, 0), ("gpus", "2", 0), ("gpus", 1.0, 0), ("cpus", 0, 1),
    ("array_parallelism", 0, 1), ("max_array_size", 0, 1), ("max_requeues", -1, 0),
])
def test_counts_are_whole_numbers(key, value, lo):
    refused({key: value}, f"resources.{key}", f"is not a whole number >= {lo}")


@pytest.mark.parametrize("value", [0, 65, True, "2", 2.0, None, [2]])
def test_pack_is_a_whole_number_up_to_64(value):
    refused({"pack": value}, "resources.pack", "is not a whole number from 1 to 64")


def test_a_pack_asks_for_n_times_a_job():
    res = accepted({"pack": 3, "gpus": 2, "cpus": 4, "mem": "8GB", "time": "1:00"})
    alloc = res.packed()
    assert (alloc.gpus, alloc.cpus, alloc.mem_mb, alloc.time_minutes) == (6, 12, 24576, 60)
    assert (res.gpus, res.cpus, res.mem_mb) == (2, 4, 8192)  # a job's own, unchanged


@pytest.mark.parametrize("value", [0, "0GB", "-5GB", "lots", True])
def test_mem_refused(value):
    refused({"mem": value}, "resources.mem", "is not a memory size above 0",
            "(8164MB, 16GB)")


@pytest.mark.parametrize("value, fragment", [
    ("4h", "is not a wall time"), ("0:60", "is not a wall time"),
    (0, "must be at least one minute"), (-5, "must be at least one minute"),
    ("0:00:00", "must be at least one minute"),
])
def test_time_refused(value, fragment):
    refused({"time": value}, "resources.time", fragment)


@pytest.mark.parametrize("key", ["queue", "partition", "project", "account"])
@pytest.mark.parametrize("value", ["a b", "-q", "", "x;y", "a/b", 5, "x" * 129])
def test_scheduler_names(key, value):
    refused({key: value}, f"resources.{key}", "is not a scheduler name")


@pytest.mark.parametrize("value", ["short", "gpu.q", "a_b-c:d@e+f", "0", "x" * 128])
def test_scheduler_names_accepted(value):
    assert accepted({"queue": value}).queue == value


# --- LSF and SLURM options --------------------------------------------------------------------

def test_lsf_options():
    res = accepted({"lsf": {"gpu_syntax": "rusage", "gpu_resource": "ngpus_physical",
                            "mem_per": "core", "warn_minutes": 5, "extra": "-x",
                            "dialect": "openlava", "mem_unit": "GB"}})
    assert res.lsf == LsfOptions("rusage", "ngpus_physical", "core", 5, ["-x"], "openlava",
                                 "GB")


def test_slurm_options():
    res = accepted({"slurm": {"partition": "gpu", "account": "a1", "constraint": "a100&ib|v100",
                              "gpu_syntax": "gpus", "signal_seconds": 300,
                              "extra": ["--exclusive", "--qos=high"]}})
    assert res.slurm == SlurmOptions("gpu", "a1", "a100&ib|v100", "gpus", 300,
                                     ["--exclusive", "--qos=high"])


@pytest.mark.parametrize("raw, key, fragment", [
    ({"lsf": 3}, "resources.lsf", "must be a mapping with keys gpu_syntax, gpu_resource"),
    ({"slurm": "x"}, "resources.slurm", "must be a mapping with keys partition, account"),
    ({"lsf": {"gpu_syntx": "gpu"}}, "resources.lsf.gpu_syntx",
     "unknown key (did you mean 'gpu_syntax'?)"),
    ({"slurm": {"partitio": "a"}}, "resources.slurm.partitio",
     "unknown key (did you mean 'partition'?); allowed: partition, account, constraint"),
    ({"lsf": {"gpu_syntax": "gres"}}, "resources.lsf.gpu_syntax",
     "'gres' is not allowed; allowed: gpu, rusage"),
    ({"slurm": {"gpu_syntax": "gpu"}}, "resources.slurm.gpu_syntax",
     "'gpu' is not allowed; allowed: gres, gpus"),
    ({"lsf": {"mem_per": "node"}}, "resources.lsf.mem_per", "allowed: host, core"),
    ({"lsf": {"dialect": "pbs"}}, "resources.lsf.dialect", "allowed: auto, lsf10, openlava"),
    ({"lsf": {"gpu_resource": "a-b"}}, "resources.lsf.gpu_resource",
     "'a-b' is not an LSF resource name"),
    ({"lsf": {"warn_minutes": -1}}, "resources.lsf.warn_minutes", "is not a whole number >= 0"),
    ({"lsf": {"warn_minutes": True}}, "resources.lsf.warn_minutes", "not a whole number"),
    ({"slurm": {"signal_seconds": "90"}}, "resources.slurm.signal_seconds",
     "'90' is not a whole number >= 0"),
    ({"lsf": {"extra": "a\nb"}}, "resources.lsf.extra", "each option must be one non-empty line"),
    ({"slurm": {"extra": ["  "]}}, "resources.slurm.extra", "one non-empty line"),
    ({"lsf": {"extra": [1]}}, "resources.lsf.extra", "must be a list of option strings"),
    ({"slurm": {"partition": 5}}, "resources.slurm.partition", "5 is not a string"),
    ({"slurm": {"account": "a b"}}, "resources.slurm.account", "is not a scheduler name"),
    ({"slurm": {"constraint": "a b"}}, "resources.slurm.constraint",
     "is not a SLURM constraint"),
])
def test_option_errors(raw, key, fragment):
    refused(raw, key, fragment)


def test_null_options_are_the_defaults():
    assert accepted({"lsf": None, "slurm": None}) == Resources()
    assert accepted({"slurm": {"partition": None}}).slurm.partition is None


# --- env ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["1A", "A-B", "A B", "é"])
def test_env_names(name):
    refused({"env": {name: "x"}}, f"resources.env.{name}", "not a variable name")


def test_an_env_name_with_a_trailing_newline_is_refused_in_one_line():
    """`$` would match before the newline (the rule ends at \\Z); the key is shown quoted."""
    refused({"env": {"A\n": "x"}}, "resources.env.'A\\n'", "not a variable name")


@pytest.mark.parametrize("key", ["partition", "account"])
def test_names_with_a_trailing_newline_are_refused(key):
    with pytest.raises(SpecError):
        parse_resources({"slurm": {key: "gpu\n"}}, PATH)


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
def test_env_values(value):
    refused({"env": {"A": value}}, "resources.env.A", "is not a string or number")


def test_env_must_be_a_mapping():
    refused({"env": ["A=1"]}, "resources.env", "must map variable names to values")


# --- setup and python -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [[""], ["  "], [1], 3, {"a": "b"}])
def test_setup_must_be_shell_lines(value):
    refused({"setup": value}, "resources.setup", "must be a list of shell lines")


def test_a_single_setup_line_is_a_list():
    assert accepted({"setup": "module load cuda"}).setup == ["module load cuda"]


@pytest.mark.parametrize("value", ["", "  ", 3, None, ["python"]])
def test_python_must_be_a_word(value):
    refused({"python": value}, "resources.python", "is not an interpreter")


# --- moved from tests/test_hostile_specs_v2.py (there through load_spec; here on the section
# itself, which is all load_spec passes the section to) --------------------------------------

# 1. resources.env may not set what the scripts, the launcher or the scheduler own

@pytest.mark.parametrize("name", [
    "LSB_JOBINDEX", "SLURM_ARRAY_TASK_ID", "LSF_ENVDIR", "SBATCH_PARTITION", "SUBMITIT_FOLDER",
    "QUANTSWEEP_JOB_ID", "QUANTSWEEP_REQUEUE", "PYTHONSAFEPATH", "PYTHONPATH",
    "PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "PATH", "RANK", "IFS"])
def test_env_may_not_set_owned_variables(name):
    refused({"env": {name: "3"}}, f"resources.env.{name}", "may not set", "LSB_*", "SLURM_*",
            "QUANTSWEEP_*", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")


def test_env_path_says_how_to_prepend():
    refused({"env": {"PATH": "/opt/bin"}}, "resources.env.PATH",
            "resources.setup: export PATH=")


@pytest.mark.parametrize("name", ["HF_HOME", "OMP_NUM_THREADS", "path", "MY_SLURM_THING",
                                  "TRANSFORMERS_CACHE"])
def test_env_may_set_the_users_own_variables(name):
    assert accepted({"env": {name: "4"}}).env == {name: "4"}


def test_env_value_over_the_kernels_limit_is_refused():
    refused({"env": {"BIG": "x" * (128 * 1024)}}, "resources.env.BIG", "128 KiB", "E2BIG")
    assert len(accepted({"env": {"BIG": "x" * 100_000}}).env["BIG"]) == 100_000


# 2. setup lines: no scheduler directives, valid bash together

@pytest.mark.parametrize("line", ["#BSUB -G x", "   #SBATCH --exclusive", "#PBS -l nodes=2",
                                  "#$ -q all.q", "#MSUB -l x", "#@ class = x", "#bsub -q x",
                                  "#Sbatch -p x", "#flux: -N 2"])
def test_setup_lines_may_not_be_scheduler_directives(line):
    refused({"setup": ["module load x", line]}, "resources.setup[1]", "scheduler directive",
            "resources.lsf.extra")


@pytest.mark.parametrize("lines, key, fragment", [
    (["echo 'unbalanced"], "resources.setup[0]", "not valid bash"),
    (["module load cuda", "fi"], "resources.setup[1]", "unexpected token"),
    (["if true; then"], "resources.setup", "not valid bash"),
    (["echo ok", ")"], "resources.setup[1]", "not valid bash"),
    (["cat <<EOF"], "resources.setup[0]", "here-document"),  # would swallow the script
    (["echo a \\"], "resources.setup[0]", "would join the script's next line"),
])
def test_setup_lines_must_be_valid_bash(lines, key, fragment):
    refused({"setup": lines}, key, fragment)


def test_valid_setup_lines_are_kept_as_written():
    lines = ["module load cuda/12.1", "source ~/venvs/qs/bin/activate", "# a comment",
             "if [ -d /scratch ]; then export TMPDIR=/scratch; fi", "echo a \\\\",
             "export PATH=/opt/x/bin:$PATH", "shopt -s extglob", "ls !(*.tmp) || true"]
    assert accepted({"setup": lines}).setup == lines


# 4. python

@pytest.mark.parametrize("python, fragment", [
    ("-a", "starts with '-'"), ("-m", "starts with '-'"), ("--version", "starts with '-'"),
    ("python -X dev", "whitespace"), ("/opt/my python/bin/python", "whitespace"),
    ("python\u00a0", "whitespace"), ("~/venv/bin/python", "'~' is not expanded")])
def test_python_must_be_one_path_or_command(python, fragment):
    refused({"python": python}, "resources.python", fragment)


@pytest.mark.parametrize("python", ["python3", "/opt/venv/bin/python", "venv/bin/python3.11"])
def test_python_paths_and_commands(python):
    assert accepted({"python": python}).python == python


# 5. SLURM's warning seconds, LSF's warning minutes

@pytest.mark.parametrize("seconds", [0, 65536, 10**9])
def test_slurm_signal_seconds_range(seconds):
    refused({"slurm": {"signal_seconds": seconds}}, "resources.slurm.signal_seconds",
            "1 to 65535")


@pytest.mark.parametrize("seconds", [1, 90, 65535])
def test_slurm_signal_seconds_allowed(seconds):
    assert accepted({"slurm": {"signal_seconds": seconds}}).slurm.signal_seconds == seconds


@pytest.mark.parametrize("resources", [{"lsf": {"warn_minutes": 240}},  # the default time: 240
                                       {"time": "0:05", "lsf": {"warn_minutes": 10}},
                                       {"lsf": {"warn_minutes": 60}, "time": 60}])
def test_lsf_warning_must_come_before_the_time_limit(resources):
    refused(resources, "resources.lsf.warn_minutes", "not below the time limit")


def test_lsf_warning_below_the_limit_and_off():
    assert accepted({"time": 60, "lsf": {"warn_minutes": 59}}).lsf.warn_minutes == 59
    assert accepted({"time": 1, "lsf": {"warn_minutes": 0}}).lsf.warn_minutes == 0


def test_lsf_mem_unit_choices_are_one_line():
    # the allowed values hold None (unset): listing them was a TypeError
    refused({"lsf": {"mem_unit": "PB"}}, "resources.lsf.mem_unit",
            "allowed: KB, MB, GB, TB (or leave it unset)")
