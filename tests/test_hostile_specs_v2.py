"""Hostile specs, ledgers and --where values, second round: each class of bad input is one line
naming the file, the key and what is allowed (SpecError / UserError, exit status 2), never a
traceback, and nothing is written. All in-process: load_spec / expand / Ledger / parse_where,
and the CLI's main() where the exit status and stderr are the point."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from test_spec import STAGED

from jobs.grid import expand
from jobs.spec import Spec, load_spec, parse_spec
from quantlib.errors import MAX_MESSAGE, SpecError, UserError

GRID = "grid: {task: [mrpc], method: [fp32]}\n"


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str, key: str, *fragments: str) -> str:
    """The one-line SpecError that loading and expanding `text` gives; it names the file and
    `key`, holds every fragment, and nothing was written."""
    spec = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        expand(load_spec(spec))
    message = str(info.value)
    assert "\n" not in message and len(message) <= MAX_MESSAGE + 200, message[:300]
    assert message.startswith(f"{spec}: {key}: "), message[:300]
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "runs").exists()
    return message


def accepted(tmp_path: Path, text: str) -> Spec:
    spec = load_spec(write(tmp_path, text))
    expand(spec)
    return spec


def cli(tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[int, list[str], str]:
    """`sweep ARGS` in this process, from tmp_path: (exit status, stderr lines, stdout)."""
    from jobs.cli import main

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, err.strip().splitlines(), out


# sections 1, 2, 5 and resources.python (the resources section): tests/test_resources.py;
# 13 (ledgers that are not ours): tests/test_ledger.py

# --- 3. % in the sweep directory (it reaches #BSUB -o, #SBATCH --output) -----------------------

@pytest.mark.parametrize("sweep_dir", ["runs/{name}-%J", "runs/100%", "runs/%j/x", "%A_%a"])
def test_percent_in_sweep_dir_is_refused(tmp_path, sweep_dir):
    refused(tmp_path, f"name: p\n{GRID}sweep_dir: '{sweep_dir}'\n", "sweep_dir", "'%'",
            "LSF and SLURM")


def test_percent_in_the_working_directory_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a%Jb").mkdir()
    spec = write(tmp_path, f"name: p\n{GRID}")
    monkeypatch.chdir(tmp_path / "a%Jb")
    with pytest.raises(SpecError, match="working directory, which holds '%'"):
        load_spec(spec)
    assert not (tmp_path / "a%Jb" / "runs").exists()


def test_sweep_dir_given_on_the_command_line_is_checked(tmp_path, monkeypatch, capsys):
    spec = load_spec(write(tmp_path, f"name: p\n{GRID}"))
    with pytest.raises(UserError, match="holds '%'"):
        spec.sweep_dir = "runs/%j"
    rc, err, _ = cli(tmp_path, monkeypatch, capsys, "launch", str(tmp_path / "spec.yaml"),
                  "--dry-run", "--backend", "slurm", "--sweep-dir", "out/%A")
    assert rc == 2 and len(err) == 1 and "'%'" in err[0], err
    assert not (tmp_path / "out").exists()


# --- 4. output_dir ---------------------------------------------------------------------------

@pytest.mark.parametrize("output_dir", [".", "./", "./.", "scripts", "configs/{task}", "logs",
                                        "snapshots/{task}_{method}", "submitit/x", "ledger.json",
                                        ".launch.lock", "./logs/{task}"])
def test_output_dir_may_not_be_the_sweeps_own_files(tmp_path, output_dir):
    refused(tmp_path, f"name: o\n{GRID}output_dir: '{output_dir}'\n", "output_dir",
            "sweep")


def test_output_dir_rendered_onto_the_sweeps_own_files(tmp_path):
    refused(tmp_path, "name: o\ngrid: {task: [mrpc], method: [fp32], model_name_or_path: [m, "
                      "logs]}\noutput_dir: '{model_name_or_path}'\n", "output_dir",
            "model_name_or_path=logs", "one of the sweep's own files")


def test_output_dir_component_over_255_bytes(tmp_path):
    refused(tmp_path, f"name: o\n{GRID}output_dir: '{{task}}_{'é' * 128}'\n", "output_dir",
            "258 bytes", "at most 255")
    # each placeholder's value is cut to 80 characters (grid._safe): four of them make 320
    refused(tmp_path, f"name: o\ngrid: {{task: [mrpc], method: [fp32], model_name_or_path: "
                      f"[{'m' * 100}]}}\noutput_dir: '{'{model_name_or_path}' * 4}'\n",
            "output_dir", "320 bytes", "at most 255")


def test_output_dir_values_stay_inside_the_sweep(tmp_path):
    spec = accepted(tmp_path, "name: o\ngrid: {task: [mrpc], method: [fp32], "
                              "model_name_or_path: ['../..', '/etc', '.']}\n"
                              "output_dir: '{model_name_or_path}/{task}'\n")
    sweep = Path(spec.sweep_dir).absolute()
    for job in expand(spec):
        assert job.output_dir.is_relative_to(sweep) and ".." not in job.output_dir.parts


# --- 6. excludes -------------------------------------------------------------------------------

def test_an_exclude_that_removes_every_job_is_refused(tmp_path):
    refused(tmp_path, f"name: x\n{GRID}exclude: [{{method: fp32}}]\n", "exclude",
            "removes every job", "nothing would run")
    spec = accepted(tmp_path, f"name: x\n{GRID}exclude: [{{method: fp32}}]\n"
                              "include: [{task: rte, method: fp32}]\n")
    assert [j.config["task"] for j in expand(spec)] == ["rte"]


STAGES = STAGED.lstrip()  # two stages: fp32 per seed, then ptq per quant mode


def test_later_stage_excludes_match_some_job_and_leave_some(tmp_path):
    refused(tmp_path, STAGES + "    exclude: [{seed: 3}]\n", "stages[1].exclude[0]",
            "matches no job")
    refused(tmp_path, STAGES + "    exclude: [{method: ptq}]\n", "stages[1].exclude",
            "removes every job of the stage")
    jobs = expand(accepted(tmp_path, STAGES + "    exclude: [{seed: 1, quant_mode: ft1}]\n"))
    assert len([j for j in jobs if j.stage == "q"]) == 3  # one parent's job only


# --- 7. YAML 1.1 octal, hexadecimal, binary ---------------------------------------------------

@pytest.mark.parametrize("value, fragment", [
    ("[010]", "octal number in YAML 1.1 (8)"), ("[08]", "a string in YAML 1.1 and 8"),
    ("0x4", "hexadecimal number in YAML 1.1 (4)"), ("[0b11]", "binary number in YAML 1.1 (3)"),
    ("[-010]", "octal"), ("[00]", "octal"), ("[0" + "7" * 5000 + "]", "another base")],
    ids=lambda v: v[:12])
def test_other_base_integers_are_refused(tmp_path, value, fragment):
    key = "grid.nbits[0]" if value.startswith("[") else "grid.nbits"
    refused(tmp_path, f"name: n\ngrid: {{task: [mrpc], method: [lin], nbits: {value}}}\n",
            key, fragment, "quote it")


def test_decimal_and_quoted_integers_are_read_as_written(tmp_path):
    spec = accepted(tmp_path, "name: n\ngrid: {task: [mrpc], method: [lin], nbits: [4, 1]}\n"
                              "base: {seed: 0}\nfinetune_sharing: false\n")
    assert [j.config["nbits"] for j in expand(spec)] == [4, 1]
    spec = accepted(tmp_path, f"name: n\n{GRID}base: {{model_name_or_path: '010'}}\n")
    assert spec.base["model_name_or_path"] == "010"


# --- 8. error messages are capped -------------------------------------------------------------

@pytest.mark.parametrize("raw, key", [
    ({"name": "a" * 900_000, "grid": {"task": ["mrpc"], "method": ["fp32"]}}, "name"),
    ({"name": "a", "grid": {"task": ["mrpc"], "method": ["fp32"], "k" * 900_000: [1]}},
     "grid.kkk"),
    ({"name": "a", "grid": {"task": ["mrpc"], "method": ["fp32"]}, "k" * 900_000: 1}, "kkk"),
    ({"name": "a", "grid": {"task": ["mrpc"], "method": ["fp32"]},
      "resources": {"queue": "q" * 900_000}}, "resources.queue"),
    ({"name": "a", "grid": {"task": ["mrpc"], "method": ["fp32"]},
      "resources": {"cpus": ["x" * 1000] * 900}}, "resources.cpus"),
    ({"name": "a", "grid": {"task": ["mrpc"], "method": ["fp32"], "seed": ["x" * 900_000]}},
     "grid.seed"),
])
def test_messages_quote_huge_values_cut(raw, key):
    with pytest.raises(SpecError) as info:
        expand(parse_spec(raw, "big.yaml"))
    message = str(info.value)
    assert message.startswith(f"big.yaml: {key}") and len(message) <= MAX_MESSAGE, (
        len(message), message[:200])
    assert "…" in message


def test_a_huge_value_in_a_file_is_one_short_line(tmp_path, monkeypatch, capsys):
    write(tmp_path, f"name: '{'a' * 900_000}'\n{GRID}")
    rc, err, _ = cli(tmp_path, monkeypatch, capsys, "launch", "spec.yaml", "--dry-run")
    assert rc == 2 and len(err) == 1 and len(err[0]) < MAX_MESSAGE + 100, len(err[0])


def test_every_user_error_is_capped():
    assert len(str(UserError("x" * 10**6))) <= MAX_MESSAGE
    error = SpecError("f.yaml", "k" * 10**6, "m" * 10**6 + " allowed: a, b")
    assert len(str(error)) <= MAX_MESSAGE + 250 and str(error).endswith("allowed: a, b")


# --- 9. ranges are counted, never materialised ------------------------------------------------

def test_a_range_beyond_64_bits_is_refused(tmp_path):
    refused(tmp_path, f"name: r\n{GRID[:-2]}, seed: 0..99999999999999999999}}\n", "grid.seed",
            "out of range")
    refused(tmp_path, f"name: r\n{GRID[:-2]}, seed: '0..{'9' * 5000}'}}\n", "grid.seed",
            "bad range")


@pytest.mark.parametrize("axes, count", [
    ("seed: 0..9223372036854775806", "9,223,372,036,854,775,807"),
    ("seed: 0..9223372036854775806, nbits: 1..9223372036854775806, "
     "max_seq_length: 1..9223372036854775806", "10^30 or more"),
    ("seed: 1..200000", "200,000"),
])
def test_huge_ranges_get_the_job_limit_refusal(tmp_path, axes, count):
    refused(tmp_path, f"name: r\ngrid: {{task: [mrpc], method: [fp32], {axes}}}\n", "grid",
            f"expands to up to {count} jobs, over the limit of 100,000")


def test_huge_zipped_ranges_are_counted(tmp_path):
    refused(tmp_path, "name: r\ngrid: {task: [mrpc], method: [fp32]}\nzip: [{seed: "
                      "0..9223372036854775806, max_seq_length: 1..9223372036854775807}]\n",
            "grid", "over the limit")
    refused(tmp_path, "name: r\ngrid: {task: [mrpc], method: [fp32]}\nzip: [{seed: "
                      "0..9223372036854775806, max_seq_length: 1..3}]\n", "zip[0]",
            "seed=9223372036854775807, max_seq_length=3")


def test_small_ranges_expand_in_order(tmp_path):
    spec = accepted(tmp_path, "name: r\ngrid: {task: [mrpc], method: [lin], nbits: [1..2, 5, "
                              "7..8]}\nzip: [{seed: 1..2, learning_rate: [1.0e-5, 2.0e-5]}]\n"
                              "finetune_sharing: false\n")
    jobs = expand(spec)
    assert [(j.config["nbits"], j.config["seed"]) for j in jobs][:4] == [
        (1, 1), (1, 2), (2, 1), (2, 2)]
    assert sorted({j.config["nbits"] for j in jobs}) == [1, 2, 5, 7, 8] and len(jobs) == 10


# --- 10. long and undecodable paths -----------------------------------------------------------

def test_sweep_dir_components_and_length(tmp_path):
    refused(tmp_path, f"name: l\n{GRID}sweep_dir: runs/{'x' * 256}\n", "sweep_dir",
            "256 bytes", "at most 255")
    refused(tmp_path, f"name: l\n{GRID}sweep_dir: runs/{'é' * 128}\n", "sweep_dir",
            "256 bytes")
    refused(tmp_path, f"name: l\n{GRID}sweep_dir: {'/'.join(['x' * 250] * 16)}\n", "sweep_dir",
            "as an absolute path; at most 3584")


def test_undecodable_spec_path(tmp_path, monkeypatch, capsys):
    raw = os.fsencode(tmp_path) + b"/spec\xff.yaml"
    with open(raw, "w", encoding="utf-8") as fh:
        fh.write(f"name: u\n{GRID}")
    path = os.fsdecode(raw)
    with pytest.raises(SpecError, match="undecodable byte"):
        load_spec(path)
    rc, err, _ = cli(tmp_path, monkeypatch, capsys, "launch", path, "--dry-run")
    assert rc == 2 and len(err) == 1 and "undecodable byte" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_undecodable_sweep_dir(tmp_path, monkeypatch):
    refused(tmp_path, f'name: u\n{GRID}sweep_dir: "runs/\\udcff"\n', "sweep_dir",
            "lone surrogate")
    raw = os.fsencode(tmp_path) + b"/d\xff"
    os.mkdir(raw)
    spec = write(tmp_path, f"name: u\n{GRID}")
    monkeypatch.chdir(os.fsdecode(raw))
    with pytest.raises(SpecError, match="working directory, which holds an undecodable byte"):
        load_spec(spec)
    assert os.listdir(raw) == []


# --- 11. only regular files are read as specs -------------------------------------------------

def _load_soon(path: str) -> BaseException | None:
    """load_spec(path) in a thread that must end within 10 s (a FIFO used to block forever)."""
    out: list[BaseException | None] = [None]

    def run() -> None:
        try:
            load_spec(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out[0] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "load_spec blocked"
    return out[0]


def test_a_fifo_as_spec_is_refused_at_once(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    exc = _load_soon(str(fifo))
    assert isinstance(exc, SpecError) and "a FIFO, not a regular file" in str(exc), exc


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_as_spec_is_refused(tmp_path):
    exc = _load_soon("/dev/zero")
    assert isinstance(exc, SpecError) and "device" in str(exc), exc


def test_a_directory_or_an_oversized_file_as_spec(tmp_path):
    exc = _load_soon(str(tmp_path))
    assert isinstance(exc, SpecError) and "a directory" in str(exc), exc
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    exc = _load_soon(str(big))
    assert isinstance(exc, SpecError) and "at most" in str(exc), exc


# --- 12. sweep cancel --where with values YAML cannot read ------------------------------------

@pytest.mark.parametrize("text", ["[x", "*a", "!!python/name:os.system", '"', "'", "{", "&a",
                                  "!custom x", "a: b: c", "- x\n-", "9" * 5000, "[[[[[[[[[["])
def test_where_values_yaml_cannot_read_are_literal(text):
    from jobs.running import parse_where

    assert parse_where([f"task={text}"], [{"task": "mrpc"}]) == [("task", text)]


def test_where_values_read_as_typed():
    from jobs.running import parse_where

    got = parse_where(["seed=3", "fp16=true", "time=4:00", "nbits=010"], [{"time": 1}])
    assert got == [("seed", 3), ("fp16", True), ("time", "4:00"), ("nbits", "010")]
    assert all(type(v) in (int, bool, str) for _, v in got)


def test_cancel_where_unreadable_value_is_no_traceback(tmp_path, monkeypatch, capsys):
    from jobs.ledger import Ledger

    spec = write(tmp_path, f"name: w\n{GRID}")
    Ledger(tmp_path / "runs/w").register("w", str(spec), expand(load_spec(spec)))
    rc, err, out = cli(tmp_path, monkeypatch, capsys, "cancel", "runs/w", "--where", "task=[x")
    assert rc == 0 and err == [] and "cancelled 0 jobs" in out, (err, out)
