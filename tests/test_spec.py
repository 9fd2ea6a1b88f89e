"""Spec validation: every error names the file and the key, in one line, with exit status 2."""

from __future__ import annotations

import pytest
from conftest import sweep_cli, write_spec

from jobs.grid import expand
from jobs.spec import load_spec
from quantlib.errors import SpecError

GOOD = """
name: s
grid:
  task: [mrpc]
  method: [lin, p2]
  nbits: 1..3
"""


def error_of(tmp_path, text: str) -> str:
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        expand(load_spec(path))
    return str(exc.value)


@pytest.mark.parametrize("text, key, fragment", [
    (GOOD + "bsae: {}\n", "bsae", "did you mean 'base'"),
    (GOOD.replace("nbits: 1..3", "nbits: 1..3\n  learnig_rate: [1.0e-5]"),
     "grid.learnig_rate", "did you mean 'learning_rate'"),
    (GOOD.replace("[lin, p2]", "[lin, pow2]"), "grid.method", "unknown method 'pow2'"),
    (GOOD.replace("[mrpc]", "[mrcp]"), "grid.task", "did you mean 'mrpc'"),
    (GOOD.replace("1..3", "[4, 9]"), "grid.nbits", "9 is outside 1..8"),
    (GOOD.replace("1..3", "[0]"), "grid.nbits", "0 is outside 1..8"),
    (GOOD.replace("1..3", "3..1"), "grid.nbits", "bad range"),
    (GOOD.replace("1..3", "1..x"), "grid.nbits", "bad range"),
    (GOOD.replace("1..3", "[]"), "grid.nbits", "empty list"),
    ("name: s\ngrid: {}\n", "grid", "empty grid"),
    (GOOD + "output_dir: '{task}_{bits}'\n", "output_dir", "{bits} names no axis"),
    (GOOD + "include:\n  - {task: mrpc, method: lin, nbits: 2}\n", "include[0]",
     "duplicate job"),
    (GOOD.replace("[lin, p2]", "[lin, fp32]"), "grid", "ignores nbits"),
    (GOOD + "base: {learning_rate: fast}\n", "base.learning_rate", "not a number"),
    # set_seed (random, numpy, torch) takes 0..2**32-1; a job with another seed would fail
    (GOOD.replace("nbits: 1..3", "nbits: 1..3\n  seed: [1, -1]"), "grid.seed",
     "-1 is outside 0..4294967295"),
    (GOOD + "base: {seed: 4294967296}\n", "base.seed", "4294967296 is outside 0..4294967295"),
    (GOOD + "base: {inq_steps: [0.5, 0.9]}\n", "base.inq_steps", "end at 1.0"),
    (GOOD + "base: {finetune: maybe}\n", "base.finetune", "allowed: auto, always, never"),
    (GOOD + "exclude:\n  - {nbits: 7}\n", "exclude[0]", "matches no job"),
    (GOOD + "zip:\n  - {seed: [1, 2], learning_rate: [1.0e-5]}\n", "zip[0]", "differ in length"),
    (GOOD + "resources: {mem: lots}\n", "resources.mem", "not a memory size"),
    (GOOD + "resources: {time: '4:75'}\n", "resources.time", "not a wall time"),
    (GOOD + "resources: {gpu: 1}\n", "resources.gpu", "did you mean 'gpus'"),
    (GOOD + 'resources: {lsf: {extra: ["-x\\n rm -rf /"]}}\n', "resources.lsf.extra[0]",
     "control character"),
    ("name: 'bad name'\ngrid: {task: [mrpc]}\n", "name", "A-Z a-z 0-9"),
])
def test_spec_errors_name_file_and_key(tmp_path, text, key, fragment):
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'spec.yaml'}: {key}: "), message
    assert fragment in message
    assert "\n" not in message


def test_missing_nbits_for_a_quantizing_method(tmp_path):
    message = error_of(tmp_path, "name: s\ngrid: {task: [rte], method: [mb]}\n")
    assert "nbits: missing; method 'mb' needs it" in message


def test_invalid_yaml_gives_the_line(tmp_path):
    message = error_of(tmp_path, "name: s\ngrid: [unclosed\n")
    assert "invalid YAML" in message and ": line " in message


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = write_spec(tmp_path, GOOD.replace("[lin, p2]", "[lin, linn]"))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = sweep_cli("launch", str(path), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"sweep: error: {path}: grid.method: unknown method 'linn'")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_cli_missing_spec_file(tmp_path):
    proc = sweep_cli("launch", str(tmp_path / "nope.yaml"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.yaml: cannot read the spec" in proc.stderr


def test_yaml_is_loaded_safely(tmp_path):
    path = write_spec(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(path)


def test_resources_units(tmp_path):
    spec = load_spec(write_spec(tmp_path, GOOD + "resources: {mem: 16GB, time: '1-02:30'}\n"))
    assert spec.resources.mem_mb == 16384
    assert spec.resources.time_minutes == 26 * 60 + 30
    assert spec.resources.time_slurm == "1-02:30:00"
    assert spec.resources.time_hhmm == "26:30"


STAGED = """
name: staged
base: {task: sst2}
stages:
  - name: ft
    grid: {seed: [1, 2]}
    base: {method: fp32}
  - name: q
    grid: {quant_mode: [ft1, ft2]}
    base: {method: ptq}
"""


def test_stages_expand_per_parent_and_inherit(tmp_path):
    import yaml

    from jobs.grid import MARKER, expand
    from jobs.spec import parse_spec

    spec = parse_spec(yaml.safe_load(STAGED), "s.yaml")
    jobs = expand(spec)
    assert [j.stage for j in jobs] == ["ft", "ft", "q", "q", "q", "q"]
    parents = {j.id: j for j in jobs[:2]}
    for j in jobs[2:]:
        parent = parents[j.after]
        assert j.config["seed"] == parent.config["seed"]  # inherited
        assert j.config["model_name_or_path"] == MARKER + parent.id
        assert j.upstream_dir == parent.output_dir and "save_model" not in j.config
    assert all(j.config["save_model"] for j in jobs[:2])
    assert len({j.id for j in jobs}) == 6


@pytest.mark.parametrize("edit, where, message", [
    ("grid: {seed: [1]}\n", "grid", "gives its grid in each stage"),
    ("stages: []\n", "stages", "must be a list of stages"),
    ("stages: [{name: a, grid: {sede: [1]}}]\n", "stages[0].grid.sede", "did you mean 'seed'"),
    ("stages: [{name: a}, {name: a}]\n", "stages[1].name", "appears twice"),
    ("stages: [{name: 'a b'}]\n", "stages[0].name", "must be 1-40 characters"),
    ("stages: [{name: a, from_previous: model_name_or_path}]\n", "stages[0].from_previous",
     "the first stage has no previous stage"),
    ("stages: [{name: a}, {name: b, from_previous: [data_dir]}]\n", "stages[1].from_previous",
     "among model_name_or_path, teacher_name_or_path"),
    ("stages: [{name: a, colour: 1}]\n", "stages[0].colour", "unknown key"),
])
def test_stage_errors_name_file_and_key(tmp_path, edit, where, message):
    from conftest import sweep_cli, write_spec

    text = "name: s\nbase: {task: sst2, method: fp32}\n" + edit
    if not edit.startswith("stages"):
        text += "stages: [{name: a}]\n"
    spec = write_spec(tmp_path, text)
    proc = sweep_cli("launch", str(spec), "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"sweep: error: {spec}: {where}: ") and message in proc.stderr, \
        proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("method, task, allowed", [
    ("distil-squad", "sst2", "runs on squad only"),
    ("distill-quant", "squad", "runs on cola, sst2"),
])
def test_a_method_on_a_task_it_cannot_run_is_a_launch_error(tmp_path, method, task, allowed):
    spec = write_spec(tmp_path, f"name: s\ngrid: {{task: [{task}], method: [{method}]}}\n"
                                "base: {teacher_name_or_path: t}\n")
    proc = sweep_cli("launch", str(spec), "--dry-run")
    assert proc.returncode == 2 and f"grid.task: '{task}': method '{method}'" in proc.stderr
    assert allowed in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
