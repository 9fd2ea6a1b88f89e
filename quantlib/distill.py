"""Knowledge-distillation losses and the Distiller a StagedTrainer asks for its loss.

Variants (each named, and the name recorded with the results, so that runs with different
losses are never averaged as one):
- "ft" (QAT+KD, FasterTransformer): CE(labels) + scale * KL(teacher/T || student/T), KL as
  F.kl_div(log_softmax(s/T), softmax(t/T)) with reduction "mean" (over all elements) or
  "batchmean", optionally times T^2. Regression tasks: MSE(student, teacher) instead of KL.
- "layers" (distill-quant, INC IntermediateLayers / ZeroQuant): sum over layers of MSE between
  student and teacher layer outputs, plus sum of MSE between attention probabilities, plus the
  logits term (MSE, or KL at T), plus an optional CE term.
- "t2" (Prune OFA; DistilBERT on SQuAD): w_hard * the student's task loss + w_kd * T^2 *
  KL(teacher/T || student/T) with batchmean reduction; for SQuAD the mean of the start and the
  end KL (DistilBERT's loss_ce = (loss_start + loss_end) / 2).
For SQuAD the KL terms of the start and end logits are summed in "ft" (FasterTransformer's
run_squad.py: dloss = loss_start + loss_end; kd_heads="mean" averages them) and averaged in
"t2" (DistilBERT).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantlib.configs import DistillQuantConfig, DistilSquadConfig, PruneOFAConfig, QATKDConfig
from quantlib.teacher_cache import TeacherCache

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def logit_heads(outputs: Any) -> list[torch.Tensor]:
    """[logits], or [start_logits, end_logits] of a question-answering model."""
    start = getattr(outputs, "start_logits", None)
    if start is not None:
        return [start, outputs.end_logits]
    return [outputs.logits]


def kl_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            reduction: str = "mean", t_squared: bool = False) -> torch.Tensor:
    total = F.kl_div(F.log_softmax(student / temperature, dim=-1),
                     F.softmax(teacher / temperature, dim=-1), reduction="sum")
    # "mean": over every element (FT; torch's own "mean" is due to become "batchmean")
    kl = total / (student.numel() if reduction == "mean" else student.shape[0])
    return kl * temperature ** 2 if t_squared else kl


def ft_kd_loss(student: torch.Tensor | list[torch.Tensor],
               teacher: torch.Tensor | list[torch.Tensor], ce: torch.Tensor,
               cfg: QATKDConfig, regression: bool = False) -> tuple[torch.Tensor, dict]:
    pairs = list(zip(*[x if isinstance(x, list) else [x] for x in (student, teacher)]))
    if regression:
        kd = F.mse_loss(*pairs[0])
    else:
        # SQuAD: FT's run_squad.py adds the start and the end term (kd_heads "sum")
        kd = sum(kl_term(s, t, cfg.kd_temperature, cfg.kd_reduction, cfg.kd_t_squared)
                 for s, t in pairs) / (len(pairs) if cfg.kd_heads == "mean" else 1)
    return ce + cfg.kd_scale * kd, {"ce": ce, "kd": kd}


def t2_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], hard: torch.Tensor,
            w_hard: float, w_kd: float, temperature: float,
            regression: bool = False) -> tuple[torch.Tensor, dict]:
    """w_hard * hard + w_kd * T^2 * KL_batchmean(teacher/T || student/T), KL averaged over the
    heads (start/end); MSE for a regression head."""
    if regression:
        kd = F.mse_loss(student[0], teacher[0])
    else:
        kd = sum(kl_term(s, t, temperature, "batchmean", True)
                 for s, t in zip(student, teacher)) / len(student)
    loss = w_kd * kd
    if w_hard:
        loss = loss + w_hard * hard
    return loss, {"hard": hard, "kd": kd}


def t2_weights(cfg: PruneOFAConfig | DistilSquadConfig) -> tuple[float, float]:
    if isinstance(cfg, DistilSquadConfig):
        return cfg.alpha_squad, cfg.alpha_ce
    return cfg.ce_weight, cfg.kd_weight


def t2_name(cfg: PruneOFAConfig | DistilSquadConfig) -> str:
    hard, kd = t2_weights(cfg)
    return (f"{hard:g} * task loss + {kd:g} * T^2 * kl_batchmean(softmax(t/T) || softmax(s/T), "
            f"T={cfg.kd_temperature:g}) (SQuAD: mean of start and end)")


def ft_kd_name(cfg: QATKDConfig) -> str:
    t2 = " * T^2" if cfg.kd_t_squared else ""
    heads = "start + end" if cfg.kd_heads == "sum" else "mean of start and end"
    return (f"ce + {cfg.kd_scale:g} * kl(softmax(t/T) || softmax(s/T), T={cfg.kd_temperature:g},"
            f" reduction={cfg.kd_reduction}){t2} (SQuAD: {heads})")


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

    def __init__(self, cfg: QATKDConfig | DistillQuantConfig | PruneOFAConfig |
                 DistilSquadConfig, regression: bool, sep_token_id: int | None = None):
        self.cfg = cfg
        self.regression = regression
        self._teacher: nn.Module | None = None
        self.cache = TeacherCache()
        # the sweep's file of this teacher's rows (quantlib.teacher_cache.shared_file): read when
        # the teacher is set, written by save_shared
        self.shared: Path | None = None
        self.layers = isinstance(cfg, DistillQuantConfig)
        self.t2 = isinstance(cfg, (PruneOFAConfig, DistilSquadConfig))
        self.sep_token_id = sep_token_id  # to give a BERT teacher the segments a student lacks

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher

    @teacher.setter
    def teacher(self, model: nn.Module | None) -> None:
        """A new teacher (a stage's start, a resumed job) starts an empty cache, or the rows
        the sweep's earlier jobs kept of the same teacher checkpoint (`shared`)."""
        self._teacher = model
        self.cache = TeacherCache()
        if model is not None and self.shared is not None:
            self.cache.load(self.shared)

    def save_shared(self) -> dict:
        """Keep this job's teacher rows for the sweep's later jobs; what the cache did (for
        the results)."""
        wrote = False
        if self.shared is not None and self._teacher is not None:
            try:
                wrote = self.cache.save(self.shared)
            except OSError as exc:  # a full disk costs later jobs their shortcut, not this job
                print(f"quantlib.distill: teacher rows not kept: {exc}", flush=True)
        c = self.cache
        return {"teacher_cache_rows": len(c.rows), "teacher_cache_loaded": c.loaded,
                "teacher_cache_hits": c.hits, "teacher_cache_misses": c.misses,
                "teacher_cache_saved": wrote}

    def teacher_heads(self, inputs: dict, question_answering: bool) -> list[torch.Tensor]:
        """The teacher's logit heads for a batch: from the cache when every example is there
        (quantlib.teacher_cache), else from the teacher, stored for the epochs after.
        question_answering: start/end heads, a value per position (keyed by the padded row)."""
        assert self.teacher is not None
        tin = self.teacher_inputs(inputs)
        cache = self.cache
        keys: list[bytes] = []
        if cache.enabled:
            cache.whole_rows = question_answering
            keys = cache.keys(tin)
            heads = cache.get(keys)
            if heads is not None:
                return heads
        with torch.no_grad():
            heads = logit_heads(self.teacher(**tin))
        if cache.enabled:
            cache.put(keys, heads)
        return heads

    @property
    def name(self) -> str:
        if self.t2:
            return t2_name(self.cfg)
        return layers_kd_name(self.cfg) if self.layers else ft_kd_name(self.cfg)

    def teacher_inputs(self, inputs: dict) -> dict:
        plain = {k: v for k, v in inputs.items() if k not in LABEL_KEYS}
        assert self.teacher is not None
        if "token_type_ids" not in plain and self.sep_token_id is not None and (
                "token_type_ids" in inspect.signature(self.teacher.forward).parameters):
            plain["token_type_ids"] = segment_ids(plain["input_ids"], self.sep_token_id,
                                                  plain.get("attention_mask"))
        return plain

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False):
        assert self.teacher is not None
        extra = {"output_hidden_states": True, "output_attentions": True} if self.layers else {}
        outputs = model(**inputs, **extra)
        if self.layers:  # hidden states and attention maps: not cached (teacher_cache)
            with torch.no_grad():
                t = self.teacher(**self.teacher_inputs(inputs), **extra)
            loss, _ = layers_kd_loss(outputs, t, self.cfg, self.regression)
        else:
            student = logit_heads(outputs)
            teacher = self.teacher_heads(inputs, question_answering=len(student) > 1)
            if self.t2:
                hard, kd = t2_weights(self.cfg)
                loss, _ = t2_loss(student, teacher, outputs.loss, hard, kd,
                                  self.cfg.kd_temperature, self.regression)
            else:
                loss, _ = ft_kd_loss(student, teacher, outputs.loss, self.cfg, self.regression)
        return (loss, outputs) if return_outputs else loss


def segment_ids(input_ids: torch.Tensor, sep_token_id: int,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BERT's token_type_ids of "[CLS] a [SEP] b [SEP]": 0 up to the first [SEP], 1 after it
    (0 on padding)."""
    is_sep = (input_ids == sep_token_id).long()
    after_first = (torch.cumsum(is_sep, dim=-1) - is_sep) >= 1
    tt = after_first.long()
    if attention_mask is not None:
        tt = tt * attention_mask.long()
    return tt
