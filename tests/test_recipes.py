"""quantlib.recipes: the method registry's torch side. Every method quantlib.configs knows (and
every job of the example sweeps) has a recipe, found through the config's class hierarchy;
a config no recipe is registered for is refused; `finetune_stage`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from quantlib import recipes
from quantlib.configs import (
    METHODS,
    ConfigError,
    MethodConfig,
    PTQConfig,
    SparseConfig,
    build,
)
from quantlib.recipes import RECIPES, finetune_stage, recipe_for, register
from quantlib.stages import TrainingStage

REPO = Path(__file__).resolve().parents[1]

# method -> the recipe that trains it
EXPECTED = {
    "p2": recipes.inq, "lin": recipes.inq, "mb": recipes.inq, "fp32": recipes.fp32,
    "q8bert": recipes.q8bert, "ptq": recipes.ptq, "qat": recipes.qat,
    "qat-kd": recipes.qat,  # QATKDConfig is a QATConfig: the qat recipe distils when it is
    "distill-quant": recipes.distill_quant, "sparse24": recipes.sparse,
    "magnitude": recipes.sparse, "pruneofa": recipes.pruneofa,
    "distil-squad": recipes.distil_squad, "gptq": recipes.gptq,
}


def method_config(method: str) -> MethodConfig:
    """The method's config as a job builds it (quantlib.configs.build), required args given."""
    config = {"task": "squad" if method == "distil-squad" else "mrpc", "method": method}
    if method in ("p2", "lin", "mb"):
        config["nbits"] = 4
    if method in ("pruneofa", "distil-squad"):
        config["teacher_name_or_path"] = "teacher"
    return build(config)[1]


def test_every_method_has_its_recipe():
    assert set(EXPECTED) == set(METHODS)  # a new method needs its line here
    for method, recipe in EXPECTED.items():
        config = method_config(method)
        assert type(config) is METHODS[method].config
        assert recipe_for(config) is recipe, method


def test_every_job_of_the_example_sweeps_has_a_recipe():
    from jobs.grid import expand
    from jobs.spec import load_spec

    specs = sorted((REPO / "sweeps").glob("*.yaml"))
    assert specs
    seen = set()
    for path in specs:
        for job in expand(load_spec(path)):
            if job.config["method"] not in seen:
                seen.add(job.config["method"])
                assert recipe_for(build(job.config)[1]) in RECIPES.values()
    assert seen <= set(METHODS) and len(seen) >= 10


def test_recipes_are_found_through_the_class_hierarchy():
    class MyPTQ(PTQConfig):
        pass

    class MySparse(SparseConfig):  # SparseConfig is a QATConfig too: its own recipe first
        pass

    assert recipe_for(MyPTQ()) is recipes.ptq
    assert recipe_for(MySparse()) is recipes.sparse


def test_a_config_without_a_recipe_is_refused():
    class Unregistered(MethodConfig):
        pass

    with pytest.raises(KeyError, match="no recipe registered for Unregistered"):
        recipe_for(Unregistered())
    with pytest.raises(KeyError, match="no recipe registered for MethodConfig"):
        recipe_for(MethodConfig())


def test_an_unknown_method_is_refused_before_any_recipe():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        build({"task": "mrpc", "method": "nope"})


def test_register_adds_a_recipe(monkeypatch):
    monkeypatch.setattr(recipes, "RECIPES", dict(RECIPES))

    class Custom(MethodConfig):
        pass

    def custom(ctx, cfg):
        return "trainer"

    assert register(Custom)(custom) is custom  # the decorator returns the function
    assert recipe_for(Custom()) is custom
    assert Custom not in RECIPES  # the real registry is untouched


def test_finetune_stage():
    assert finetune_stage(SimpleNamespace(needs_finetune=False)) == []
    ctx = SimpleNamespace(needs_finetune=True, args=SimpleNamespace(finetune_epochs=2.5))
    assert finetune_stage(ctx) == [TrainingStage("finetune", 2.5, None)]
