"""`sweep collect --to tex`: booktabs tables with the best per column in bold, Welch stars,
seed counts and notes, hostile strings escaped."""

from __future__ import annotations

import pytest
from conftest import sweep_cli
from test_collect import write_job


def acc(value, **info):
    return {"eval_accuracy": value, **info}


@pytest.fixture(scope="module")
def tex(tmp_path_factory):
    root = tmp_path_factory.mktemp("tex") / "sweep"
    base = {"model_name_or_path": "bert-base-uncased"}
    for seed, (fp, low, high) in enumerate([(0.85, 0.80, 0.86), (0.86, 0.82, 0.85),
                                            (0.84, 0.78, 0.84)], start=1):
        write_job(root, f"fp-{seed}", {**base, "task": "rte", "method": "fp32", "seed": seed},
                  acc(fp, model_size_mb=438.0, compression_ratio=1.0))
        write_job(root, f"p2-{seed}", {**base, "task": "rte", "method": "p2", "nbits": 2,
                                       "seed": seed},
                  acc(low, model_size_mb=40.0, compression_ratio=10.95))
        write_job(root, f"lin-{seed}", {**base, "task": "rte", "method": "lin", "nbits": 8,
                                        "seed": seed},
                  acc(high, model_size_mb=120.0, compression_ratio=3.65))
    # a hostile spec value that splits a block: it reaches the method's title
    write_job(root, "evil", {"model_name_or_path": "x\\input{/etc/passwd}_&%$#~^",
                             "task": "rte", "method": "lin", "nbits": 4}, acc(0.5))
    out = root.parent / "out.tex"
    proc = sweep_cli("collect", str(root), "--to", "tex", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def rows(text):
    body = text.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in line.rstrip("\\ ").split("&")]
            for line in body.strip().splitlines()]


def test_booktabs_table_per_task(tex):
    assert tex.count("\\begin{table}") == 1 and "\\label{tab:rte}" in tex
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{2}{c}{RTE(acc)}" in tex


def test_values_runs_stars_and_bold(tex):
    table = {(r[0], r[1]): r for r in rows(tex)}
    fp = table[("FP32", "32")]
    assert fp[2] == "3" and fp[3] == "\\textbf{0.8500 $\\pm$ 0.0100}"
    # p2 at 2 bits: 0.80 +- 0.02 against 0.85 +- 0.01 over 3 seeds each: Welch p = 0.028
    p2 = table[("Power of 2", "2")]
    assert p2[3] == "0.8000 $\\pm$ 0.0200$^{*}$" and p2[4] == "-0.0500"
    assert p2[5] == "\\textbf{40.0}"  # the smallest size is the best
    lin = next(r for (t, b), r in table.items() if t.startswith("Linear") and b == "8")
    assert lin[3] == "\\textbf{0.8500 $\\pm$ 0.0100}"  # ties FP32: bold too, no star
    assert lin[4] == "\\textbf{+0.0000}"  # the best delta of the compressed rows


def test_notes_in_the_caption(tex):
    caption = tex.split("\\caption{", 1)[1].split("}\n", 1)[0]
    assert "Welch's t-test" in caption and "$^{*}$ significantly below FP32" in caption
    assert "RTE varies across fine-tuning seeds: 1 of 4 rows have fewer than 3 runs" in caption


def test_hostile_strings_are_escaped(tex):
    assert "\\input{" not in tex
    assert "x\\textbackslash{}input\\{/etc/passwd\\}\\_\\&\\%\\$\\#\\textasciitilde{}" \
           "\\textasciicircum{}" in tex
