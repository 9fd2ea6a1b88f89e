"""SQuAD v1.1: EM/F1 exactly as evaluate-v1.1.py, windowed features, answer decoding, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantlib.squad_metrics import (
    dataset_examples,
    evaluate,
    exact_match_score,
    f1_score,
    normalize_answer,
)


def test_normalisation_as_the_official_script():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert normalize_answer("  Denver   Broncos ") == "denver broncos"


def test_exact_match_and_f1_by_hand():
    assert exact_match_score("the Denver Broncos", "Denver Broncos")
    assert not exact_match_score("Denver", "Denver Broncos")
    # pred "denver broncos win" vs truth "denver broncos": P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Denver Broncos win", "the Denver Broncos") == pytest.approx(0.8)
    assert f1_score("Carolina", "Denver Broncos") == 0.0
    # repeated tokens count once per occurrence (Counter intersection): P = 1/3, R = 1/1
    assert f1_score("a b b b", "b") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert f1_score("", "Denver") == 0.0


def test_evaluate_takes_the_best_ground_truth_and_scores_unanswered_as_zero():
    examples = [("q1", ["Denver Broncos", "the Broncos"]), ("q2", ["1990"]),
                ("q3", ["Santa Clara, California"])]
    preds = {"q1": "Broncos", "q2": "1990"}  # q3 unanswered
    out = evaluate(examples, preds)
    # q1: against "Denver Broncos" EM 0 / F1 2/3, against "the Broncos" EM 1 / F1 1: the max
    assert out["exact_match"] == pytest.approx(100 * 2 / 3)
    assert out["f1"] == pytest.approx(100 * 2 / 3)
    assert evaluate(examples[:1], {"q1": "Denver"}) == pytest.approx(
        {"exact_match": 0.0, "f1": 100 * 2 * (1 / 2) / (1 + 1 / 2)})


def test_dataset_examples_reads_the_squad_json_layout():
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "abc", "qas": [
        {"id": "1", "question": "?", "answers": [{"text": "a", "answer_start": 0},
                                                  {"text": "ab", "answer_start": 0}]}]}]}]}
    assert dataset_examples(doc) == [("1", ["a", "ab"])]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from quantlib.demo import QUESTION_WORDS, write_vocab

    d = tmp_path_factory.mktemp("tok")
    write_vocab(d / "vocab.txt", QUESTION_WORDS)
    from transformers import BertTokenizer

    BertTokenizer.from_pretrained(d, do_lower_case=True).save_pretrained(d)
    return AutoTokenizer.from_pretrained(d)


def _batch(context: str, question: str, answer: str) -> dict:
    start = context.index(answer)
    return {"id": ["x"], "title": [""], "context": [context], "question": [question],
            "answers": [{"text": [answer], "answer_start": [start]}]}


def test_long_context_windows_overlap_and_locate_the_answer(tokenizer):
    from quantlib.squad import eval_features, train_features

    filler = " ".join(["the film was"] * 20)  # 60 words before the answer
    context = f"{filler} the music was superb and the plot was dull"
    batch = _batch(context, "how was the music ?", "superb")
    feats = train_features(batch, tokenizer, max_seq_length=32, doc_stride=8,
                           max_query_length=64)
    n = len(feats["input_ids"])
    assert n > 3  # the context does not fit in one window
    found = []
    for i in range(n):
        s, e = feats["start_positions"][i], feats["end_positions"][i]
        if s == 0:
            assert e == 0  # windows without the answer point at [CLS]
            continue
        found.append(tokenizer.decode(feats["input_ids"][i][s:e + 1]))
    assert found and set(found) == {"superb"}
    ev = eval_features(batch, tokenizer, max_seq_length=32, doc_stride=8, max_query_length=64)
    assert ev["example_id"] == ["x"] * n
    # consecutive windows share doc_stride context tokens
    ctx0 = [o for o in ev["offset_mapping"][0] if o is not None]
    ctx1 = [o for o in ev["offset_mapping"][1] if o is not None]
    assert ctx0[-8:] == ctx1[:8]
    for offsets in ev["offset_mapping"]:  # question and special tokens carry no offsets
        assert offsets[0] is None


def test_questions_are_cut_to_max_query_length(tokenizer):
    from quantlib.squad import cut_questions

    q = "how was the music and the plot and the pace ?"
    assert cut_questions([q], tokenizer, 3) == ["how was the"]
    assert cut_questions(["  " + q], tokenizer, 64) == [q]


def test_decode_picks_the_best_valid_span(tokenizer):
    from datasets import Dataset

    from quantlib.squad import decode, eval_features

    context = "the music was superb and the plot was dull"
    batch = _batch(context, "how was the music ?", "superb")
    ev = eval_features(batch, tokenizer, max_seq_length=64, doc_stride=8, max_query_length=64)
    feats = Dataset.from_dict(ev)
    offsets = ev["offset_mapping"][0]
    idx = {context[o[0]:o[1]]: i for i, o in enumerate(offsets) if o is not None}
    n = len(offsets) + 5  # logits padded past the window, as Trainer.predict pads them
    start, end = np.full((1, n), -5.0), np.full((1, n), -5.0)
    start[0, 0] = end[0, 0] = 50.0  # [CLS]: not in the context, never an answer
    start[0, idx["dull"]] = 9.0
    end[0, idx["plot"]] = 9.5  # reversed span with "dull" (18.5): invalid
    start[0, idx["superb"]] = 10.0  # superb..plot scores 19.5 > superb..superb 18
    end[0, idx["superb"]] = 8.0
    start[0, n - 1] = end[0, n - 1] = 40.0  # padding beyond the window
    examples = Dataset.from_dict(batch)
    assert decode(examples, feats, start, end) == {"x": "superb and the plot"}
    end[0, idx["plot"]] = 7.0  # now superb..superb (18) wins over superb..plot (17)
    assert decode(examples, feats, start, end) == {"x": "superb"}
    end[0, idx["dull"]] = 9.5  # dull..dull 18.5, superb..dull 19.5
    assert decode(examples, feats, start, end) == {"x": "superb and the plot was dull"}
    # n_best 1: only [CLS] (start and end) is a candidate, and it is no answer
    assert decode(examples, feats, start, end, n_best_size=1) == {"x": ""}
    # a span longer than max_answer_length tokens is not an answer
    start[:] = end[:] = -5.0
    start[0, idx["music"]] = 9.0
    end[0, idx["dull"]] = 9.0
    start[0, idx["plot"]] = end[0, idx["plot"]] = 1.0
    assert decode(examples, feats, start, end, max_answer_length=30) == {
        "x": "music was superb and the plot was dull"}
    # music..dull is 8 tokens: at most 3, plot..dull (score 10) is the best left
    assert decode(examples, feats, start, end, max_answer_length=3) == {"x": "plot was dull"}


def test_local_json_and_the_hub_loading_path(tmp_path):
    from quantlib.demo import write_squad_json
    from quantlib.squad import load_squad

    d = write_squad_json(tmp_path / "squad", n_train=20, n_dev=5)
    data = load_squad("rajpurkar/squad", str(d))
    assert len(data["train"]) == 20 and len(data["validation"]) == 5
    row = data["validation"][0]
    for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
        assert row["context"][start:start + len(text)] == text
    # the hub path (load_dataset(name)) on a local dataset in the hub's flat layout
    hub = tmp_path / "hub"
    hub.mkdir()
    for split in ("train", "validation"):
        rows = data["train" if split == "train" else "validation"].to_list()
        (hub / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    via_hub = load_squad(str(hub), None)
    assert via_hub["validation"].to_list() == data["validation"].to_list()


def test_bad_squad_file_names_the_file(tmp_path):
    from quantlib.squad import read_squad_json

    bad = tmp_path / "dev-v1.1.json"
    bad.write_text(json.dumps({"data": [{"title": "t"}]}))
    with pytest.raises(ValueError, match="dev-v1.1.json: not a SQuAD v1.1 JSON file"):
        read_squad_json(bad)
