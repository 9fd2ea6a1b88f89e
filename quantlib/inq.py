"""Incremental Network Quantization (Zhou et al., ICLR 2017, arXiv:1702.03044) as a stage
callback (quantlib.stages.StageCallback).

Training is one HF Trainer run split into stages (quantlib.stages.TrainingStage: an optional
FP32 fine-tune, then one stage per accumulated fraction). At the first step of a stage the
controller freezes the next partition: of the weights still in full precision, the
largest-magnitude ones (or random ones) until the frozen fraction reaches the stage's fraction,
replacing them by their quantized value. Frozen
weights never move: their gradient is masked in backward (so Adam moments stay clean) and the
optimizer's update is undone after every step (so weight decay and old moments cannot move them
either). The learning-rate schedule restarts (warmup + linear decay) at every stage
(quantlib.stages.staged_lr_lambda).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from quantlib import bitwidths
from quantlib.configs import INQConfig, LinearINQConfig, MultiBitINQConfig, Pow2INQConfig
from quantlib.model_size import Code
from quantlib.packed import Packed, from_inq
from quantlib.quantizers import Quantizer, make_quantizer, max_levels
from quantlib.stages import NO_LINEAR, StageCallback, TrainingStage, stage_starts


def quantizer_for(cfg: INQConfig) -> tuple[str, dict]:
    if isinstance(cfg, LinearINQConfig):
        return "lin", {"per_row": cfg.granularity == "row", "scale_rule": cfg.inq_scale}
    if isinstance(cfg, Pow2INQConfig):
        return "p2", {"per_row": cfg.granularity == "row", "scale_rule": cfg.inq_scale}
    if isinstance(cfg, MultiBitINQConfig):
        return "mb", {"cycles": cfg.amq_cycles}
    raise TypeError(f"no quantizer for {type(cfg).__name__}")


class INQController(StageCallback):
    def __init__(self, weights: dict[str, nn.Parameter], cfg: INQConfig,
                 stages: list[TrainingStage], seed: int = 0):
        if not weights:
            raise ValueError(NO_LINEAR)
        self.cfg = cfg
        self.mode, self.qkw = quantizer_for(cfg)
        self.weights = weights
        modules = {bitwidths.module_of(n): n for n in weights}
        bitwidths.require_matched(modules, cfg.nbits_per_module)
        self.bits = {modules[m]: b for m, b in
                     bitwidths.assign(modules, cfg.nbits, cfg.nbits_per_module).items()}
        self.stages = stages
        self.starts: list[int] = []
        self.applied = 0  # stages whose partition has been frozen
        self.quantizers: dict[str, Quantizer] = {}
        self.masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in weights.items()}
        self.values = {n: torch.zeros_like(p) for n, p in weights.items()}
        self.generator = torch.Generator().manual_seed(seed)
        self._hooks = [p.register_hook(lambda g, m=self.masks[n]: g.masked_fill(m, 0))
                       for n, p in weights.items()]

    # -- the partition -------------------------------------------------------------------
    @torch.no_grad()
    def freeze(self, fraction: float) -> None:
        for name, p in self.weights.items():
            mask = self.masks[name]
            if name not in self.quantizers:
                self.quantizers[name] = make_quantizer(self.mode, self.bits[name],
                                                       **self.qkw).fit(p.detach().float())
            n_target = p.numel() if fraction >= 1.0 else round(fraction * p.numel())
            n_new = n_target - int(mask.sum())
            if n_new <= 0:
                continue
            if self.cfg.inq_strategy == "magnitude":
                score = p.detach().abs().float().flatten()
            else:
                score = torch.rand(p.numel(), generator=self.generator).to(p.device)
            score = score.masked_fill(mask.flatten(), -1.0)
            new = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
            new[torch.topk(score, n_new, sorted=False).indices] = True
            new = new.view_as(mask)
            q = self.quantizers[name].project(p.detach().float()).to(p.dtype)
            self.values[name] = torch.where(new, q, self.values[name])
            mask |= new
            p.data.copy_(torch.where(mask, self.values[name], p.data))

    @torch.no_grad()
    def restore(self) -> None:
        """Undo any optimizer update of frozen weights."""
        for name, p in self.weights.items():
            p.data.copy_(torch.where(self.masks[name], self.values[name], p.data))

    def frozen_fraction(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return sum(int(m.sum()) for m in self.masks.values()) / total

    def apply_due(self, step: int | None) -> None:
        """Freeze every stage's partition whose start step has been reached (None: all)."""
        while self.applied < len(self.stages):
            stage = self.stages[self.applied]
            if step is not None and (self.applied >= len(self.starts)
                                     or self.starts[self.applied] > step):
                break
            if stage.fraction is not None:
                self.freeze(stage.fraction)
            self.applied += 1

    def summary(self) -> dict[str, float]:
        """Check that the model is fully quantized; return figures for the results."""
        per_row = self.mode == "mb" or self.qkw.get("per_row", False)
        distinct = over = 0
        for name, p in self.weights.items():
            rows = p.detach().reshape(p.shape[0], -1)
            if per_row:  # a level set per row: count within a few rows
                per = max(int(torch.unique(rows[i]).numel()) for i in range(min(len(rows), 8)))
            else:
                per = int(torch.unique(rows).numel())
            distinct = max(distinct, per)
            over += per > max_levels(self.mode, self.bits[name])
        limit = max(max_levels(self.mode, b) for b in self.bits.values())
        zeros = sum(int((p.detach() == 0).sum()) for p in self.weights.values())
        total = sum(p.numel() for p in self.weights.values())
        return {"quantized_fraction": self.frozen_fraction(),
                "quantized_params": float(total), "zero_fraction": zeros / total,
                "max_distinct_values": float(distinct), "level_limit": float(limit),
                "weights_over_level_limit": float(over)}

    def codes(self) -> dict[str, Code]:
        """How each weight is stored: nbits per value and its quantizer's scales."""
        return {n: Code(self.bits[n], q.scale_bytes()) for n, q in self.quantizers.items()}

    def packed(self) -> dict[str, Packed]:
        """Each fully quantized weight's integer codes and level set (quantlib.packed)."""
        return {n: from_inq(q, self.weights[n]) for n, q in self.quantizers.items()}

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- checkpoints ----------------------------------------------------------------------
    STATE_FILE = "inq_state.pt"

    def state_dict(self) -> dict:
        return {"applied": self.applied, "masks": self.masks, "values": self.values,
                "quantizers": self.quantizers, "generator": self.generator.get_state()}

    @torch.no_grad()
    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Restore the partition from a checkpoint (in place: the gradient hooks hold the
        mask tensors)."""
        state = torch.load(Path(checkpoint_dir) / self.STATE_FILE, weights_only=False)
        self.applied = state["applied"]
        for name in self.masks:
            self.masks[name].copy_(state["masks"][name])
            self.values[name] = state["values"][name].to(self.values[name].device)
        self.quantizers = state["quantizers"]
        self.generator.set_state(state["generator"])

    # -- TrainerCallback events ----------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        torch.save(self.state_dict(), folder / self.STATE_FILE)

    def on_train_begin(self, args, state, control, **kwargs):
        self.starts = stage_starts(state.max_steps, [s.epochs for s in self.stages])
        self.apply_due(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.apply_due(state.global_step)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.restore()

    def on_train_end(self, args, state, control, **kwargs):
        self.apply_due(None)
