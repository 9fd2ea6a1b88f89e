"""Compute nodes without internet: `sweep launch` resolves every model and dataset on the
submitting machine, fetches hub ones into the Hugging Face cache, and the jobs run offline.

Nothing here reaches the hub: the hub library's own cache is filled with a locally built
snapshot (the layout huggingface_hub writes: models--ORG--NAME/snapshots/<sha>/, refs/main), the
launch runs with HF_HUB_OFFLINE=1, and the job loads `from_pretrained("ORG/NAME")` through the
real hub code path, from that cache, offline. Datasets are checked at the boundary function.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, write_spec

from jobs.grid import expand
from jobs.ledger import Ledger
from jobs.spec import load_spec
from quantlib.errors import SpecError

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "quantsweep-test/tiny-bert"

SPEC = """
name: pf
grid:
  task: [sst2]
  method: [fp32]
  model_name_or_path: [{model}]
base:
  data_dir: {data}
  max_seq_length: 16
  finetune_epochs: 1
  max_train_samples: 32
  max_eval_samples: 32
  logging_steps: 1000
resources:
  env: {{HF_HOME: {hf_home}}}
"""


def hub_cache(hf_home, model_dir, repo_id=REPO_ID):
    """A snapshot in the hub cache, laid out as huggingface_hub lays it out."""
    root = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, root / "snapshots" / SHA)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(SHA)
    return root


def saved_model(tmp_path):
    """A directory that passes for a saved model at launch (its config.json)."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def launch(cwd, *args, env=None):
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    full.pop("HF_HOME", None)  # the spec's resources.env sets it
    return subprocess.run([sys.executable, "-m", "jobs.cli", "launch", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=full)


def test_hub_model_from_the_cache_and_the_job_runs_offline(tmp_path, tiny_model, demo_task):
    hf_home = tmp_path / "hf"
    hub_cache(hf_home, tiny_model)
    spec = write_spec(tmp_path, SPEC.format(model=REPO_ID, data=demo_task, hf_home=hf_home))
    proc = launch(tmp_path, str(spec), "--backend", "local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"prefetch [1/1] model {REPO_ID}" in proc.stderr
    assert str(hf_home / "hub") in proc.stderr  # where it was found
    ledger = Ledger(tmp_path / "runs/pf").data["jobs"]
    (entry,) = ledger.values()
    status = json.loads((tmp_path / entry["output_dir"] / "status.json").read_text())
    assert status["state"] == "completed"
    script = (tmp_path / "runs/pf/scripts/local_array_1.sh").read_text()  # its one job
    assert "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1" in script
    assert f"export HF_HOME={hf_home}" in script
    log = (tmp_path / entry["log"]).read_text()
    assert "Traceback" not in log


def test_typo_in_a_hub_id_stops_the_launch_before_any_job(tmp_path, tiny_model, demo_task):
    hf_home = tmp_path / "hf"
    hub_cache(hf_home, tiny_model)
    spec = write_spec(tmp_path, SPEC.format(model="quantsweep-test/tiny-bret", data=demo_task,
                                            hf_home=hf_home))
    proc = launch(tmp_path, str(spec), "--backend", "local")
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"sweep: error: {spec}: grid.model_name_or_path: model "
                            "'quantsweep-test/tiny-bret' not in the Hugging Face cache"), error
    assert "(job " in error and "task=sst2" in error
    assert not (tmp_path / "runs/pf/logs").exists()  # nothing ran


@pytest.mark.parametrize("change, key, fragment", [
    ({"model": "runs/demo-assets/model"}, "grid.model_name_or_path",
     "'runs/demo-assets/model' is not a directory here"),
    ({"data": "glue_data/SST-2"}, "base.data_dir", "'glue_data/SST-2' no such directory"),
    ({"data": "EMPTY"}, "base.data_dir", "holds no train.tsv, dev.tsv"),
    ({"model": "EMPTY"}, "grid.model_name_or_path", "holds no config.json"),
    ({"model": "not a hub id!"}, "grid.model_name_or_path", "neither a local directory"),
])
def test_unresolvable_inputs_are_one_line_errors(tmp_path, tiny_model, demo_task, change, key,
                                                 fragment):
    (tmp_path / "EMPTY").mkdir()
    values = {"model": str(tiny_model), "data": str(demo_task), "hf_home": tmp_path / "hf",
              **change}
    spec = write_spec(tmp_path, SPEC.format(**values))
    proc = launch(tmp_path, str(spec), "--backend", "local")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sweep: error: {spec}: {key}: "), lines
    assert fragment in lines[0]
    # --no-prefetch keeps the old behaviour: nothing is resolved at launch
    dry = launch(tmp_path, str(spec), "--backend", "lsf", "--dry-run", "--no-prefetch")
    assert dry.returncode == 0, dry.stderr
    assert "HF_HUB_OFFLINE" not in (tmp_path / "runs/pf/scripts/lsf_array_1.sh").read_text()


def test_datasets_are_fetched_once_per_dataset(tmp_path, monkeypatch):
    """Three MRPC jobs and one RTE job from the hub: load_dataset is called once per (dataset,
    config), with the hub names the jobs will use."""
    import datasets

    from jobs import prefetch

    calls = []

    class Split:
        cache_files = [{"filename": str(tmp_path / "cache" / "glue-train.arrow")}]

    def fake_load(name, config=None):
        calls.append((name, config))
        return {"train": Split()}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    model = saved_model(tmp_path)
    spec = write_spec(tmp_path, f"name: ds\ngrid: {{task: [mrpc, rte], method: [fp32], seed: "
                                f"[1, 2, 3]}}\nbase: {{model_name_or_path: {model}}}\n")
    loaded = load_spec(spec)
    needs = prefetch.prefetch(loaded, expand(loaded))
    assert calls == [("nyu-mll/glue", "mrpc"), ("nyu-mll/glue", "rte")]
    assert [n.kind for n in needs] == ["dataset", "dataset"]


def test_dataset_failure_names_the_key(tmp_path, monkeypatch):
    import datasets

    from jobs import prefetch

    class DatasetNotFoundError(Exception):
        pass

    def fake_load(name, config=None):
        raise DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    model = saved_model(tmp_path)
    spec = write_spec(tmp_path, f"name: ds\ngrid: {{task: [rte], method: [fp32]}}\nbase: "
                                f"{{model_name_or_path: {model}, dataset_name: nyu-mll/glu}}\n")
    loaded = load_spec(spec)
    with pytest.raises(SpecError, match=r"base.dataset_name: dataset 'nyu-mll/glu \(rte\)' not "
                                        r"found on the Hugging Face hub"):
        prefetch.prefetch(loaded, expand(loaded))


def test_launch_commands_do_not_import_the_hub_libraries_without_need(tmp_path):
    """A dry run never prefetches, and prefetch imports nothing heavy at import time."""
    code = ("import sys; import jobs.prefetch, jobs.launch; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_hub_tokenizer_is_fetched_without_weights(tmp_path, monkeypatch):
    import huggingface_hub

    from jobs import prefetch

    calls = []

    def fake_snapshot(repo, allow_patterns=None, **kw):
        calls.append((repo, allow_patterns))
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model = saved_model(tmp_path)
    data = tmp_path / "SST-2"
    data.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_text("sentence\tlabel\na\t1\n")
    spec = write_spec(tmp_path, f"name: t\ngrid: {{task: [sst2], method: [fp32], seed: [1, 2]}}\n"
                                f"base: {{model_name_or_path: {model}, data_dir: {data}, "
                                f"tokenizer_name: org/tok}}\n")
    loaded = load_spec(spec)
    needs = prefetch.prefetch(loaded, expand(loaded))
    assert [(n.kind, n.name, n.key) for n in needs] == [("tokenizer", "org/tok",
                                                         "base.tokenizer_name")]
    assert calls == [("org/tok", prefetch.TOKENIZER_FILES)]
