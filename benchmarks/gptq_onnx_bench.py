"""GPTQ 4-bit as onnxruntime's MatMulNBits against ONNX FP32 and dynamic INT8, on BERT-base shapes,
CPU: what `method: gptq` with `export: onnx` measures in a job, on a model the size of the real
one.

    python benchmarks/gptq_onnx_bench.py [--seq 128] [--group 128] [--threads 2]
    python benchmarks/gptq_onnx_bench.py --device cuda --calib-only   (benchmarks/gpu.sh)

BERT-base (12 layers x 768, random init), GPTQ of the encoder Linears at 4 bits in groups of
--group columns from 4 random batches of 8 x --seq tokens (quantlib.gptq.quantize_layers, as
the job runs it), then the FP32 export, its MatMulNBits rewrite (quantlib.export_nbits; as the
job writes it, accuracy_level 0, and with accuracy_level 4: int8 arithmetic) and onnxruntime's
quantize_dynamic of the FP32 file; latency at batch 1, the median of 50 runs after
10 warm-up runs, the three sessions in this process; file sizes; the largest difference of the
logits between the 4-bit file and PyTorch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from quantlib import export_nbits, export_onnx
from quantlib.gptq import quantize_layers


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", help="where GPTQ runs (cuda: benchmarks/gpu.sh)")
    p.add_argument("--calib-only", action="store_true",
                   help="time GPTQ's calibration and stop (no ONNX)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval().to(args.device)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1000, 30000, (8, args.seq), generator=g),
                "attention_mask": torch.ones(8, args.seq, dtype=torch.long)} for _ in range(4)]
    batches_dev = [{k: v.to(args.device) for k, v in b.items()} for b in batches]
    start = time.perf_counter()
    _, info, grids = quantize_layers(model, batches_dev, ("*encoder.layer.*",), 4,
                                     group_size=args.group)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    gptq_s = time.perf_counter() - start
    if args.calib_only:
        print(f"GPTQ of {int(info['gptq_layers'])} BERT-base Linears at 4 bits, groups of "
              f"{args.group}, from 4 batches of 8 x {args.seq} tokens on {args.device}: "
              f"{gptq_s:.1f} s (output error {info['gptq_error_vs_rtn']:.2f}x "
              "round-to-nearest's)")
        return
    model = model.cpu()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    feed = {"input_ids": batches[0]["input_ids"][:1].numpy(),
            "attention_mask": batches[0]["attention_mask"][:1].numpy(),
            "token_type_ids": torch.zeros(1, args.seq, dtype=torch.long).numpy()}
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        fp32, q4, q4i, int8 = (Path(tmp) / n for n in ("fp32.onnx", "q4.onnx", "q4i.onnx",
                                                        "int8.onnx"))
        export_onnx.export(model, fp32, names, args.seq, quantized=False)
        params = dict(model.named_parameters())
        weights = {n: params[n].detach().numpy() for n in grids}
        kernels = export_nbits.kernel_bits()
        rewritten, _ = export_nbits.to_matmul_nbits(fp32, q4, grids, weights, kernels)
        export_nbits.to_matmul_nbits(fp32, q4i, grids, weights, kernels, accuracy_level=4)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        rows = []
        for label, path in (("GPTQ 4-bit (MatMulNBits)", q4),
                            ("GPTQ 4-bit (MatMulNBits, accuracy_level 4)", q4i),
                            ("dynamic INT8", int8), ("FP32", fp32)):
            sess = export_onnx.session(path)
            ms = export_onnx.latency_ms(sess, feed)
            (logits,) = sess.run(["logits"], feed)
            rows.append((label, ms, path.stat().st_size / 1e6,
                         float(np.abs(logits - reference).max())))
    print(f"BERT-base, batch 1 x {args.seq} tokens, {args.threads} threads, onnxruntime CPU; "
          f"GPTQ of {rewritten} Linears in {gptq_s:.0f} s (output error "
          f"{info['gptq_error_vs_rtn']:.2f}x round-to-nearest's)")
    print("| model | latency (ms) | file (MB) | max |logit - PyTorch GPTQ| |")
    print("|---|---:|---:|---:|")
    for label, ms, mb, diff in rows:
        print(f"| {label} | {ms:.1f} | {mb:.1f} | {diff:.2e} |")
    for label, ms, mb, _ in rows[:2]:
        print(f"{label} vs FP32: {rows[3][1] / ms:.2f}x faster, {rows[3][2] / mb:.2f}x "
              f"smaller; vs dynamic INT8: {rows[2][1] / ms:.2f}x")


if __name__ == "__main__":
    main()
