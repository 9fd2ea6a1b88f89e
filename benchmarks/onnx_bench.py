"""ONNX INT8 (QDQ) against ONNX FP32 on BERT-base shapes, CPU, onnxruntime: what `export: onnx`
measures in a job, on a model the size of the real one.

    python benchmarks/onnx_bench.py [--mode ft2] [--seq 128] [--threads 2]

BERT-base (12 layers x 768, 30,522 words, random init), PTQ in FasterTransformer's mode with a
max calibration on 4 random batches, exported as the job exports it (int8 weights feeding
DequantizeLinear, activation QDQ at the calibrated scales) and as FP32; latency at batch 1, the
median of 50 runs after 10 warm-up runs, both sessions in this process; file sizes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from quantlib import export_onnx
from quantlib.configs import PTQConfig
from quantlib.qmodules import quantizers
from quantlib.quantize_model import calibrate, enable, fuse_qkv, install_ft


def bert_base_ptq(mode: str, seq: int) -> tuple[BertForSequenceClassification, list[dict]]:
    """BERT-base (random init) with PTQ in FT's `mode`, max-calibrated on 4 random batches of
    8 x `seq` tokens, its quantizers on; and those batches."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    install_ft(model, PTQConfig(quant_mode=mode, calibrator="max"), ("*encoder.layer.*",))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1000, 30000, (8, seq), generator=g),
                "attention_mask": torch.ones(8, seq, dtype=torch.long)} for _ in range(4)]
    calibrate(model, batches)
    if mode != "ft1":
        fuse_qkv(model)
    enable(quantizers(model).values())
    return model, batches


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="ft2", choices=("ft1", "ft2", "ft3"))
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, batches = bert_base_ptq(args.mode, args.seq)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    feed = {"input_ids": batches[0]["input_ids"][:1].numpy(),
            "attention_mask": batches[0]["attention_mask"][:1].numpy(),
            "token_type_ids": torch.zeros(1, args.seq, dtype=torch.long).numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, quantized in (("int8 (QDQ, " + args.mode + ")", True), ("fp32", False)):
            path = Path(tmp) / f"{quantized}.onnx"
            start = time.perf_counter()
            export_onnx.export(model, path, names, args.seq, quantized)
            spent = time.perf_counter() - start
            ms = export_onnx.latency_ms(export_onnx.session(path), feed)
            rows.append((label, ms, path.stat().st_size / 1e6, spent))
    print(f"BERT-base, batch 1 x {args.seq} tokens, {args.threads} threads, onnxruntime CPU")
    print("| model | latency (ms) | file (MB) | export (s) |")
    print("|---|---:|---:|---:|")
    for label, ms, mb, spent in rows:
        print(f"| {label} | {ms:.1f} | {mb:.1f} | {spent:.1f} |")
    print(f"speedup int8 / fp32: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
