"""Sparsity: masks (unstructured magnitude, 2:4 as NVIDIA ASP's m4n2_1d, the pattern of a
pre-sparsified checkpoint) and PatternLock, the stage callback (quantlib.stages) that keeps them
through training.

PatternLock, as ASP does it, masks every locked weight's gradient just before each optimizer
step and the weight itself just after it (AdamW's decoupled weight decay and momentum would
otherwise move pruned weights off zero), in place (masked_fill_ with the stored complement of the
mask: no temporary the size of the weights). The masks travel in checkpoints (masks.pt), so a
resumed job keeps exactly its pattern.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from quantlib.stages import StageCallback, stage_starts

MASKS_FILE = "masks.pt"
# the 6 ways of keeping 2 of 4, in a fixed order (ties go to the first)
PATTERNS_24 = torch.tensor([[1.0 if i in keep else 0.0 for i in range(4)]
                            for keep in itertools.combinations(range(4), 2)])


def can_24(w: torch.Tensor) -> bool:
    """ASP's shape rule for 2:4 on tensor cores: rows % 8 == 0 and columns % 16 == 0."""
    return w.dim() == 2 and w.shape[0] % 8 == 0 and w.shape[1] % 16 == 0


def mask_24(w: torch.Tensor) -> torch.Tensor:
    """For each group of 4 consecutive input elements of a row, keep the 2 of largest |w|: of
    the 6 patterns, the one maximising the kept sum of |w|. Works on any device and dtype."""
    if w.dim() != 2 or w.shape[1] % 4:
        raise ValueError(f"2:4 needs a 2-D weight with columns divisible by 4, got "
                         f"{tuple(w.shape)}")
    groups = w.detach().abs().float().reshape(-1, 4)
    patterns = PATTERNS_24.to(groups.device)
    best = (groups @ patterns.T).argmax(dim=1)
    return patterns[best].reshape(w.shape).to(torch.bool)


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float,
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """Unstructured magnitude pruning: zero the `sparsity` fraction of smallest |w|, in each
    tensor (scope "layer") or over all of them together ("global"). Exactly round(sparsity * n)
    weights go (ties: the first in memory order)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity} is outside [0, 1)")
    if scope == "layer":
        return {name: _smallest_out(w.detach().abs().flatten(), sparsity).reshape(w.shape)
                for name, w in weights.items()}
    if scope != "global":
        raise ValueError(f"scope {scope!r}: layer or global")
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
    keep = _smallest_out(flat, sparsity)
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start:start + w.numel()].reshape(w.shape).to(w.device)
        start += w.numel()
    return out


def _smallest_out(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    """keep-mask without the k = round(sparsity * n) smallest values; among values equal to
    the k-th smallest, the first in memory order go (what a stable sort would remove)."""
    k = round(sparsity * values.numel())
    if k == 0:
        return torch.ones_like(values, dtype=torch.bool)
    threshold = torch.kthvalue(values.float().cpu(), k).values.to(values.device)
    keep = values > threshold
    ties = torch.nonzero(values == threshold).flatten()
    below = int((values < threshold).sum())
    keep[ties[k - below:]] = True  # ties beyond the k-th stay
    return keep


def nonzero_masks(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pattern lock: the zeros a (pre-sparsified) weight has now stay zero."""
    return {name: w.detach() != 0 for name, w in weights.items()}


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    """Fraction of exact zeros over all the given weights."""
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w.detach() == 0).sum()) for w in weights.values())
    return zeros / total if total else 0.0


def is_24(w: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive elements of each row."""
    return bool(((w.detach().reshape(-1, 4) != 0).sum(dim=1) <= 2).all())


class PatternLock(StageCallback):
    """From the first step of stage `stage_index` on (0: from the start), `make_masks()` fixes
    the masks and the weights keep them: pruned at once, gradients and weights masked at every
    step. Stages are given in epochs, like the other stage callbacks."""

    def __init__(self, params: dict[str, nn.Parameter],
                 make_masks: Callable[[], dict[str, torch.Tensor]],
                 stage_epochs: list[float] | None = None, stage_index: int = 0):
        self.params = params
        self.make_masks = make_masks
        self.stage_epochs = stage_epochs or [1.0]
        self.stage_index = stage_index
        self.masks: dict[str, torch.Tensor] = {}
        self._pruned: dict[str, torch.Tensor] = {}  # ~mask, for in-place masked_fill_
        self.start = 0
        self.resume_dir: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.masks)

    def lock(self, masks: dict[str, torch.Tensor] | None = None) -> None:
        masks = self.make_masks() if masks is None else masks
        missing = set(self.params) - set(masks)
        if missing:
            raise ValueError(f"no mask for {sorted(missing)[:3]}")
        self.masks = {n: masks[n].to(device=self.params[n].device, dtype=torch.bool)
                      for n in self.params}
        self._pruned = {n: ~m for n, m in self.masks.items()}
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for name, p in self.params.items():
            p.masked_fill_(self._pruned[name], 0)

    @torch.no_grad()
    def mask_grads(self) -> None:
        for name, p in self.params.items():
            if p.grad is not None:
                p.grad.masked_fill_(self._pruned[name], 0)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.resume_dir = checkpoint_dir

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = stage_starts(state.max_steps, self.stage_epochs)[self.stage_index]
        if self.resume_dir is not None and state.global_step > self.start and not self.active:
            self.lock(torch.load(Path(self.resume_dir) / MASKS_FILE, map_location="cpu"))
        self._due(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._due(state.global_step)

    def _due(self, step: int) -> None:
        if not self.active and step >= self.start:
            self.lock()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.active:
            self.mask_grads()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.active:
            self.apply()

    def on_train_end(self, args, state, control, **kwargs):
        if not self.active:  # a stage of no steps: prune all the same
            self.lock()
        self.apply()

    def on_save(self, args, state, control, **kwargs):
        if self.active:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            torch.save({n: m.cpu() for n, m in self.masks.items()}, folder / MASKS_FILE)
