"""SQuAD v1.1: data (hub `rajpurkar/squad` or local JSON), windowed features, answer decoding.

Features follow transformers' run_qa.py: the question (cut to max_query_length tokens) and a
window of the context share max_seq_length tokens; consecutive windows of a long context overlap
by doc_stride tokens (the tokenizer's `stride`). A training window that does not contain the
whole answer points both positions at [CLS]. Decoding takes, per example, the n_best start and
end logits of each of its windows, drops spans outside the context, reversed or longer than
max_answer_length, and answers with the context text of the best start + end score.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset

from quantlib.tasks import SQUAD_FILES

COLUMNS = ("id", "title", "context", "question", "answers")


def read_squad_json(path: str | Path) -> Dataset:
    """A SQuAD-format file ({"data": [{"title", "paragraphs": [{"context", "qas"}]}]}) as rows
    with the hub dataset's columns: id, title, context, question, answers{text, answer_start}."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rows: dict[str, list] = {c: [] for c in COLUMNS}
        for article in doc["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    rows["id"].append(str(qa["id"]))
                    rows["title"].append(article.get("title", ""))
                    rows["context"].append(paragraph["context"])
                    rows["question"].append(qa["question"])
                    rows["answers"].append({
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]]})
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a SQuAD v1.1 JSON file ({type(exc).__name__}: "
                         f"{exc})") from None
    if not rows["id"]:
        raise ValueError(f"{path}: no questions")
    return Dataset.from_dict(rows)


def squad_files(data_dir: str | Path) -> tuple[Path, Path]:
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} is not a directory")
    for train, dev in SQUAD_FILES:
        if (root / train).is_file() and (root / dev).is_file():
            return root / train, root / dev
    names = " or ".join(f"{t} + {d}" for t, d in SQUAD_FILES)
    raise FileNotFoundError(f"data_dir {root}: no SQuAD files ({names})")


def load_squad(dataset_name: str, data_dir: str | None) -> DatasetDict:
    """Splits 'train' and 'validation'."""
    if data_dir:
        train, dev = squad_files(data_dir)
        return DatasetDict({"train": read_squad_json(train), "validation": read_squad_json(dev)})
    raw = load_dataset(dataset_name)
    return DatasetDict({split: raw[split].select_columns(list(COLUMNS))
                        for split in ("train", "validation")})


def cut_questions(questions: list[str], tokenizer: Any, max_query_length: int) -> list[str]:
    """Questions cut after their first max_query_length tokens (at a character offset, so the
    text of what is kept is unchanged)."""
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for q, offsets in zip(questions, enc["offset_mapping"]):
        out.append(q[:offsets[max_query_length - 1][1]] if len(offsets) > max_query_length
                   else q)
    return out


def _encode(examples: dict, tokenizer: Any, max_seq_length: int, doc_stride: int,
            max_query_length: int):
    right = tokenizer.padding_side == "right"
    questions = cut_questions(examples["question"], tokenizer, max_query_length)
    contexts = examples["context"]
    return tokenizer(questions if right else contexts, contexts if right else questions,
                     truncation="only_second" if right else "only_first",
                     max_length=max_seq_length, stride=doc_stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True,
                     return_token_type_ids=True), 1 if right else 0


def train_features(examples: dict, tokenizer: Any, max_seq_length: int, doc_stride: int,
                   max_query_length: int) -> dict:
    """Batched map function: windows with start_positions / end_positions (token indices)."""
    enc, ctx_id = _encode(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offsets_all):
        ids = enc["input_ids"][i]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        seq = enc.sequence_ids(i)
        answers = examples["answers"][sample_map[i]]
        if not answers["answer_start"]:
            starts.append(cls)
            ends.append(cls)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first = seq.index(ctx_id)
        last = len(seq) - 1 - seq[::-1].index(ctx_id)
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls)  # the answer is not (wholly) in this window
            ends.append(cls)
            continue
        s = first
        while s <= last and offsets[s][0] <= start_char:
            s += 1
        e = last
        while e >= first and offsets[e][1] >= end_char:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    return enc


def eval_features(examples: dict, tokenizer: Any, max_seq_length: int, doc_stride: int,
                  max_query_length: int) -> dict:
    """Batched map function: windows with example_id and offsets (None outside the context)."""
    enc, ctx_id = _encode(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = [examples["id"][s] for s in sample_map]
    enc["offset_mapping"] = [
        [o if seq_id == ctx_id else None for o, seq_id in zip(offsets, enc.sequence_ids(i))]
        for i, offsets in enumerate(enc["offset_mapping"])]
    return enc


def decode(examples: Dataset, features: Dataset, start_logits: np.ndarray,
           end_logits: np.ndarray, n_best_size: int = 20,
           max_answer_length: int = 30) -> dict[str, str]:
    """id -> answer text: the best valid span over an example's windows."""
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, eid in enumerate(features["example_id"]):
        by_example[eid].append(i)
    offsets_all = features["offset_mapping"]
    predictions: dict[str, str] = {}
    for example in examples:
        best_score, best = -np.inf, ""
        context = example["context"]
        for i in by_example.get(example["id"], []):
            offsets = offsets_all[i]
            n = len(offsets)
            start, end = start_logits[i][:n], end_logits[i][:n]
            start_idx = np.argsort(start)[-1:-n_best_size - 1:-1]
            end_idx = np.argsort(end)[-1:-n_best_size - 1:-1]
            for s in start_idx:
                if offsets[s] is None:
                    continue
                for e in end_idx:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(start[s] + end[e])
                    if score > best_score:
                        best_score, best = score, context[offsets[s][0]:offsets[e][1]]
        predictions[example["id"]] = best
    return predictions


def references(examples: Dataset) -> list[tuple[str, list[str]]]:
    """(id, ground-truth texts) of every question, for squad_metrics.evaluate."""
    return [(eid, list(ans["text"])) for eid, ans in zip(examples["id"], examples["answers"])]
