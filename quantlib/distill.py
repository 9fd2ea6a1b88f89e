"""Knowledge-distillation losses and the Distiller a StagedTrainer asks for its loss.

Variants (methods.md, pitfall 7: each is named and recorded with the results):
- "ft" (QAT+KD, FasterTransformer): CE(labels) + scale * KL(teacher/T || student/T), KL as
  F.kl_div(log_softmax(s/T), softmax(t/T)) with reduction "mean" (over all elements) or
  "batchmean", optionally times T^2. Regression tasks: MSE(student, teacher) instead of KL.
- "layers" (distill-quant, INC IntermediateLayers / ZeroQuant): sum over layers of MSE between
  student and teacher layer outputs, plus sum of MSE between attention probabilities, plus the
  logits term (MSE, or KL at T), plus an optional CE term.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantlib.configs import DistillQuantConfig, QATKDConfig


def kl_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            reduction: str = "mean", t_squared: bool = False) -> torch.Tensor:
    total = F.kl_div(F.log_softmax(student / temperature, dim=-1),
                     F.softmax(teacher / temperature, dim=-1), reduction="sum")
    # "mean": over every element (FT; torch's own "mean" is due to become "batchmean")
    kl = total / (student.numel() if reduction == "mean" else student.shape[0])
    return kl * temperature ** 2 if t_squared else kl


def ft_kd_loss(student: torch.Tensor, teacher: torch.Tensor, ce: torch.Tensor,
               cfg: QATKDConfig, regression: bool = False) -> tuple[torch.Tensor, dict]:
    if regression:
        kd = F.mse_loss(student, teacher)
    else:
        kd = kl_term(student, teacher, cfg.kd_temperature, cfg.kd_reduction, cfg.kd_t_squared)
    return ce + cfg.kd_scale * kd, {"ce": ce, "kd": kd}


def ft_kd_name(cfg: QATKDConfig) -> str:
    t2 = " * T^2" if cfg.kd_t_squared else ""
    return (f"ce + {cfg.kd_scale:g} * kl(softmax(t/T) || softmax(s/T), T={cfg.kd_temperature:g},"
            f" reduction={cfg.kd_reduction}){t2}")


def layers_kd_loss(s: Any, t: Any, cfg: DistillQuantConfig,
                   regression: bool = False) -> tuple[torch.Tensor, dict]:
    """s, t: model outputs with hidden_states (embeddings first) and attentions."""
    layer = sum(F.mse_loss(a, b) for a, b in zip(s.hidden_states[1:], t.hidden_states[1:]))
    attn = sum(F.mse_loss(a, b) for a, b in zip(s.attentions, t.attentions))
    if cfg.logits_loss == "kl" and not regression:
        logits = kl_term(s.logits, t.logits, cfg.kd_temperature, "batchmean", True)
    else:
        logits = F.mse_loss(s.logits, t.logits)
    loss = cfg.layer_weight * layer + cfg.attention_weight * attn + cfg.logits_weight * logits
    if cfg.ce_weight:
        loss = loss + cfg.ce_weight * s.loss
    return loss, {"layers": layer, "attentions": attn, "logits": logits}


def layers_kd_name(cfg: DistillQuantConfig) -> str:
    logits = ("mse(logits)" if cfg.logits_loss == "mse"
              else f"T^2 * kl_batchmean(logits, T={cfg.kd_temperature:g})")
    name = (f"{cfg.layer_weight:g} * sum mse(layer outputs) + {cfg.attention_weight:g} * "
            f"sum mse(attention probs) + {cfg.logits_weight:g} * {logits}")
    return name + (f" + {cfg.ce_weight:g} * ce" if cfg.ce_weight else "")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A teacher: a deep copy that never trains (its quantizers stay as they are, off)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Distiller:
    """The loss a StagedTrainer uses once `teacher` is set (at the start of the quantized
    stage, so an FP fine-tuning stage before it trains on the plain task loss)."""

    def __init__(self, cfg: QATKDConfig | DistillQuantConfig, regression: bool):
        self.cfg = cfg
        self.regression = regression
        self.teacher: nn.Module | None = None
        self.layers = isinstance(cfg, DistillQuantConfig)

    @property
    def name(self) -> str:
        return layers_kd_name(self.cfg) if self.layers else ft_kd_name(self.cfg)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False):
        assert self.teacher is not None
        extra = {"output_hidden_states": True, "output_attentions": True} if self.layers else {}
        outputs = model(**inputs, **extra)
        plain = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            t = self.teacher(**plain, **extra)
        if self.layers:
            loss, _ = layers_kd_loss(outputs, t, self.cfg, self.regression)
        else:
            loss, _ = ft_kd_loss(outputs.logits, t.logits, outputs.loss, self.cfg,
                                 self.regression)
        return (loss, outputs) if return_outputs else loss
