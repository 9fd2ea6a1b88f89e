"""INQ: the incremental partition, frozen weights that never move, the per-stage LR schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantlib.configs import LinearINQConfig, MultiBitINQConfig, Pow2INQConfig
from quantlib.inq import INQController
from quantlib.quantizers import make_quantizer
from quantlib.stages import TrainingStage, select_weights, stage_starts, staged_lr_lambda

STEPS = (0.5, 0.75, 0.875, 1.0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.ModuleDict({"a": nn.Linear(32, 64), "b": nn.Linear(64, 32)})
        self.classifier = nn.Linear(32, 2)

    def forward(self, x):
        return self.classifier(torch.relu(self.encoder["b"](torch.relu(self.encoder["a"](x)))))


def controller(cfg, net=None, strategy_seed=0):
    net = net or Net()
    weights = select_weights(net, ("encoder.*",))
    stages = [TrainingStage(f"inq{f}", 1.0, f) for f in cfg.inq_steps]
    return net, INQController(weights, cfg, stages, seed=strategy_seed)


def test_selects_only_matching_linear_weights():
    net = Net()
    assert list(select_weights(net, ("encoder.*",))) == ["encoder.a.weight", "encoder.b.weight"]
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        INQController(select_weights(net, ("nothing*",)), LinearINQConfig(nbits=4), [])


@pytest.mark.parametrize("strategy", ["magnitude", "random"])
def test_partition_is_cumulative_and_reaches_each_fraction(strategy):
    net, c = controller(LinearINQConfig(nbits=4, inq_strategy=strategy))
    previous = {n: m.clone() for n, m in c.masks.items()}
    for fraction in STEPS:
        c.freeze(fraction)
        for name, mask in c.masks.items():
            assert int(mask.sum()) == round(fraction * mask.numel())
            assert torch.all(mask[previous[name]])  # once frozen, always frozen
            previous[name] = mask.clone()
    assert c.frozen_fraction() == 1.0


def test_magnitude_strategy_freezes_the_largest_remaining_weights():
    net, c = controller(LinearINQConfig(nbits=8))
    w = net.encoder["a"].weight.detach().clone()
    c.freeze(0.5)
    mask = c.masks["encoder.a.weight"]
    assert w.abs()[mask].min() >= w.abs()[~mask].max()
    # frozen weights now hold their quantized value, the others are untouched
    q = c.quantizers["encoder.a.weight"].project(w)
    now = net.encoder["a"].weight.detach()
    assert torch.equal(now[mask], q[mask]) and torch.equal(now[~mask], w[~mask])


def test_frozen_weights_never_move_under_adamw_with_weight_decay():
    net, c = controller(LinearINQConfig(nbits=3))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(64, 32), torch.randint(0, 2, (64,))
    for fraction in STEPS[:-1]:
        c.freeze(fraction)
        frozen = {n: p.detach()[c.masks[n]].clone() for n, p in c.weights.items()}
        free_before = {n: p.detach()[~c.masks[n]].clone() for n, p in c.weights.items()}
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            for n, p in c.weights.items():  # the gradient of frozen weights is masked
                assert torch.all(p.grad[c.masks[n]] == 0)
            opt.step()
            c.restore()
        for n, p in c.weights.items():
            assert torch.equal(p.detach()[c.masks[n]], frozen[n])
            assert not torch.equal(p.detach()[~c.masks[n]], free_before[n])  # the rest trains
    c.freeze(1.0)
    for n, p in c.weights.items():  # fully quantized: every value is a level
        levels = set(c.quantizers[n].levels().flatten().tolist())
        assert set(p.detach().unique().tolist()) <= levels


@pytest.mark.parametrize("cfg", [LinearINQConfig(nbits=2), Pow2INQConfig(nbits=5),
                                 MultiBitINQConfig(nbits=2)])
def test_summary_checks_the_level_count(cfg):
    net, c = controller(cfg)
    c.freeze(1.0)
    s = c.summary()
    assert s["quantized_fraction"] == 1.0
    assert 1 < s["max_distinct_values"] <= s["level_limit"]


def test_stage_starts_follow_epochs():
    assert stage_starts(900, [3, 2, 2, 2, 0]) == [0, 300, 500, 700, 900]
    assert stage_starts(10, [0, 0]) == [0, 0]


def test_lr_schedule_restarts_every_stage():
    starts = stage_starts(400, [2, 1, 1])  # [0, 200, 300]
    f = staged_lr_lambda(starts, 400, warmup_ratio=0.1)
    assert f(0) == 0.0 and f(20) == pytest.approx(1.0)  # warmup 20 steps in stage 1
    assert f(110) == pytest.approx(0.5)  # halfway down the decay: (200-110)/(200-20)
    assert f(199) == pytest.approx(1 / 180)
    assert f(200) == 0.0 and f(210) == pytest.approx(1.0)  # stage 2 warms up again
    assert f(300) == 0.0 and f(399) == pytest.approx(1 / 90)


@pytest.mark.parametrize("cfg", [LinearINQConfig(nbits=2, inq_scale="mse"),
                                 Pow2INQConfig(nbits=3, inq_scale="mse", granularity="row")])
def test_inq_scale_mse_sets_the_levels_and_zeros_are_counted(cfg):
    net, c = controller(cfg)
    before = {n: p.detach().clone() for n, p in c.weights.items()}
    c.freeze(1.0)  # one partition: every weight projected with the set fitted to it
    for n, p in c.weights.items():
        q = make_quantizer(cfg.mode, cfg.nbits, per_row=cfg.granularity == "row",
                           scale_rule="mse").fit(before[n])
        assert torch.equal(p.detach(), q.project(before[n]))
    s = c.summary()
    zeros = sum(int((p.detach() == 0).sum()) for p in c.weights.values())
    assert s["zero_fraction"] == zeros / sum(p.numel() for p in c.weights.values())
