"""A distillation step (student forward + backward, the teacher's logits) with the teacher's
logits from quantlib.teacher_cache vs the teacher run on the batch, on BERT-base shapes
(12 layers, hidden 768, 12 heads; batch 16 x 128 tokens), CPU, randomly initialised (no
download). The two are timed interleaved, REPS times each, in one process; the figure is the
ratio of the medians (cached / today), with both medians and the machine's CPU flags.

    python benchmarks/teacher_cache_bench.py [REPS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "fma")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def main(argv: list[str]) -> int:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from quantlib.configs import QATKDConfig
    from quantlib.distill import Distiller, frozen_copy
    from quantlib.teacher_cache import TeacherCache

    reps = int(argv[0]) if argv else 5
    torch.manual_seed(0)
    student = BertForSequenceClassification(BertConfig(num_labels=2))  # BERT-base shapes
    teacher = frozen_copy(student)
    student.train()
    batch = {"input_ids": torch.randint(1000, 30000, (16, 128)),
             "attention_mask": torch.ones(16, 128, dtype=torch.long),
             "token_type_ids": torch.zeros(16, 128, dtype=torch.long),
             "labels": torch.randint(0, 2, (16,))}
    cached, plain = Distiller(QATKDConfig(), False), Distiller(QATKDConfig(), False)
    cached.teacher = teacher
    plain.teacher = teacher
    plain.cache = TeacherCache(limit=0)
    cached.compute_loss(student, dict(batch))  # the first epoch: fills the cache

    def step(d: Distiller) -> float:
        t0 = time.perf_counter()
        loss = d.compute_loss(student, dict(batch))
        loss.backward()
        student.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(plain)  # warm-up
    step(cached)
    times: dict[str, list[float]] = {"today": [], "cached": []}
    for _ in range(reps):
        times["today"].append(step(plain))
        times["cached"].append(step(cached))
    assert cached.cache.hits == reps + 1, cached.cache.hits
    today, with_cache = (statistics.median(times[k]) for k in ("today", "cached"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU flags: "
          f"{cpu_flags()}")
    print(f"KD step, BERT-base, batch 16 x 128: today {today:.3f} s, cached teacher "
          f"{with_cache:.3f} s (median of {reps}); ratio {with_cache / today:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
