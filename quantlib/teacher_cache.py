"""A frozen teacher's logits, computed once per example and reused every later epoch.

The teacher of a distillation loss never trains (quantlib.distill.frozen_copy: eval mode, no
dropout, no gradients) and GLUE / SQuAD inputs are not augmented, so an example gives the same
teacher logits in every epoch; only the batch it lands in changes (the trainer shuffles). The
cache keeps each example's rows of the teacher's logit heads, keyed by a digest of the
example's own inputs:

- classification and regression heads ([batch, labels]) do not depend on the padding (the
  padded positions are masked out of attention), so the key covers the example's unpadded
  tokens and a row serves the example whatever the length its later batch pads to;
- question-answering heads ([batch, sequence]) have a value at every position, padding
  included, and those enter the KL term: the key covers the whole padded row, so a row is
  reused only for the same padded input.

A batch whose examples are all cached is assembled from the cache; any miss runs the teacher
on the whole batch, as without a cache, and stores its rows. The loss is the same function of
the same teacher logits; a cached row computed in another batch can differ from a fresh one
in the last bits of float32 (BLAS blocking), nothing more (tests/test_teacher_cache.py).

Hidden states and attention maps (distill-quant's "layers" loss) are not cached: their padded
positions enter the MSE terms and they take 13 x n x 768 + 12 x 12 x n^2 floats per example
(about 5 MB at n = 128: 18 GB for MRPC's 3,668 training examples), past any sensible bound.

The cache holds at most QUANTSWEEP_TEACHER_CACHE_MB (default 1024) of rows (SQuAD's 88k
features x 2 x 384 float32: 270 MB); past it, new rows are not kept. 0 turns it off. It lives
as long as its teacher: a new teacher (the next stage, a resumed job) starts an empty one.
"""

from __future__ import annotations

import hashlib
import os

import torch

DEFAULT_LIMIT_MB = 1024
ENV = "QUANTSWEEP_TEACHER_CACHE_MB"


def limit_bytes() -> int:
    try:
        mb = float(os.environ.get(ENV, DEFAULT_LIMIT_MB))
    except ValueError:
        mb = DEFAULT_LIMIT_MB
    return max(0, int(mb * (1 << 20)))


class TeacherCache:
    def __init__(self, limit: int | None = None):
        self.limit = limit_bytes() if limit is None else limit
        self.rows: dict[bytes, tuple[torch.Tensor, ...]] = {}
        self.bytes = 0
        self.hits = 0  # batches served from the cache
        self.misses = 0  # batches the teacher ran on
        self.whole_rows: bool | None = None  # QA heads: key on the padded row (the Distiller says)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def keys(self, inputs: dict) -> list[bytes]:
        """One digest per example of the 2-D tensors the teacher reads (its ids, mask and
        segments), over the unpadded positions, or the whole row for QA heads."""
        names = sorted(k for k, v in inputs.items() if torch.is_tensor(v) and v.dim() == 2)
        rows = {k: inputs[k].detach().cpu() for k in names}
        mask = rows.get("attention_mask")
        batch = next(iter(rows.values())).shape[0] if rows else 0
        out = []
        for i in range(batch):
            keep = None if self.whole_rows or mask is None else mask[i].bool()
            h = hashlib.blake2b(digest_size=20)
            for name in names:
                row = rows[name][i] if keep is None else rows[name][i][keep]
                h.update(f"{name}:{row.dtype}:{row.shape[0]}:".encode())
                h.update(row.contiguous().numpy().tobytes())
            out.append(h.digest())
        return out

    def get(self, keys: list[bytes]) -> list[torch.Tensor] | None:
        """The batch's heads, stacked from the cache, when every example is there."""
        if not self.enabled or not keys:
            return None
        found = [self.rows.get(k) for k in keys]
        if any(f is None for f in found):
            return None
        self.hits += 1
        return [torch.stack([f[h] for f in found]) for h in range(len(found[0]))]

    def put(self, keys: list[bytes], heads: list[torch.Tensor]) -> None:
        self.misses += 1
        if not self.enabled:
            return
        for i, key in enumerate(keys):
            if key in self.rows:
                continue
            row = tuple(h[i].detach().clone() for h in heads)
            size = sum(r.numel() * r.element_size() for r in row) + len(key)
            if self.bytes + size > self.limit:
                return
            self.rows[key] = row
            self.bytes += size
