"""Our INT8 exports against onnxruntime's own `quantize_dynamic`, on BERT-base shapes, CPU
(issue 24, item 4).

    python benchmarks/int8_cpu_bench.py [--mode ft1] [--seq 128] [--batches 1,8] [--threads N]

BERT-base (12 layers x 768, random init), PTQ in FasterTransformer's `--mode` with a max
calibration on 4 random batches, as a job calibrates it. In one process, at batch 1 and 8 x
`--seq` tokens (the median of REPEATS runs after WARMUP, onnxruntime's CPU provider with all
graph optimizations, `--threads` intra-op threads):

- FP32: the job's FP32 export (quantlib.export_onnx.export, quantizers off);
- ours, QDQ: the job's `model.onnx` (FT's mode, its static scales: the accuracy form);
- ours, CPU: `model_int8_cpu.onnx` (export_cpu_int8: onnxruntime's dynamic-quantization graph
  with the job's own int8 weights), on the FP32 export and on the transformer optimizer's graph
  (fused attention: QAttention);
- quantize_dynamic(FP32 export) and quantize_dynamic(the optimizer's graph), per channel, int8
  weights: onnxruntime's own.

Speedups are over the FP32 export at the same batch; the target: ours (CPU) at least
quantize_dynamic's, graph for graph. Also: the fused int8 nodes of each graph as the CPU
provider runs it, file sizes, the largest logit difference to the PyTorch fake-quant model, and
the CPU's ISA (/proc/cpuinfo).
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx_bench import bert_base_ptq  # benchmarks/: the same model, calibrated alike
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from quantlib import export_onnx

WARMUP, REPEATS = 5, 30


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="ft1", choices=("ft1", "ft2", "ft3"))
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    model, batches = bert_base_ptq(args.mode, args.seq)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sizes = [int(b) for b in args.batches.split(",")]
    model_name = next((line.partition(":")[2].strip() for line in
                       Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor() or "unknown")
    print(f"CPU: {model_name}; ISA: {export_onnx.cpu_isa()}; onnxruntime "
          f"{ort.__version__}; {args.threads} threads; BERT-base, PTQ {args.mode} (max "
          f"calibration), {args.seq} tokens; medians of {REPEATS} after {WARMUP}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        fp32, qdq = d / "fp32.onnx", d / "qdq.onnx"
        export_onnx.export(model, fp32, names, args.seq, quantized=False)
        export_onnx.export(model, qdq, names, args.seq, quantized=True)
        ours, ours_opt = d / "cpu.onnx", d / "cpu_opt.onnx"
        export_onnx.export_cpu_int8(model, fp32, ours)
        export_onnx.export_cpu_int8(model, fp32, ours_opt, optimized=True)
        fp32_opt, qd, qd_opt = d / "fp32_opt.onnx", d / "qd.onnx", d / "qd_opt.onnx"
        cfg = model.config
        optimize_model(str(fp32), model_type="bert", num_heads=cfg.num_attention_heads,
                       hidden_size=cfg.hidden_size).save_model_to_file(str(fp32_opt))
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        quantize_dynamic(str(fp32), str(qd), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options=extra)
        quantize_dynamic(str(fp32_opt), str(qd_opt), weight_type=QuantType.QInt8,
                         per_channel=True, extra_options=extra)
        models = [("FP32", fp32, "fp32"), ("FP32, optimizer's graph", fp32_opt, "fp32_opt"),
                  (f"ours, QDQ ({args.mode}: static scales)", qdq, "fp32"),
                  ("ours, CPU (export_cpu_int8)", ours, "fp32"),
                  ("quantize_dynamic (FP32 export)", qd, "fp32"),
                  ("ours, CPU, optimizer's graph", ours_opt, "fp32_opt"),
                  ("quantize_dynamic (optimizer's graph)", qd_opt, "fp32_opt")]
        sessions = {label: export_onnx.session(path, args.threads) for label, path, _ in models}
        fused = {label: export_onnx.fused_nodes(path) for label, path, _ in models}
        want = None
        for n in sizes:
            feed = {"input_ids": batches[0]["input_ids"][:1].repeat(n, 1).numpy(),
                    "attention_mask": batches[0]["attention_mask"][:1].repeat(n, 1).numpy(),
                    "token_type_ids": np.zeros((n, args.seq), np.int64)}
            with torch.no_grad():
                want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
            ms = {}
            for _round in range(2):  # interleaved twice: the second round's figures
                for label, _, _ in models:
                    ms[label] = export_onnx.latency_ms(sessions[label], feed, WARMUP, REPEATS)
            print(f"\nbatch {n} x {args.seq}:\n")
            print("| model | latency (ms) | speedup over FP32 (same graph) | fused int8 nodes "
                  "| file (MB) | max abs logit diff to PyTorch fake-quant |")
            print("|---|---:|---:|---:|---:|---:|")
            base = {"fp32": ms["FP32"], "fp32_opt": ms["FP32, optimizer's graph"]}
            for label, path, ref in models:
                got = sessions[label].run(None, feed)[0]
                n_fused = sum(fused[label].get(op, 0) for op in export_onnx.FUSED_INT8)
                print(f"| {label} | {ms[label]:.1f} | {base[ref] / ms[label]:.2f}x | {n_fused} "
                      f"| {path.stat().st_size / 1e6:.1f} | {np.abs(got - want).max():.2e} |")
            ours_x = base["fp32"] / ms["ours, CPU (export_cpu_int8)"]
            qd_x = base["fp32"] / ms["quantize_dynamic (FP32 export)"]
            ours_ox = base["fp32_opt"] / ms["ours, CPU, optimizer's graph"]
            qd_ox = base["fp32_opt"] / ms["quantize_dynamic (optimizer's graph)"]
            print(f"\nours / quantize_dynamic speedup: {ours_x / qd_x:.3f} (FP32 export), "
                  f"{ours_ox / qd_ox:.3f} (optimizer's graph); >= 1 (within noise) is the "
                  "target")


if __name__ == "__main__":
    main()
