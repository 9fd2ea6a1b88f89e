"""Low-bit files that are low-bit, on BERT-base shapes: what `export: onnx` writes for INQ's
encodings, its size against the FP32 model and the size formula, and, where onnxruntime has a
MatMulNBits kernel (2, 4, 8 bits), the export's batch-1 latency against ONNX FP32 and
onnxruntime's dynamic INT8 in the same process.

    python benchmarks/packed_bench.py [--seq 128] [--threads 2] [--latency-bits 2,4,8]
                                      [--modes lin,p2,mb]

BERT-base (12 layers x 768, random init, std 0.02 as BERT's initializer, so the weights are as
Gaussian as a pre-trained BERT's bulk). Every encoder Linear is projected onto INQ's levels
(lin per row with the mse scale at 1..8 bits, p2 per tensor with the max rule at 2..5 bits, mb
at 2..3 bits) as a fully quantized INQ job holds it, then quantlib.packed writes
model_packed.safetensors (checked to decode to the weights exactly) and quantlib.model_size
gives the formula's figure. Latency: the median of 50 runs after 10 warm-up runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

from quantlib import export_nbits, export_onnx, model_size, packed
from quantlib.model_size import Code
from quantlib.quantizers import make_quantizer
from quantlib.stages import select_weights

CASES = ([("lin", b, {"per_row": True, "scale_rule": "mse"}) for b in (8, 4, 3, 2, 1)]
         + [("p2", b, {}) for b in (5, 3, 2)] + [("mb", b, {}) for b in (3, 2)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--latency-bits", default="2,4,8")
    p.add_argument("--modes", default="lin,p2,mb", help="encodings to measure")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    original = {k: v.detach().clone() for k, v in model.named_parameters()}
    timed = {int(b) for b in args.latency_bits.split(",") if b}
    kernels = export_nbits.kernel_bits()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    g = torch.Generator().manual_seed(0)
    feed = {"input_ids": torch.randint(1000, 30000, (1, args.seq), generator=g).numpy(),
            "attention_mask": torch.ones(1, args.seq, dtype=torch.long).numpy(),
            "token_type_ids": torch.zeros(1, args.seq, dtype=torch.long).numpy()}
    rows, lat = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp32_onnx, int8_onnx = tmp / "fp32.onnx", tmp / "int8.onnx"
        export_onnx.export(model, fp32_onnx, names, args.seq, quantized=False)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32_onnx), str(int8_onnx), weight_type=QuantType.QInt8)
        fp32_ms = export_onnx.latency_ms(export_onnx.session(fp32_onnx), feed)
        int8_ms = export_onnx.latency_ms(export_onnx.session(int8_onnx), feed)
        for mode, bits, kw in [c for c in CASES if c[0] in args.modes.split(",")]:
            with torch.no_grad():
                for k, v in original.items():
                    model.get_parameter(k).copy_(v)
            weights = select_weights(model, ("*encoder.layer.*",))
            grids, codes = {}, {}
            start = time.perf_counter()
            with torch.no_grad():
                for name, w in weights.items():
                    q = make_quantizer(mode, bits, **kw).fit(w.float())
                    w.copy_(q.project(w.float()))
                    grids[name] = packed.from_inq(q, w)
                    codes[name] = Code(bits, q.scale_bytes())
            fit_s = time.perf_counter() - start
            params = dict(model.named_parameters())
            path = tmp / packed.FILE
            size = packed.write(path, params, grids)
            packed.check_equal(path, params)
            formula = model_size.measure(model, codes)
            rows.append((f"{mode} {bits}-bit", size / 1e6, formula["model_size_mb"],
                         formula["fp32_size_mb"], fit_s,
                         "MatMulNBits" if all(export_nbits.block_for(gr, kernels)
                                              for gr in grids.values()) else "none"))
            if mode == "lin" and bits in timed and bits in kernels:
                nb, src = tmp / f"lin{bits}.onnx", tmp / "quantized_fp32.onnx"
                export_onnx.export(model, src, names, args.seq, quantized=False)  # as the job
                w_np = {n: params[n].detach().float().numpy() for n in grids}
                done, left = export_nbits.to_matmul_nbits(src, nb, grids, w_np, kernels)
                ms = export_onnx.latency_ms(export_onnx.session(nb), feed)
                lat.append((f"INQ lin {bits}-bit (MatMulNBits, {done} MatMuls, {left} left)",
                            ms, nb.stat().st_size / 1e6))
        lat += [("dynamic INT8 (quantize_dynamic)", int8_ms, int8_onnx.stat().st_size / 1e6),
                ("FP32", fp32_ms, fp32_onnx.stat().st_size / 1e6)]
    print(f"BERT-base, encoder Linears quantized ({len(grids)} weights), CPU ISA "
          f"{export_onnx.cpu_isa()}, MatMulNBits kernels at {sorted(kernels)} bits")
    print("| encoding | packed file (MB) | formula (MB) | FP32 (MB) | x smaller | fit (s) | "
          "ONNX |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, mb, formula_mb, fp32_mb, fit_s, onnx in rows:
        print(f"| {label} | {mb:.2f} | {formula_mb:.2f} | {fp32_mb:.1f} | {fp32_mb / mb:.2f}x "
              f"| {fit_s:.1f} | {onnx} |")
    print(f"\nbatch 1 x {args.seq} tokens, {args.threads} threads, onnxruntime CPU")
    print("| model | latency (ms) | vs FP32 | vs dynamic INT8 | file (MB) |")
    print("|---|---:|---:|---:|---:|")
    for label, ms, mb in lat:
        print(f"| {label} | {ms:.1f} | {fp32_ms / ms:.2f}x | {int8_ms / ms:.2f}x | {mb:.1f} |")


if __name__ == "__main__":
    main()
