"""jobs.scripts: the per-job runtime configs (defaults filled in, local paths absolute, the
launcher's bookkeeping: exactly quantlib.jobdir.RUN_KEYS + STAGE_KEYS) and the job scripts of
every backend rendered from the templates: values shell-quoted, valid bash, arrays in chunks."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from test_spec import STAGED

from jobs.backends.lsf import Site
from jobs.grid import MARKER, expand
from jobs.scripts import (
    env_lines,
    label,
    render_arrays_with_jobs,
    render_local,
    render_single,
    render_staged_submission,
    runtime_config,
    write_configs,
)
from jobs.spec import Spec, parse_spec
from quantlib.configs import with_defaults
from quantlib.jobdir import (
    BASE_KEY,
    CONFIGS_FORMAT,
    CONFIGS_HEADER,
    RUN_KEYS,
    STAGE_KEYS,
    read_config,
    read_configs,
)

LSF10 = Site("lsf10", "MB", "test")
HOSTILE = "a'b \"c\" $(touch PWNED) `touch PWNED` ; touch PWNED #x \\"

SIMPLE = """
name: s
grid: {task: [mrpc], method: [fp32], seed: [1, 2]}
base: {data_dir: data/mrpc, model_name_or_path: bert-base-uncased}
"""



@pytest.fixture
def here(tmp_path, monkeypatch):
    """tmp_path as the working directory: the sweep directory (runs/NAME) and relative paths
    resolve under it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def spec_of(here: Path, text: str, **resources) -> Spec:
    raw = yaml.safe_load(text)
    if resources:
        raw["resources"] = resources
    path = here / "spec.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return parse_spec(raw, str(path))


def bash_n(script: Path) -> None:
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr == "", (script.name, check.stderr)


# --- runtime configs --------------------------------------------------------------------------

def test_runtime_config_adds_exactly_the_bookkeeping(here):
    spec = spec_of(here, SIMPLE, gpus=2, max_requeues=5)
    job = expand(spec)[0]
    config = runtime_config(spec, job)
    assert set(config) - set(with_defaults(job.config)) == set(RUN_KEYS + STAGE_KEYS)
    assert {k: config[k] for k in RUN_KEYS + STAGE_KEYS} == {
        "job_id": job.id, "sweep": "s", "sweep_dir": str(here / "runs" / "s"),
        "output_dir": str(job.output_dir),
        "nproc_per_node": 2, "max_requeues": 5, "upstream_dir": None, "stage": None,
        "after": None, "finetune_from": None}
    # everything else: the job's configuration with every default
    rest = {k: v for k, v in config.items() if k not in RUN_KEYS + STAGE_KEYS}
    assert rest == {**with_defaults(job.config), "data_dir": str(here / "data" / "mrpc")}


def test_runtime_config_paths(here):
    (here / "local-model").mkdir()
    spec = spec_of(here, SIMPLE.replace("bert-base-uncased", "local-model"))
    config = runtime_config(spec, expand(spec)[0])
    assert config["data_dir"] == str(here / "data" / "mrpc")  # always made absolute
    assert config["model_name_or_path"] == str(here / "local-model")  # exists here: absolute
    hub = spec_of(here, SIMPLE)
    # not a path here (a hub name): kept as written
    assert runtime_config(hub, expand(hub)[0])["model_name_or_path"] == "bert-base-uncased"


def test_one_process_per_node_without_gpus(here):
    spec = spec_of(here, SIMPLE, gpus=0)
    config = runtime_config(spec, expand(spec)[0])
    assert config["nproc_per_node"] == 1 and config["max_requeues"] == 3


def test_a_later_stage_starts_from_its_parents_model(here):
    spec = spec_of(here, STAGED)
    jobs = expand(spec)
    parents = {j.id: j for j in jobs if j.stage == "ft"}
    for job in jobs:
        config = runtime_config(spec, job)
        if job.stage == "ft":
            assert (config["stage"], config["after"], config["upstream_dir"]) == (
                "ft", None, None)
            continue
        parent = parents[job.after]
        assert job.config["model_name_or_path"] == MARKER + parent.id
        assert config["model_name_or_path"] == str(parent.output_dir / "model")
        assert (config["stage"], config["after"], config["upstream_dir"]) == (
            "q", parent.id, str(parent.output_dir))


def test_write_configs_one_line_each(here):
    two_methods = SIMPLE.replace("[fp32]", "[fp32, lin]").replace("{data", "{nbits: 4, data")
    spec = spec_of(here, two_methods)
    jobs = expand(spec)
    sweep = here / "sw"
    refs = write_configs(spec, jobs, sweep)
    (path,) = {r.path for r in refs.values()}  # one file for the launch, a line per job
    assert list((sweep / "configs").iterdir()) == [path] and path.suffix == ".jsonl"
    assert [refs[j.id].entry for j in jobs] == list(range(len(jobs)))
    head, *lines = map(json.loads, path.read_text().splitlines())
    assert len(lines) == len(jobs) and head[CONFIGS_HEADER] == CONFIGS_FORMAT
    methods = list(dict.fromkeys(j.config["method"] for j in jobs))  # a base per method
    assert len(head["bases"]) == len(methods) > 1
    for job, line in zip(jobs, lines):
        full = runtime_config(spec, job)
        base = head["bases"][line.pop(BASE_KEY)]
        assert base == head["bases"][methods.index(job.config["method"])]
        assert {**base, **line} == full and set(line) < set(full)  # the base: written once
        assert read_config(path, refs[job.id].entry) == full
        assert list(read_config(path, refs[job.id].entry)) == sorted(full)
    assert read_configs(path) == [runtime_config(spec, j) for j in jobs]
    before = path.stat().st_mtime_ns
    assert write_configs(spec, jobs, sweep) == refs  # unchanged: the same file, not rewritten
    assert path.stat().st_mtime_ns == before
    other = write_configs(spec, jobs[:1], sweep)[jobs[0].id]  # another launch: another file
    assert other.path != path and other.entry == 0 and path.is_file()
    with pytest.raises(ValueError, match=f"no entry {len(jobs)}"):
        read_config(path, len(jobs))
    lines = path.read_text().splitlines()
    for bad, match in (([lines[0][:-1]] + lines[1:], "Expecting"),  # truncated header
                       ([lines[1]] + lines[1:], "not a header of configs format 2"),
                       (lines[:1] + ['{"_base": 7, "seed": 1}'] * 2, "names none of its 2"),
                       (lines[:1] + ["[1]"] * 2, "not a JSON object")):
        broken = path.with_name("broken.jsonl")
        broken.write_text("\n".join(bad) + "\n")
        with pytest.raises(ValueError, match=match):
            read_config(broken, 1)


def test_labels(here):
    spec = spec_of(here, SIMPLE)
    assert [label(spec, j) for j in expand(spec)] == [
        "task=mrpc,method=fp32,seed=1", "task=mrpc,method=fp32,seed=2"]
    staged = spec_of(here, STAGED)
    got = [label(staged, j) for j in expand(staged)]
    assert got[0] == "ft: seed=1" and got[2].startswith("q: ")
    assert all(MARKER not in text for text in got)  # the parent's model is no axis value


def test_env_lines_then_offline_access(here):
    spec = spec_of(here, SIMPLE, env={"HF_HOME": "/scratch/my hf"}, setup=["module load x"])
    assert env_lines(spec) == ["export HF_HOME='/scratch/my hf'", "module load x"]
    spec.offline = True
    assert env_lines(spec)[-1] == ("export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 "
                                   "TRANSFORMERS_OFFLINE=1  # fetched at launch: read from the "
                                   "cache")


# --- rendered scripts: hostile values are quoted ----------------------------------------------

def hostile_spec(here: Path, python: str) -> Spec:
    spec = spec_of(here, SIMPLE, env={"HF_HOME": HOSTILE, "OTHER": "$HOME"}, python=python,
                   queue="short", project="p-1", setup=["export FROM_SETUP=1"])
    spec.sweep_dir = str(here / "runs" / "it's $(touch PWNED) x")
    return spec


def fake_python(here: Path) -> Path:
    folder = here / "bin'$(id)"
    folder.mkdir()
    path = folder / "py"
    path.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$FAKE_OUT"\nenv >> "$FAKE_OUT"\n')
    path.chmod(0o755)
    return path


def test_a_local_script_quotes_every_value_and_runs_only_the_entry_point(here):
    python = fake_python(here)
    spec = hostile_spec(here, str(python))
    sweep = Path(spec.sweep_dir)
    job = expand(spec)[0]
    config = write_configs(spec, [job], sweep)[job.id]
    ((script, chunk),) = render_local(spec, [job], {job.id: config}, sweep)
    assert script == sweep / "scripts" / "local_array_1.sh" and chunk == [job]
    assert script.stat().st_mode & 0o777 == 0o755
    bash_n(script)
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for line in (f"export HF_HOME={shlex.quote(HOSTILE)}", "export OTHER='$HOME'",
                 "export FROM_SETUP=1", f"  1) JOB_ID={job.id}; ENTRY=0 ;;",
                 f"CONFIG={shlex.quote(str(config.path))}  # the jobs' configs, one JSON line "
                 "each (ENTRY: the job's, from 0)", f"cd {shlex.quote(str(here))}",
                 f"exec {shlex.quote(str(python))} -m jobs.runtime \"$CONFIG\" \"$ENTRY\""):
        assert line in lines, line
    assert lines.index("set -euo pipefail") > lines.index("export FROM_SETUP=1")
    out = here / "called.txt"
    run = subprocess.run(["bash", str(script)], cwd=here, capture_output=True, text=True,
                         env={**os.environ, "FAKE_OUT": str(out), "QUANTSWEEP_TASK": "1"},
                         timeout=60)
    assert run.returncode == 0, run.stderr
    called = out.read_text().splitlines()
    assert called[:4] == ["-m", "jobs.runtime", str(config.path), "0"]
    assert f"HF_HOME={HOSTILE}" in called and "OTHER=$HOME" in called
    assert f"QUANTSWEEP_JOB_ID={job.id}" in called and "PYTHONSAFEPATH=1" in called
    assert not list(here.rglob("PWNED")), "a value ran"


def test_slurm_arrays_quote_and_chunk(here):
    spec = hostile_spec(here, "/opt/venv/bin/python")
    spec.resources.array_parallelism = 2
    sweep = Path(spec.sweep_dir)
    jobs = expand(spec)
    configs = write_configs(spec, jobs, sweep)
    rendered = render_arrays_with_jobs("slurm", spec, jobs, configs, sweep, chunk=1)
    assert [(p.name, [j.id for j in js]) for p, js in rendered] == [
        ("slurm_array_1.sh", [jobs[0].id]), ("slurm_array_2.sh", [jobs[1].id])]
    logs = str(sweep / "logs")
    for n, (path, (job,)) in enumerate(rendered, 1):
        bash_n(path)
        lines = path.read_text().splitlines()
        for line in (f"#SBATCH --job-name=s.{n}", "#SBATCH --array=0-0%2",
                     f"#SBATCH --output={shlex.quote(logs + '/%A_%a.out')}",
                     f"#SBATCH --error={shlex.quote(logs + '/%A_%a.err')}",
                     "#SBATCH --time=04:00:00", "#SBATCH --mem=4096M",
                     "#SBATCH --partition=short", "#SBATCH --account=p-1",
                     "#SBATCH --signal=B:USR2@90", "export QUANTSWEEP_REQUEUE=slurm",
                     f"  0) JOB_ID={job.id}; ENTRY={configs[job.id].entry} ;;",
                     f"CONFIG={shlex.quote(str(configs[job.id].path))}  # the jobs' configs, one "
                     "JSON line each (ENTRY: the job's, from 0)",
                     f"export HF_HOME={shlex.quote(HOSTILE)}"):
            assert line in lines, (path.name, line)
        for line in lines:  # each directive one option: the sweep directory's quoted
            if line.startswith("#SBATCH "):
                assert len(shlex.split(line[len("#SBATCH "):])) == 1, line


def test_one_array_takes_its_name_without_a_number(here):
    spec = spec_of(here, SIMPLE)
    sweep = here / "sw"
    jobs = expand(spec)
    configs = write_configs(spec, jobs, sweep)
    ((path, chunk),) = render_arrays_with_jobs("slurm", spec, jobs, configs, sweep, tag="ft")
    assert path == sweep / "scripts" / "slurm_array_ft_1.sh" and chunk == jobs
    text = path.read_text()
    assert "#SBATCH --job-name=s.ft\n" in text and "#SBATCH --array=0-1\n" in text
    assert render_arrays_with_jobs("slurm", spec, [], configs, sweep) == []


def test_lsf_arrays_number_from_one(here):
    spec = hostile_spec(here, "/opt/venv/bin/python")
    sweep = Path(spec.sweep_dir)
    jobs = expand(spec)
    configs = write_configs(spec, jobs, sweep)
    ((path, chunk),) = render_arrays_with_jobs("lsf", spec, jobs, configs, sweep, site=LSF10)
    assert path.name == "lsf_array_1.sh" and chunk == jobs
    bash_n(path)
    lines = path.read_text().splitlines()
    logs = str(sweep / "logs")
    for line in ('#BSUB -J "s[1-2]"', f"#BSUB -o {shlex.quote(logs + '/%J_%I.out')}",
                 "#BSUB -q short", "#BSUB -P p-1", "#BSUB -W 4:00",
                 f"  1) JOB_ID={jobs[0].id}; ENTRY=0 ;;", f"  2) JOB_ID={jobs[1].id}; ENTRY=1 ;;",
                 'case "${LSB_JOBINDEX:-}" in'):
        assert line in lines, line
    exit_line = next(line for line in lines if line.startswith("rm -f "))
    assert shlex.split(exit_line, comments=True) == [
        "rm", "-f", f"{logs}/${{LSB_JOBID:-}}_${{LSB_JOBINDEX:-0}}.exit",
        f"{logs}/${{LSB_JOBID:-}}_${{LSB_JOBINDEX:-0}}.requeued"]


@pytest.mark.parametrize("kind", ["slurm", "lsf"])
def test_render_single_is_one_job_without_an_array(here, kind):
    spec = spec_of(here, STAGED)
    sweep = here / "sw"
    jobs = expand(spec)
    child = jobs[-1]
    configs = write_configs(spec, jobs, sweep)
    path = render_single(kind, spec, child, configs[child.id], sweep, site=LSF10)
    assert path == sweep / "scripts" / f"{kind}_{child.id}.sh"
    bash_n(path)
    text = path.read_text()
    assert f"\nJOB_ID={child.id}\n" in text and "case " not in text
    assert "--array" not in text and "[1-" not in text
    assert ("#SBATCH --job-name=staged.q\n" if kind == "slurm" else '#BSUB -J "staged.q"\n') \
        in text


class FakeSlurm:
    """What render_staged_submission needs of a backend, without asking a scheduler."""

    name = "slurm"

    def render(self, spec, jobs, configs, sweep_dir, tag=""):
        return render_arrays_with_jobs("slurm", spec, jobs, configs, sweep_dir, tag)

    def render_single(self, spec, job, config_path, sweep_dir):
        return render_single("slurm", spec, job, config_path, sweep_dir)

    first_index = 0

    def submit_line(self, script, after=None, elements=None):
        dep = f"--dependency=afterok:{after} " if after else ""
        part = f"--array={elements.first}-{elements.last} " if elements else ""
        return f"sbatch --parsable {part}{dep}{shlex.quote(str(script))}"


def test_a_staged_submission_waits_for_each_parent(here):
    spec = spec_of(here, STAGED)
    sweep = here / "sw"
    jobs = expand(spec)
    configs = write_configs(spec, jobs, sweep)
    script, lines = render_staged_submission(FakeSlurm(), spec, jobs, configs, sweep)
    assert script == sweep / "scripts" / "submit_slurm.sh"
    assert script.stat().st_mode & 0o777 == 0o755
    bash_n(script)
    first = sweep / "scripts" / "slurm_array_ft_1.sh"
    assert lines[0] == f"A1=$(sbatch --parsable {first})  # 2 jobs"
    index = {j.id: i for i, j in enumerate(jobs) if j.stage == "ft"}
    children = [j for j in jobs if j.after]
    assert len(lines) == 1 + len(children) == 5
    for line, job in zip(lines[1:], children):
        single = sweep / "scripts" / f"slurm_{job.id}.sh"
        assert line == (f"J_{job.id}=$(sbatch --parsable --dependency=afterok:${{A1}}_"
                        f"{index[job.after]} {single})  # {label(spec, job)}, after {job.after}")
    text = script.read_text().splitlines()
    assert text[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in text
    assert text[-len(lines):] == lines
