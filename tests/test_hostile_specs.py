"""Hostile and malformed specs: no value ever runs as code in a rendered script (every script of
every backend passes `bash -n` and, executed, runs only the entry point), control characters are
refused, YAML bombs / duplicate keys / other encodings / base-60 numbers are one-line errors in
bounded time, and values that make no sense are refused before anything is written."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from conftest import sweep_cli, write_spec

PAYLOADS = ["$(touch PWNED)", "`touch PWNED`", "'; touch PWNED; '", '"; touch PWNED; "',
            "x && touch PWNED", "a\\", "#BSUB -q evil", "--wrap=touch PWNED", "{name}$HOME"]


def fake_python(tmp_path):
    """An interpreter that records how it was called and what the script exported."""
    path = tmp_path / "fakepy"
    path.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$FAKE_OUT"\nenv >> "$FAKE_OUT"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def spec_text(payload: str, python: str) -> str:
    quoted = payload.replace("\\", "\\\\").replace('"', '\\"')
    return f"""
name: hostile
grid:
  task: [mrpc]
  method: [fp32]
  model_name_or_path: ["{quoted}", "m/{quoted}"]
include:
  - {{task: mrpc, method: lin, nbits: 4, tokenizer_name: "{quoted}"}}
base:
  data_dir: "{quoted}"
resources:
  project: "p-1"
  env: {{HF_HOME: "{quoted}", OTHER: "{quoted}"}}
  python: {python}
  lsf: {{warn_minutes: 2}}
"""


@pytest.mark.parametrize("payload", PAYLOADS)
def test_no_value_runs_as_code_in_any_script(tmp_path, payload):
    python = fake_python(tmp_path)
    spec = write_spec(tmp_path, spec_text(payload, str(python)), name="spec $(touch PWNED).yaml")
    for backend in ("local", "lsf", "slurm"):
        proc = sweep_cli("launch", str(spec), "--backend", backend, "--dry-run",
                         "--sweep-dir", "runs/sweep $(touch PWNED)", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    scripts = sorted((tmp_path / "runs" / "sweep $(touch PWNED)" / "scripts").glob("*.sh"))
    assert len(scripts) == 3  # a local, an LSF and a SLURM array
    for script in scripts:
        text = script.read_text()
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, (script.name, check.stderr)
        directives = [line for line in text.splitlines() if line.startswith(("#BSUB", "#SBATCH"))]
        assert not any("evil" in d or "--wrap" in d for d in directives), directives
        out = tmp_path / f"{script.name}.out"
        for index in ("1", "0"):  # LSF numbers array elements from 1, SLURM from 0
            env = {**os.environ, "FAKE_OUT": str(out), "LSB_JOBINDEX": index,
                   "SLURM_ARRAY_TASK_ID": index, "QUANTSWEEP_TASK": index}
            run = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=60)
            if run.returncode == 0:
                break
        assert run.returncode == 0, (script.name, run.stderr)
        called = out.read_text().splitlines()
        assert called[:2] == ["-m", "jobs.runtime"], called[:3]
        assert f"HF_HOME={payload}" in called and f"OTHER={payload}" in called
        assert "HF_HUB_OFFLINE=1" in called
    assert not list(tmp_path.rglob("PWNED")), "a payload ran"


CONTROL = ["a\nb", "a\rb", "a\x1bb", "a\x00b", "a\u2028b", "a\x85b", "a\tb"]


@pytest.mark.parametrize("where", ["grid", "include", "base", "queue", "project", "env", "setup",
                                   "output_dir", "sweep_dir", "stage", "lsf_extra", "account"])
@pytest.mark.parametrize("char", CONTROL, ids=[repr(c) for c in CONTROL])
def test_control_characters_are_refused_everywhere(tmp_path, where, char):
    v = char.encode("unicode_escape").decode().replace("\\x85", "\\x85")
    value = f'"{v}"'
    body = {
        "grid": f"grid: {{task: [mrpc], method: [fp32], data_dir: [{value}]}}\n",
        "include": f"grid: {{task: [mrpc], method: [fp32]}}\ninclude:\n  - {{task: mrpc, method: "
                   f"fp32, seed: 3, data_dir: {value}}}\n",
        "base": f"grid: {{task: [mrpc], method: [fp32]}}\nbase: {{model_name_or_path: {value}}}\n",
        "queue": f"grid: {{task: [mrpc], method: [fp32]}}\nresources: {{queue: {value}}}\n",
        "project": f"grid: {{task: [mrpc], method: [fp32]}}\nresources: {{project: {value}}}\n",
        "env": f"grid: {{task: [mrpc], method: [fp32]}}\nresources: {{env: {{A: {value}}}}}\n",
        "setup": f"grid: {{task: [mrpc], method: [fp32]}}\nresources: {{setup: [{value}]}}\n",
        "output_dir": f"grid: {{task: [mrpc], method: [fp32]}}\noutput_dir: {value}\n",
        "sweep_dir": f"grid: {{task: [mrpc], method: [fp32]}}\nsweep_dir: {value}\n",
        "stage": f"stages:\n  - name: {value}\n    grid: {{task: [mrpc], method: [fp32]}}\n",
        "lsf_extra": f"grid: {{task: [mrpc], method: [fp32]}}\nresources: {{lsf: {{extra: "
                     f"[{value}]}}}}\n",
        "account": f"grid: {{task: [mrpc], method: [fp32]}}\nresources: {{slurm: {{account: "
                   f"{value}}}}}\n",
    }[where]
    spec = write_spec(tmp_path, "name: c\n" + body)
    proc = sweep_cli("launch", str(spec), "--backend", "lsf", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2, (body, proc.stdout)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sweep: error: {spec}: "), lines
    assert not (tmp_path / "runs").exists()


def test_control_characters_in_paths_given_on_the_command_line(tmp_path):
    spec = write_spec(tmp_path, "name: c\ngrid: {task: [mrpc], method: [fp32]}\n")
    proc = sweep_cli("launch", str(spec), "--dry-run", "--sweep-dir", "runs/a\nb", cwd=tmp_path)
    assert proc.returncode == 2 and "control character" in proc.stderr
    bad = write_spec(tmp_path, "name: c\ngrid: {task: [mrpc], method: [fp32]}\n",
                     name="spec\n#BSUB -q x.yaml")
    proc = sweep_cli("launch", str(bad), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "control character" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for i in range(1, levels):
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    grid = f"grid: {{task: [mrpc], method: [fp32], seed: *{prev}}}"
    return "\n".join(lines) + f"\nname: bomb\n{grid}\n"


@pytest.mark.parametrize("content, fragment", [
    (billion_laughs().encode(), "aliases are expanded"),
    (b"name: a\nname: b\ngrid: {task: [mrpc], method: [fp32]}\n", "duplicate key 'name'"),
    (b"name: a\ngrid: {task: [mrpc], task: [rte], method: [fp32]}\n", "duplicate key 'task'"),
    ("name: a\ngrid: {task: [mrpc], method: [fp32]}\n".encode("utf-16"), "UTF-16"),
    (b"name: a\xe9\ngrid: {task: [mrpc], method: [fp32]}\n", "not UTF-8"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nresources: {time: 4:00:00}\n",
     "resources.time: unquoted 4:00:00 is a base-60 number"),
    (b"name: a\ngrid: &g {task: [mrpc], method: [fp32], x: *g}\n", "recursive alias"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32], seed: [" + b"9" * 5000 + b"]}\n",
     "cannot convert"),
    (b"name: a\n---\nname: b\n", "several YAML documents"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nbase: {learning_rate: .nan}\n",
     "base.learning_rate: nan is not a finite number"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nbase: {learning_rate: .inf}\n",
     "not a finite number"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nbase: {learning_rate: nan}\n",
     "base.learning_rate: nan is not a finite number"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nbase: {learning_rate: 1e999}\n",
     "not a finite number"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nresources: {mem: 0}\n", "above 0"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nresources: {mem: -5GB}\n", "above 0"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nresources: {mem: 0GB}\n", "above 0"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\noutput_dir: /tmp/{task}\n",
     "leaves the sweep directory"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\noutput_dir: ../../{task}\n",
     "leaves the sweep directory"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\noutput_dir: '{task:>999999999}'\n",
     "no format spec"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nsweep_dir: 'runs/{name:>99999999}'\n",
     "only the placeholder {name}"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nresources: {queue: 'a b'}\n",
     "not a scheduler name"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\nresources: {env: {'A-B': 1}}\n",
     "not a variable name"),
    (b"name: a\ngrid: {task: [mrpc, rte], method: [lin, p2, mb], nbits: 1..8, seed: 1..3000}\n",
     "over the limit of 100,000"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32], seed: 1..5}\nmax_jobs: 4\n",
     "over the limit of 4"),
    (b"name: a\ngrid: {task: [mrpc], method: [fp32]}\n1: x\n", "not a string"),
])
def test_malformed_specs_are_one_line_errors(tmp_path, monkeypatch, capsys, content, fragment):
    """In-process (the CLI's main, as `sweep` runs it): one line, exit 2, for each."""
    from jobs.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    monkeypatch.chdir(tmp_path)
    rc = main(["launch", str(spec), "--backend", "lsf", "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 2, captured.out[:500]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sweep: error: {spec}"), lines
    assert fragment in lines[0], lines[0]
    assert len(lines[0]) < 600
    assert not (tmp_path / "runs").exists()


def test_quoted_times_and_the_job_limit_override(tmp_path):
    spec = write_spec(tmp_path, "name: a\ngrid: {task: [mrpc], method: [fp32], seed: 1..5}\n"
                                "max_jobs: 4\nresources: {time: '4:00:00'}\n")
    proc = sweep_cli("launch", str(spec), "--backend", "lsf", "--dry-run", "--max-jobs", "5",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "#BSUB -W 4:00" in (tmp_path / "runs/a/scripts/lsf_array_1.sh").read_text()


def test_description_may_span_lines(tmp_path):
    spec = write_spec(tmp_path, "name: a\ndescription: |\n  two\n  lines\n"
                                "grid: {task: [mrpc], method: [fp32]}\n")
    assert sweep_cli("launch", str(spec), "--dry-run", cwd=tmp_path).returncode == 0


def test_piping_into_head_is_quiet(tmp_path):
    spec = write_spec(tmp_path, "name: a\ngrid: {task: [mrpc], method: [lin], nbits: 1..8, "
                                "seed: 1..600}\n")
    from jobs.grid import expand
    from jobs.ledger import Ledger
    from jobs.spec import load_spec

    loaded = load_spec(spec)
    Ledger(tmp_path / "runs/a").register("a", str(spec), expand(loaded))  # 4,800 jobs, missing
    for args in (["launch", str(spec), "--dry-run"], ["status", "runs/a", "--long"]):
        proc = subprocess.run(f"{os.sys.executable} -m jobs.cli {' '.join(args)} | head -1",
                              shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert proc.stderr == "", proc.stderr
        assert proc.stdout.count("\n") == 1
