"""A sweep directory is new, empty, or this sweep's: `--sweep-dir` into a directory of the
user's files, or into another sweep's, is one line and exit 2, and nothing there is written or
overwritten (the first launch into a directory used to overwrite its scripts/*.sh)."""

from __future__ import annotations

import json

from conftest import write_spec
from sweepfiles import sweep_configs

SPEC = "name: {name}\ngrid: {{task: [rte], method: [fp32], seed: [1, 2]}}\n"


def launch(monkeypatch, tmp_path, capsys, *args: str) -> tuple[int, str]:
    from jobs.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["launch", *args])
    captured = capsys.readouterr()
    return rc, captured.err


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_directory_of_the_users_files_is_refused(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "thesis"
    (mine / "scripts").mkdir(parents=True)
    (mine / "scripts" / "plot.sh").write_text("my script\n")
    (mine / "notes.txt").write_text("my notes\n")
    before = snapshot(mine)
    spec = write_spec(tmp_path, SPEC.format(name="a"))
    rc, err = launch(monkeypatch, tmp_path, capsys, str(spec), "--dry-run", "--sweep-dir",
                     str(mine))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "is not empty and is no sweep's" in err and "'notes.txt'" in err
    assert snapshot(mine) == before  # nothing written, nothing overwritten


def test_another_sweeps_directory_is_refused_and_its_own_is_fine(tmp_path, monkeypatch,
                                                                  capsys):
    first = write_spec(tmp_path, SPEC.format(name="first"), "first.yaml")
    second = write_spec(tmp_path, SPEC.format(name="second"), "second.yaml")
    sweep = tmp_path / "shared"
    sweep.mkdir()
    (sweep / "ledger.json").write_text(json.dumps({"sweep": "first", "jobs": {}}))
    before = snapshot(sweep)
    rc, err = launch(monkeypatch, tmp_path, capsys, str(second), "--dry-run", "--sweep-dir",
                     str(sweep))
    assert rc == 2 and "holds the ledger of sweep 'first', not of sweep 'second'" in err
    assert snapshot(sweep) == before
    rc, err = launch(monkeypatch, tmp_path, capsys, str(first), "--dry-run", "--sweep-dir",
                     str(sweep))
    assert rc == 0, err  # its own: fine
    # a dry run's files and the sweep's job directories (its ledger gone) are the sweep's too
    (sweep / "ledger.json").unlink()
    config = next(iter(sweep_configs(sweep).values()))
    (tmp_path / config["output_dir"]).mkdir(parents=True)
    rc, err = launch(monkeypatch, tmp_path, capsys, str(first), "--dry-run", "--sweep-dir",
                     str(sweep))
    assert rc == 0, err
