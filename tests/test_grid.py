"""Grid expansion: products, zips, exclude / include, stable ids, output directories."""

from __future__ import annotations

from conftest import write_spec

from jobs.grid import expand
from jobs.spec import load_spec


def jobs_of(tmp_path, text):
    """The jobs of a spec, one per grid point (no shared fine-tuning: tests/
    test_finetune_sharing.py)."""
    return expand(load_spec(write_spec(tmp_path, text + "\nfinetune_sharing: false\n")))


def test_product_order_and_count(tmp_path):
    jobs = jobs_of(tmp_path, "name: s\ngrid: {task: [mrpc, rte], method: [lin, p2, mb], "
                             "nbits: 1..8}\n")
    assert len(jobs) == 48
    assert [j.index for j in jobs] == list(range(1, 49))
    first = jobs[0].config
    assert (first["task"], first["method"], first["nbits"]) == ("mrpc", "lin", 1)
    assert (jobs[8].config["method"], jobs[8].config["nbits"]) == ("p2", 1)
    assert len({j.id for j in jobs}) == 48


def test_ids_are_stable_and_depend_on_the_config_only(tmp_path):
    a = jobs_of(tmp_path, "name: a\ngrid: {task: [mrpc], method: [lin], nbits: [4]}\n"
                          "base: {learning_rate: 2.0e-5}\n")
    b = jobs_of(tmp_path, "name: b\nbase: {learning_rate: 2e-5, task: mrpc}\n"
                          "grid: {nbits: [4], method: [lin]}\n")
    assert a[0].id == b[0].id  # same resolved config, other spec name, other order, 2e-5 text
    c = jobs_of(tmp_path, "name: a\ngrid: {task: [mrpc], method: [lin], nbits: [4]}\n"
                          "base: {learning_rate: 3.0e-5}\n")
    assert c[0].id != a[0].id


def test_zip_exclude_include(tmp_path):
    jobs = jobs_of(tmp_path, """
name: s
grid: {method: [lin, mb], nbits: [2, 8]}
zip:
  - task: [sst2, mnli]
    model_name_or_path: [teacher-sst2, teacher-mnli]
exclude:
  - {method: mb, nbits: 2}
include:
  - {task: sst2, method: fp32, model_name_or_path: teacher-sst2}
""")
    points = [(j.config["method"], j.config.get("nbits"), j.config["task"],
               j.config["model_name_or_path"]) for j in jobs]
    assert len(points) == 2 * 2 * 2 - 2 + 1
    assert ("mb", 2, "sst2", "teacher-sst2") not in points
    assert all(m.endswith(t) for _, _, t, m in points)  # zipped axes stay paired
    assert points[-1] == ("fp32", None, "sst2", "teacher-sst2")


def test_method_irrelevant_keys_are_dropped(tmp_path):
    jobs = jobs_of(tmp_path, "name: s\ngrid: {task: [rte], method: [lin]}\n"
                             "base: {nbits: 4, amq_cycles: 5}\n"
                             "include: [{task: rte, method: fp32}]\n")
    assert "amq_cycles" not in jobs[0].config  # only mb uses it
    assert jobs[1].config == {"task": "rte", "method": "fp32"}


def test_output_dirs(tmp_path):
    jobs = jobs_of(tmp_path, "name: s\ngrid: {task: [mrpc], method: [p2], nbits: [3]}\n"
                             "output_dir: '{task}_{method}quant{nbits}bit'\n")
    assert jobs[0].output_dir == (tmp_path / "runs" / "s" / "mrpc_p2quant3bit").absolute() \
        or jobs[0].output_dir.name == "mrpc_p2quant3bit"
    default = jobs_of(tmp_path, "name: s\ngrid: {task: [mrpc], method: [p2], nbits: [3]}\n")
    assert default[0].output_dir.parent.name == "jobs"
    assert default[0].output_dir.name == f"mrpc_p2_3-{default[0].id}"
