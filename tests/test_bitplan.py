"""Mixed-precision planning: the sensitivity study read from results, its sheet, and the
allocator (exact under the additive model, checked against brute force on made-up
sensitivities with a known optimum), through `sweep plan-bits`."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import openpyxl
import pytest
from conftest import sweep_cli

from analysis.bitplan import Option, allocate, greedy

GROUPS = [("*layer.0.attention.*",), ("*layer.0.intermediate.*", "*layer.0.output.*"),
          ("*layer.1.attention.*",), ("*layer.1.intermediate.*", "*layer.1.output.*")]


def brute_force(options, need):
    best = None
    for combo in itertools.product(*options.values()):
        saved = sum(o.saved for o in combo)
        delta = sum(o.delta for o in combo)
        if saved >= need - 1e-9 and (best is None or delta > best[0] + 1e-12):
            best = (delta, saved)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_the_allocator_finds_the_brute_force_optimum(seed):
    rng = random.Random(seed)
    options = {}
    for g in range(rng.randint(2, 6)):
        size = rng.uniform(0.5, 5.0)  # the group's FP32 MB
        opts = [Option(None, 0.0, 0.0)]
        for b in (8, 4, 3, 2):
            loss = rng.uniform(0, 0.02) * (9 - b) ** rng.uniform(1, 2.5)
            opts.append(Option(b, -loss + rng.uniform(-0.002, 0.002), size * (1 - b / 32)))
        options[(f"g{g}",)] = opts
    most = sum(max(o.saved for o in opts) for opts in options.values())
    need = rng.uniform(0.1, 1.0) * most
    plan = allocate(options, need)
    want = brute_force(options, need)
    assert plan is not None and want is not None
    assert plan.delta == pytest.approx(want[0], abs=1e-12) and plan.saved >= need - 1e-9
    g = greedy(options, need)
    assert g is not None and g.saved >= need - 1e-9 and g.delta <= plan.delta + 1e-12
    assert allocate(options, most + 1e-3) is None


def test_a_known_optimum_greedy_misses():
    """Two groups of 1 MB saved at 2 bits each; A loses little per MB but only at 2 bits, B
    loses less in total for what the budget needs: the exact plan takes B alone."""
    options = {("A",): [Option(None, 0, 0), Option(4, -0.001, 0.5), Option(2, -0.030, 1.0)],
               ("B",): [Option(None, 0, 0), Option(2, -0.010, 0.9)]}
    plan = allocate(options, 0.9)
    assert plan.choice == {("A",): None, ("B",): 2} and plan.delta == pytest.approx(-0.010)
    g = greedy(options, 0.9)  # A to 4 bits first (0.002 / MB), then A to 2 bits (0.058 / MB)
    assert g.delta < plan.delta


def write_job(root: Path, name: str, config: dict, results: dict) -> None:
    out = root / "jobs" / name
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({**config, "sweep": "sens"}))
    (out / "status.json").write_text(json.dumps({"state": "completed"}))
    (out / "eval_results.json").write_text(json.dumps(results))


# made-up sensitivities: group -> bits -> accuracy change; each group 0.1 MB in FP32
DELTAS = {GROUPS[0]: {2: -0.004, 3: -0.001, 4: 0.0}, GROUPS[1]: {2: -0.060, 3: -0.010, 4: -0.002},
          GROUPS[2]: {2: -0.002, 3: 0.0, 4: 0.0}, GROUPS[3]: {2: -0.030, 3: -0.020, 4: -0.001}}
FP32_MB, GROUP_MB = 1.0, 0.1


SPEC = """
name: sens
grid:
  task: [sst2]
  method: [gptq]
  nbits: [2, 3, 4]
  quantize_modules: [["*layer.0.attention.*"], ["*layer.1.attention.*"]]
base:
  data_dir: data/SST-2-hard
  model_name_or_path: runs/demo-assets/model
  learning_rate: 1.0e-3
  finetune_epochs: 20
resources: {gpus: 1, cpus: 4}
"""


@pytest.fixture
def study_dir(tmp_path):
    root = tmp_path / "runs" / "sens"
    # the results hold the launcher's absolute paths; the spec copy its own
    base = {"task": "sst2", "data_dir": "/abs/data/SST-2-hard", "learning_rate": 1e-3,
            "model_name_or_path": "/abs/runs/demo-assets/model", "finetune_epochs": 20.0}
    for seed in (1, 2):
        write_job(root, f"fp32-{seed}", {**base, "method": "fp32", "seed": seed},
                  {"eval_accuracy": 0.80 + seed * 0.01, "fp32_size_mb": FP32_MB,
                   "model_size_mb": FP32_MB, "eval_pred_classes": 2})
        for i, g in enumerate(GROUPS):
            for b, d in DELTAS[g].items():
                size = FP32_MB - GROUP_MB * (1 - b / 32)
                packed = {"model_size_mb": size + 0.004, "model_size_computed_mb": size} \
                    if seed == 2 else {"model_size_mb": size}  # export: onnx: the file's size
                write_job(root, f"g{i}-{b}-{seed}",
                          {**base, "method": "gptq", "nbits": b, "seed": seed,
                           "quantize_modules": list(g), "group_size": 0},
                          {"eval_accuracy": 0.80 + seed * 0.01 + d, "fp32_size_mb": FP32_MB,
                           **packed, "eval_pred_classes": 2})
    # a result tree's hostile entries are not groups
    write_job(root, "odd", {**base, "method": "gptq", "nbits": 2, "seed": 1,
                            "quantize_modules": {"$(x)": 1}}, {"eval_accuracy": 0.1})
    write_job(root, "inject", {**base, "method": "gptq", "nbits": 2, "seed": 1,
                               "quantize_modules": ["*x*\nsweep_dir: /tmp/EVIL\n#"]},
              {"eval_accuracy": 0.8, "fp32_size_mb": FP32_MB, "model_size_mb": 0.5})
    write_job(root, "planned", {**base, "method": "gptq", "nbits": 2, "seed": 1,
                                "quantize_modules": ["*layer.0.*"],
                                "nbits_per_module": {"*layer.0.*": 3}},
              {"eval_accuracy": 0.8, "fp32_size_mb": FP32_MB, "model_size_mb": 0.5})
    (root / "ledger.json").write_text(json.dumps({"sweep": "sens", "spec": "sens.yaml",
                                                  "spec_text": SPEC, "jobs": {}}))
    return root


def test_collect_gives_the_study_its_sheet(study_dir, tmp_path):
    out = tmp_path / "r.xlsx"
    proc = sweep_cli("collect", str(study_dir), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    ws = openpyxl.load_workbook(out)["sensitivity"]
    rows = [[c.value for c in r] for r in ws.iter_rows(max_col=8)]
    assert rows[0][:4] == ["module group", "Δ accuracy at 2 bits", "Δ accuracy at 3 bits",
                           "Δ accuracy at 4 bits"]
    assert [r[0] for r in rows[1:5]] == [", ".join(g) for g in GROUPS]
    for r, g in zip(rows[1:5], GROUPS):
        assert r[1:4] == [pytest.approx(DELTAS[g][b], abs=1e-9) for b in (2, 3, 4)]
        assert r[4] == pytest.approx(GROUP_MB * (1 - 2 / 32))
        assert r[7] == 6  # 3 bit widths x 2 seeds
    (rule,) = [r for rng in ws.conditional_formatting for r in rng.rules]
    assert rule.type == "colorScale"
    assert str(next(iter(ws.conditional_formatting)).sqref) == "B2:D5"
    assert len(ws._charts) == 1


def test_plan_bits_writes_the_planned_spec_and_never_overwrites(study_dir, tmp_path):
    from jobs.grid import expand
    from jobs.spec import load_spec

    out = tmp_path / "planned.yaml"
    # every group at 2 bits: 1 - 4 * 0.09375 = 0.625 MB; 0.97 MB needs 0.03 MB saved
    proc = sweep_cli("plan-bits", str(study_dir), "--budget-mb", "0.97", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    options = {g: [Option(None, 0, 0)] + [Option(b, d, GROUP_MB * (1 - b / 32))
                                          for b, d in DELTAS[g].items()] for g in GROUPS}
    best = brute_force(options, FP32_MB - 0.97)
    assert f"predicted accuracy {best[0]:+.4f}" in proc.stdout
    spec = load_spec(str(out))
    jobs = [j for j in expand(spec) if j.config["method"] == "gptq"]
    assert {j.config["seed"] for j in jobs} == {1, 2}
    config = jobs[0].config
    planned = allocate(options, FP32_MB - 0.97)
    chosen = {p: b for g, b in planned.choice.items() if b is not None for p in g}
    assert sorted(config["quantize_modules"]) == sorted(chosen)
    for pattern, b in chosen.items():
        assert config.get("nbits_per_module", {}).get(pattern, config["nbits"]) == b
    # settings from the study's own spec (its copy in the ledger), not the results' paths
    assert config["learning_rate"] == 1e-3 and config["data_dir"] == "data/SST-2-hard"
    assert config["model_name_or_path"] == "runs/demo-assets/model"
    assert spec.raw["resources"] == {"gpus": 1, "cpus": 4} and spec.name == "sens-plan"
    assert "EVIL" not in out.read_text() and len(planned.choice) == 4
    again = sweep_cli("plan-bits", str(study_dir), "--budget-mb", "0.97", "-o", str(out))
    assert again.returncode == 2 and "exists; give a new file" in again.stderr
    small = sweep_cli("plan-bits", str(study_dir), "--budget-mb", "0.5", "-o",
                      str(tmp_path / "x.yaml"))
    assert small.returncode == 2 and "the smallest model these measurements allow is 0.6250" \
        in small.stderr and not (tmp_path / "x.yaml").exists()
    plain = tmp_path / "runs" / "plain"
    write_job(plain, "fp32", {"task": "sst2", "method": "fp32"}, {"eval_accuracy": 0.8})
    none = sweep_cli("plan-bits", str(plain), "--budget-mb", "1")
    assert none.returncode == 2 and "no sensitivity study found" in none.stderr


def test_without_the_spec_copy_no_path_from_the_results_is_written(study_dir, tmp_path):
    (study_dir / "ledger.json").unlink()
    out = tmp_path / "p.yaml"
    proc = sweep_cli("plan-bits", str(study_dir), "--budget-mb", "0.9", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "data_dir: not written (only the study's results held it" in proc.stdout
    text = out.read_text()
    assert "/abs/" not in text and "# data_dir: not written" in text
    assert '"learning_rate": 0.001' in text  # not a path: from the runs
