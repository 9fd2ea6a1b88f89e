"""SQuAD v1.1 exact match and F1, as the official evaluate-v1.1.py computes them (torch-free).

An answer is normalised (lower case, punctuation removed, the articles a/an/the removed, white
space collapsed); a prediction scores the best over the question's ground truths; EM and F1 are
averaged over every question of the dataset (an unanswered one scores 0) and reported on the
script's 0-100 scale.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra white space."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn: Callable[[str, str], float], prediction: str,
                                  ground_truths: Iterable[str]) -> float:
    return max(float(metric_fn(prediction, gt)) for gt in ground_truths)


def evaluate(examples: Iterable[tuple[str, list[str]]],
             predictions: dict[str, str]) -> dict[str, float]:
    """examples: (question id, ground-truth answer texts) for every question of the dev set;
    predictions: id -> answer text. {"exact_match": .., "f1": ..} on the 0-100 scale."""
    f1 = exact_match = 0.0
    total = 0
    for qid, truths in examples:
        total += 1
        if qid not in predictions:  # the official script: unanswered questions score 0
            continue
        exact_match += metric_max_over_ground_truths(exact_match_score, predictions[qid], truths)
        f1 += metric_max_over_ground_truths(f1_score, predictions[qid], truths)
    if total == 0:
        return {"exact_match": float("nan"), "f1": float("nan")}
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def dataset_examples(dataset: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(id, answers) of every question of a SQuAD-format JSON document ({"data": [...]})."""
    return [(qa["id"], [a["text"] for a in qa["answers"]])
            for article in dataset["data"] for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]]
