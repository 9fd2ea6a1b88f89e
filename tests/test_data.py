"""GLUE data: every task's download_glue_data.py TSV layout, and the hub path via a local repo."""

from __future__ import annotations

import pytest

from quantlib.data import load_glue
from quantlib.tasks import TASKS

# (file header or None, rows, expected (text_a, text_b, label) of the first row)
TSV = {
    "cola": (None, [["gj04", "1", "", "Our friends won't buy this analysis."],
                    ["gj04", "0", "*", "They drank the pub."]],
             ("Our friends won't buy this analysis.", None, 1)),
    "sst2": (["sentence", "label"], [["it 's a charming journey . ", "1"], ["dull", "0"]],
             ("it 's a charming journey . ", None, 1)),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             [["1", "702876", "702977", "Amrozi accused his brother .", "Referring to him ."],
              ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought it ."]],
             ("Amrozi accused his brother .", "Referring to him .", 1)),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [["1", "1", "2", "How do I learn?", "How can I learn?", "1"],
             ["2", "3", "4", "broken line"],  # the real dump has a few of these: skipped
             ["3", "5", "6", "Why?", "When?", "0"]],
            ("How do I learn?", "How can I learn?", 1)),
    "stsb": (["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2", "score"],
             [["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
               "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.",
               "5.000"]],
             ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)),
    "mnli": (["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
              "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
              "sentence2", "label1", "gold_label"],
             [["0", "31193", "31193n", "government", "(", "(", "(", "(",
               "Conceptually cream skimming has two dimensions.", "Product and geography.",
               "neutral", "neutral"],
              ["1", "1", "1e", "fiction", "(", "(", "(", "(", "He said.", "He spoke.",
               "entailment", "entailment"],
              ["2", "2", "2c", "fiction", "(", "(", "(", "(", "Yes.", "No.",
               "contradiction", "contradiction"]],
             ("Conceptually cream skimming has two dimensions.", "Product and geography.", 1)),
    "qnli": (["index", "question", "sentence", "label"],
             [["0", "When did it open?", "It opened in 1990.", "entailment"],
              ["1", "Who?", "Nobody knows when.", "not_entailment"]],
             ("When did it open?", "It opened in 1990.", 0)),
    "rte": (["index", "sentence1", "sentence2", "label"],
            [["0", "Dana Reeve died.", "Christopher Reeve had an accident.", "not_entailment"]],
            ("Dana Reeve died.", "Christopher Reeve had an accident.", 1)),
    "wnli": (["index", "sentence1", "sentence2", "label"],
             [["0", "I stuck a pin through a carrot.", "The carrot had a hole.", "1"]],
             ("I stuck a pin through a carrot.", "The carrot had a hole.", 1)),
}


def write_task(root, name):
    header, rows, _ = TSV[name]
    task = TASKS[name]
    root.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    text = "\n".join("\t".join(r) for r in lines) + "\n"
    for file in [task.tsv.train_file, *task.tsv.eval_files.values()]:
        (root / file).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("name", sorted(TSV))
def test_tsv_layouts(tmp_path, name):
    root = write_task(tmp_path / TASKS[name].glue_dir, name)
    data = load_glue(TASKS[name], "unused", str(root))
    want = {"train", "validation"} | ({"validation_mm"} if name == "mnli" else set())
    assert set(data) == want
    first = data["train"][0]
    text_a, text_b, label = TSV[name][2]
    assert first["text_a"] == text_a and first.get("text_b") == text_b
    assert first["label"] == label
    if name == "qqp":
        assert len(data["train"]) == 2  # the broken line was skipped
    if name == "mnli":
        assert data["validation_mm"]["label"] == [1, 0, 2]  # hub ids


def test_bad_label_names_the_file_and_line(tmp_path):
    root = write_task(tmp_path / "RTE", "rte")
    (root / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match=r"dev.tsv:2: label 'maybe'"):
        load_glue(TASKS["rte"], "unused", str(root))


def test_hub_code_path_through_a_local_dataset_repo(tmp_path):
    """load_dataset("nyu-mll/glue", "mrpc") is the real call; here the same call reads a local
    directory laid out like the hub repository (parquet per config, configs in README.md)."""
    import datasets

    repo = tmp_path / "glue"
    (repo / "mrpc").mkdir(parents=True)
    for split, n in (("train", 6), ("validation", 4), ("test", 2)):
        datasets.Dataset.from_dict({
            "sentence1": [f"a{i}" for i in range(n)], "sentence2": [f"b{i}" for i in range(n)],
            "label": [i % 2 for i in range(n)], "idx": list(range(n)),
        }).to_parquet(str(repo / "mrpc" / f"{split}-00000-of-00001.parquet"))
    (repo / "README.md").write_text("""---
configs:
- config_name: mrpc
  data_files:
  - split: train
    path: mrpc/train-*
  - split: validation
    path: mrpc/validation-*
  - split: test
    path: mrpc/test-*
---
""")
    data = load_glue(TASKS["mrpc"], str(repo), None)
    assert set(data) == {"train", "validation"}
    assert data["train"].column_names == ["text_a", "text_b", "label"]
    assert data["validation"][1] == {"text_a": "a1", "text_b": "b1", "label": 1}


def _effective_score(sentence_text: str) -> int:
    """The demo's label rule read back from the words: a sentiment word counts +-1, negated by
    a "not" right before it or one intensifier before it."""
    from quantlib.demo import INTENSIFIERS, NEGATIVE, POSITIVE

    words = sentence_text.split()
    score = 0
    for i, w in enumerate(words):
        if w not in POSITIVE and w not in NEGATIVE:
            continue
        p = 1 if w in POSITIVE else -1
        before = words[max(0, i - 2):i]
        negated = (before[-1:] == ["not"]) or (len(before) == 2 and before[0] == "not"
                                               and before[1] in INTENSIFIERS)
        score += -p if negated else p
    return score


def test_the_harder_demo_variant_puts_words_between_not_and_its_word(tmp_path):
    """Both variants label by the effective count (read back from the words: all but the few
    where a filler "not" lands before a sentiment word); the hard one has negations two words
    away; the default variant draws what it always drew."""
    import random

    from quantlib.demo import HARD, INTENSIFIERS, sentence, write_glue_tsv

    rng = random.Random(0)
    easy = [sentence(rng) for _ in range(400)]
    assert easy[:2] == [("is this not wonderful to rough tone", 0),  # as before the variant
                        ("in dull delight fine to", 1)]
    hard = [sentence(random.Random(i), **HARD) for i in range(400)]
    gaps = sum(any(f"not {w} " in s + " " for w in INTENSIFIERS) for s, _ in hard)
    assert gaps > 50
    for variant in (easy, hard):  # a filler "not" may land before a sentiment word: rare
        agree = sum((_effective_score(t) > 0) == bool(y) for t, y in variant) / len(variant)
        assert agree > 0.85, agree
    d = write_glue_tsv(tmp_path / "SST-2-hard", n_train=20, n_dev=5, seed=1, **HARD)
    assert (d / "train.tsv").read_text().startswith("sentence\tlabel\n")
