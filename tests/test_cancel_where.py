"""`sweep cancel --where KEY=VALUE`: values compare as typed (200 = 200.0, true = True), and a
key that no job has is a one-line error with exit status 2."""

from __future__ import annotations

import pytest
from conftest import sweep_cli, write_spec

from jobs.grid import expand, matches
from jobs.ledger import Ledger
from jobs.running import parse_where
from jobs.spec import load_spec
from quantlib.errors import UserError

CONFIG = {"task": "mrpc", "method": "fp32", "finetune_epochs": 200.0, "fp16": True, "seed": 3}


@pytest.mark.parametrize("where, hit", [
    (["finetune_epochs=200"], True), (["finetune_epochs=200.0"], True),
    (["finetune_epochs=20"], False), (["fp16=true"], True), (["fp16=True"], True),
    (["fp16=false"], False), (["task=mrpc", "seed=3"], True), (["task=mrpc", "seed=4"], False),
    (["task=rte"], False), (["learning_rate=2e-5"], False),  # not in this job's config
])
def test_typed_matches(where, hit):
    assert matches(dict(parse_where(where, [CONFIG])), CONFIG) is hit


@pytest.mark.parametrize("where, fragment", [
    (["finetune_epoch=200"], "unknown key 'finetune_epoch' (did you mean 'finetune_epochs'?)"),
    (["task"], "write KEY=VALUE"), (["=mrpc"], "write KEY=VALUE"),
])
def test_bad_conditions(where, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        parse_where(where, [CONFIG])


def test_cli_unknown_key_is_exit_2(tmp_path):
    spec = write_spec(tmp_path, "name: w\ngrid: {task: [mrpc], method: [fp32]}\n")
    loaded = load_spec(spec)
    Ledger(tmp_path / "runs/w").register("w", str(spec), expand(loaded))
    proc = sweep_cli("cancel", "runs/w", "--where", "sede=3", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sweep: error: --where sede=3: unknown key 'sede' (did you mean 'seed'?); give a "
        "trainer argument, e.g. task=mrpc"]
    ok = sweep_cli("cancel", "runs/w", "--where", "seed=3", cwd=tmp_path)
    assert ok.returncode == 0 and "cancelled 0 jobs: none is pending or running" in ok.stdout
