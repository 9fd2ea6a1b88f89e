"""Distillation losses against values computed by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from quantlib.configs import DistillQuantConfig, QATKDConfig
from quantlib.distill import ft_kd_loss, ft_kd_name, layers_kd_loss, layers_kd_name

S = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
T = torch.tensor([[1.0, 1.0, 0.0], [3.0, -1.0, 0.0]])


def softmax(row, temp):
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def kl_by_hand(temp):
    """sum over rows and classes of t * (log t - log s), at temperature temp."""
    total = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist()):
        ps, pt = softmax(s_row, temp), softmax(t_row, temp)
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return total


def test_ft_kd_default_is_ce_plus_10000_times_elementwise_mean_kl_at_t3():
    cfg = QATKDConfig()
    ce = torch.tensor(0.7)
    loss, parts = ft_kd_loss(S, T, ce, cfg)
    kl_mean = kl_by_hand(3.0) / S.numel()  # reduction "mean": over all 6 elements, no T^2
    assert float(parts["kd"]) == pytest.approx(kl_mean, rel=1e-5)
    assert float(loss) == pytest.approx(0.7 + 10000 * kl_mean, rel=1e-5)
    assert ft_kd_name(cfg) == ("ce + 10000 * kl(softmax(t/T) || softmax(s/T), T=3, "
                               "reduction=mean) (SQuAD: start + end)")


def test_ft_kd_on_squad_adds_start_and_end_as_fastertransformer():
    """FT's run_squad.py: loss = (CE_start + CE_end) / 2 + distillation_loss_scale *
    (KL_start + KL_end), each KL F.kl_div(log_softmax(s/T), softmax(t/T), "mean")."""
    g = torch.Generator().manual_seed(3)
    s_start, s_end, t_start, t_end = (torch.randn(4, 9, generator=g) for _ in range(4))
    ce = torch.tensor(1.25)

    def ft_kl(s, t, temperature=3.0):  # FT's distillation loss, reduction "mean" as in torch 1.x
        return float(F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1),
                              reduction="sum")) / s.numel()

    reference = 1.25 + 10000 * (ft_kl(s_start, t_start) + ft_kl(s_end, t_end))
    loss, _ = ft_kd_loss([s_start, s_end], [t_start, t_end], ce, QATKDConfig())
    assert float(loss) == pytest.approx(reference, rel=1e-6)
    mean, _ = ft_kd_loss([s_start, s_end], [t_start, t_end], ce, QATKDConfig(kd_heads="mean"))
    assert float(mean) == pytest.approx(1.25 + (reference - 1.25) / 2, rel=1e-6)
    assert ft_kd_name(QATKDConfig(kd_heads="mean")).endswith("(SQuAD: mean of start and end)")


def test_ft_kd_batchmean_and_t_squared_variants():
    cfg = QATKDConfig(kd_scale=2.0, kd_temperature=2.0, kd_reduction="batchmean",
                      kd_t_squared=True)
    loss, _ = ft_kd_loss(S, T, torch.tensor(0.0), cfg)
    assert float(loss) == pytest.approx(2.0 * 4.0 * kl_by_hand(2.0) / 2, rel=1e-5)
    reg, parts = ft_kd_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]]),
                            torch.tensor(0.5), cfg, regression=True)
    assert float(parts["kd"]) == pytest.approx((1 + 4) / 2)
    assert float(reg) == pytest.approx(0.5 + 2.0 * 2.5)


def test_layer_distillation_sums_every_layer_and_attention_map():
    g = torch.Generator().manual_seed(0)

    def outputs(shift, logits):
        hidden = [torch.randn(2, 3, 4, generator=g) + shift for _ in range(3)]  # emb + 2 layers
        attn = [torch.rand(2, 1, 3, 3, generator=g) for _ in range(2)]
        return SimpleNamespace(hidden_states=hidden, attentions=attn, logits=logits,
                               loss=torch.tensor(0.25))

    s, t = outputs(0.0, S), outputs(0.5, T)

    def mse(a, b):
        return float(((a - b) ** 2).mean())

    layers = mse(s.hidden_states[1], t.hidden_states[1]) + mse(s.hidden_states[2],
                                                               t.hidden_states[2])
    attn = mse(s.attentions[0], t.attentions[0]) + mse(s.attentions[1], t.attentions[1])
    logits = mse(s.logits, t.logits)
    cfg = DistillQuantConfig()
    loss, parts = layers_kd_loss(s, t, cfg)
    assert float(parts["layers"]) == pytest.approx(layers, rel=1e-6)
    assert float(parts["attentions"]) == pytest.approx(attn, rel=1e-6)
    assert float(loss) == pytest.approx(layers + attn + logits, rel=1e-6)
    cfg = DistillQuantConfig(layer_weight=2.0, attention_weight=0.0, logits_weight=1.0,
                             logits_loss="kl", kd_temperature=1.0, ce_weight=3.0)
    loss, _ = layers_kd_loss(s, t, cfg)
    kl = kl_by_hand(1.0) / 2  # batchmean over 2 rows, T^2 = 1
    assert float(loss) == pytest.approx(2 * layers + kl + 3 * 0.25, rel=1e-5)
    assert layers_kd_name(cfg).endswith("+ 3 * ce")


def test_t2_loss_by_hand_and_squad_heads():
    import math

    from quantlib.distill import t2_loss

    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    T = 2.0

    def kl_batchmean(a, b):  # KL(softmax(b/T) || softmax(a/T)), summed, / batch
        total = 0.0
        for row_s, row_t in zip(a.tolist(), b.tolist()):
            ps = [math.exp(x / T) for x in row_s]
            pt = [math.exp(x / T) for x in row_t]
            ps = [x / sum(ps) for x in ps]
            pt = [x / sum(pt) for x in pt]
            total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
        return total / len(a)

    hard = torch.tensor(0.7)
    loss, parts = t2_loss([s], [t], hard, 0.0, 1.0, T)  # Prune OFA's weights [0, 1]
    assert float(loss) == pytest.approx(T * T * kl_batchmean(s, t), rel=1e-5)
    loss, _ = t2_loss([s], [t], hard, 0.5, 0.5, T)  # DistilBERT's alphas
    assert float(loss) == pytest.approx(0.5 * 0.7 + 0.5 * T * T * kl_batchmean(s, t), rel=1e-5)
    # SQuAD: the mean of the start and the end terms
    loss, _ = t2_loss([s, t], [t, s], hard, 0.0, 1.0, T)
    expected = T * T * (kl_batchmean(s, t) + kl_batchmean(t, s)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_segment_ids_for_a_bert_teacher_of_a_distilbert_student():
    from quantlib.distill import segment_ids

    sep = 3
    ids = torch.tensor([[2, 7, 7, 3, 8, 8, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0]])
    assert segment_ids(ids, sep, mask).tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0]]
