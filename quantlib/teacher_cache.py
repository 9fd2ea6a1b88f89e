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

Across jobs: a teacher loaded from a checkpoint (qat-kd's, pruneofa's, distil-squad's
teacher_name_or_path) is the same teacher in every job of the sweep that names it, so its rows
are too. Such a job starts from the rows an earlier job of the sweep kept in
`<sweep_dir>/teacher_cache/<teacher>-<cls|qa>.pt` (shared_file: the teacher's identity is a
digest of its checkpoint files' names, sizes and modification times, so a checkpoint written
again is another teacher) and, when it computed rows of its own, writes them back at its end
(atomically: jobs that run at once each write a whole file, the last one stays). The keys are
digests of the teacher's inputs, so another tokenisation or sequence length only misses.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

DEFAULT_LIMIT_MB = 1024
ENV = "QUANTSWEEP_TEACHER_CACHE_MB"
CACHE_DIR = "teacher_cache"  # in a sweep directory: teacher rows its jobs share
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".pt")


def teacher_identity(path: str) -> str | None:
    """A digest of a teacher checkpoint's files (real path, names, sizes, modification times):
    a local directory, or a hub id's snapshot in the hub cache; None when neither is there."""
    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(path, "config.json")
        except Exception:  # noqa: BLE001 (not a hub id either: no identity, no sharing)
            found = None
        if not isinstance(found, str):
            return None
        folder = Path(found).parent
    h = hashlib.blake2b(digest_size=12)
    try:
        h.update(os.path.realpath(folder).encode("utf-8", "surrogateescape"))
        for f in sorted(folder.iterdir()):
            if f.suffix in WEIGHT_SUFFIXES and f.is_file():
                st = f.stat()
                h.update(f"\0{f.name}:{st.st_size}:{st.st_mtime_ns}".encode("utf-8",
                                                                           "surrogateescape"))
    except OSError:
        return None
    return h.hexdigest()


def shared_file(sweep_dir: str | None, teacher: str | None,
                question_answering: bool) -> Path | None:
    """Where the jobs of a sweep keep the rows of the teacher checkpoint `teacher` (None: no
    sweep directory, or a teacher without a checkpoint identity)."""
    if not sweep_dir or not teacher:
        return None
    ident = teacher_identity(teacher)
    if ident is None:
        return None
    return Path(sweep_dir) / CACHE_DIR / f"{ident}-{'qa' if question_answering else 'cls'}.pt"


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
        self.loaded = 0  # rows read from the sweep's shared file (load)

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

    # -- shared across the jobs of a sweep ----------------------------------------------------
    def load(self, path: Path) -> int:
        """Add the rows kept in `path` (those that fit the limit); how many. A file that is not
        there or does not read (another version's, half a disk) is no rows."""
        if not self.enabled:
            return 0
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            keys, heads = data["keys"], data["heads"]
            if not isinstance(keys, list) or len(keys) != len(heads):
                return 0
        except Exception:  # noqa: BLE001 (not ours, truncated, another version's: no rows)
            return 0
        added = 0
        for key, row in zip(keys, heads):
            k = bytes.fromhex(key)
            if k in self.rows:
                continue
            size = sum(r.numel() * r.element_size() for r in row) + len(k)
            if self.bytes + size > self.limit:
                break
            self.rows[k] = tuple(row)
            self.bytes += size
            added += 1
        self.loaded = added
        return added

    def save(self, path: Path) -> bool:
        """Write every row to `path` (atomically) when this cache computed any; whether it
        wrote."""
        if not self.enabled or not self.rows or self.misses == 0:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save({"keys": [k.hex() for k in self.rows],
                        "heads": [list(r) for r in self.rows.values()]}, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return True
