"""The frozen teacher's logits are computed once per example (quantlib.teacher_cache): a later
epoch, its batches shuffled and padded to other lengths, gets the loss it gets today without
running the teacher; question-answering rows are reused only for the same padded input."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

from quantlib.configs import DistilSquadConfig, QATKDConfig
from quantlib.distill import Distiller, frozen_copy
from quantlib.teacher_cache import TeacherCache

TINY = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64)


def examples(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[2] + [rng.randrange(5, 60) for _ in range(rng.randrange(3, 20))] + [3]
            for _ in range(n)]


def batch(ids: list[list[int]], labels: list[int], pad_to: int | None = None) -> dict:
    """What DataCollatorWithPadding gives: right-padded to the longest (or pad_to)."""
    width = pad_to or max(len(x) for x in ids)
    return {"input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "token_type_ids": torch.zeros(len(ids), width, dtype=torch.long),
            "labels": torch.tensor(labels)}


class Counting(torch.nn.Module):
    """The teacher, counting its forward passes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, **kw):
        self.calls += 1
        return self.model(**kw)


def classifier_pair(seed: int = 0):
    torch.manual_seed(seed)
    student = BertForSequenceClassification(BertConfig(**TINY, num_labels=3))
    teacher = frozen_copy(student)
    torch.manual_seed(seed + 1)
    for p in teacher.parameters():  # a teacher that differs from the student
        p.add_(0.05 * torch.randn_like(p))
    return student, teacher


def test_a_later_epoch_gets_todays_loss_without_running_the_teacher():
    student, teacher = classifier_pair()
    data, labels = examples(12), [i % 3 for i in range(12)]
    cached, plain = Distiller(QATKDConfig(), False), Distiller(QATKDConfig(), False)
    cached.teacher = Counting(teacher)
    plain.teacher = teacher
    plain.cache = TeacherCache(limit=0)
    student.eval()  # no dropout: the student's side of the loss is the same in both runs
    for epoch in range(3):
        order = list(range(12))
        random.Random(epoch).shuffle(order)
        for start in range(0, 12, 4):
            pick = order[start:start + 4]
            b = batch([data[i] for i in pick], [labels[i] for i in pick])
            want = plain.compute_loss(student, dict(b))
            got = cached.compute_loss(student, dict(b))
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-6), (epoch, start)
            if epoch == 0:
                assert torch.equal(got, want)  # the same batch through the same teacher
    assert cached.teacher.calls == 3  # epoch 0's three batches; epochs 1 and 2 from the cache
    assert cached.cache.hits == 6 and cached.cache.misses == 3
    assert len(cached.cache.rows) == 12


def test_the_loss_still_trains_the_student():
    student, teacher = classifier_pair()
    d = Distiller(QATKDConfig(), False)
    d.teacher = teacher
    b = batch(examples(4), [0, 1, 2, 0])
    d.compute_loss(student, dict(b))  # fills the cache
    loss = d.compute_loss(student, dict(b))  # from the cache
    assert d.cache.hits == 1
    loss.backward()
    assert student.classifier.weight.grad is not None
    assert float(student.classifier.weight.grad.abs().sum()) > 0


def test_a_new_teacher_starts_an_empty_cache():
    student, teacher = classifier_pair()
    d = Distiller(QATKDConfig(), False)
    d.teacher = teacher
    d.compute_loss(student, batch(examples(4), [0, 1, 2, 0]))
    assert d.cache.rows
    d.teacher = frozen_copy(student)  # the next stage's teacher (or a resumed job's)
    assert not d.cache.rows and d.cache.whole_rows is None


def test_question_answering_rows_are_reused_only_for_the_same_padded_input():
    torch.manual_seed(0)
    student = BertForQuestionAnswering(BertConfig(**TINY))
    teacher = Counting(frozen_copy(student))
    d = Distiller(DistilSquadConfig(teacher_name_or_path="t"), False)
    d.teacher = teacher
    student.eval()
    data = examples(4)

    def qa(pad_to: int) -> dict:
        b = batch(data, [0] * 4, pad_to)
        b.pop("labels")
        return {**b, "start_positions": torch.tensor([1, 2, 1, 2]),
                "end_positions": torch.tensor([2, 3, 2, 3])}

    first = d.compute_loss(student, qa(24))
    again = d.compute_loss(student, qa(24))
    assert teacher.calls == 1 and torch.equal(first, again)
    d.compute_loss(student, qa(30))  # other padding: the teacher's logits there differ
    assert teacher.calls == 2 and d.cache.whole_rows is True


def test_the_bound_and_the_switch(monkeypatch):
    student, teacher = classifier_pair()
    d = Distiller(QATKDConfig(), False)
    d.teacher = teacher
    d.cache = TeacherCache(limit=100)  # room for about one row of three float32 and its key
    d.compute_loss(student, batch(examples(4), [0, 1, 2, 0]))
    assert 0 < len(d.cache.rows) < 4 and d.cache.bytes <= 100
    monkeypatch.setenv("QUANTSWEEP_TEACHER_CACHE_MB", "0")
    d.teacher = Counting(teacher)
    b = batch(examples(4), [0, 1, 2, 0])
    d.compute_loss(student, dict(b))
    d.compute_loss(student, dict(b))
    assert d.teacher.calls == 2 and not d.cache.rows


@pytest.mark.parametrize("limit", ["bad", "-5"])
def test_a_bad_setting_keeps_the_default_or_turns_it_off(monkeypatch, limit):
    monkeypatch.setenv("QUANTSWEEP_TEACHER_CACHE_MB", limit)
    cache = TeacherCache()
    assert cache.limit == (1024 << 20 if limit == "bad" else 0)


# -- across the jobs of a sweep ---------------------------------------------------------------
def test_a_sweeps_jobs_share_a_teacher_checkpoints_rows(tmp_path):
    """The second job of a sweep that names the same teacher checkpoint gets its losses from
    the rows the first one kept, exactly, without running the teacher once."""
    from quantlib.teacher_cache import shared_file

    student, teacher = classifier_pair()
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    path = shared_file(str(tmp_path / "sweep"), str(folder), question_answering=False)
    assert path is not None and path.parent == tmp_path / "sweep" / "teacher_cache"
    data, labels = examples(12), [i % 3 for i in range(12)]
    batches = [batch(data[i:i + 4], labels[i:i + 4]) for i in range(0, 12, 4)]
    student.eval()
    losses = []
    for job in range(2):
        d = Distiller(QATKDConfig(), False)
        d.shared = path
        d.teacher = Counting(teacher)
        losses.append([d.compute_loss(student, dict(b)) for b in batches])
        info = d.save_shared()
        if job == 0:
            assert d.teacher.calls == 3 and info["teacher_cache_saved"] and path.is_file()
            assert info["teacher_cache_loaded"] == 0
        else:  # every row from the first job's file; nothing new to write
            assert d.teacher.calls == 0 and info["teacher_cache_loaded"] == 12
            assert info["teacher_cache_hits"] == 3 and not info["teacher_cache_saved"]
    assert all(torch.equal(a, b) for a, b in zip(*losses))
    # another question-answering flag, another sweep: other files
    assert shared_file(str(tmp_path / "sweep"), str(folder), True) != path
    assert shared_file(None, str(folder), False) is None
    assert shared_file(str(tmp_path / "sweep"), str(tmp_path / "nowhere"), False) is None


def test_a_rewritten_teacher_is_another_teacher_and_a_bad_file_no_rows(tmp_path):
    import os

    from quantlib.teacher_cache import shared_file

    _, teacher = classifier_pair()
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    before = shared_file(str(tmp_path), str(folder), False)
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    after = shared_file(str(tmp_path), str(folder), False)
    assert before != after  # a checkpoint written again (a relaunched stage) starts afresh
    after.parent.mkdir(parents=True)
    after.write_bytes(b"not a torch file")
    cache = TeacherCache()
    assert cache.load(after) == 0 and not cache.rows
    d = Distiller(QATKDConfig(), False)
    d.shared = after
    d.teacher = Counting(teacher)  # an unreadable file: the job computes its rows
    student, _ = classifier_pair()
    d.compute_loss(student, dict(batch(examples(4), [0, 1, 2, 0])))
    assert d.teacher.calls == 1 and d.save_shared()["teacher_cache_saved"]
    assert TeacherCache().load(after) == 4  # and its rows replaced the bad file
