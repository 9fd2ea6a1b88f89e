"""`export: onnx`: the 8-bit model as ONNX with QDQ nodes carrying the job's own scales, run with
onnxruntime on the CPU: the dev set evaluated through it, and its latency against the FP32
export of the same checkpoint, measured in one process.

- Every quantizer that is on becomes QuantizeLinear / DequantizeLinear with scale amax / 127
  (int8, zero point 0): calibrated and EMA amax as they are; a weight's dynamic amax (Q8BERT's
  max|W|) computed once from the trained weight; per-channel weights per output channel. ONNX
  int8 is [-128, 127]: a narrow-range quantizer ([-127, 127]) differs only for a value below
  -amax, which rounds to -128 instead of -127. A dynamic activation quantizer (per token) has no
  static scale: such a model is refused.
- The FP32 export: the same module with every quantizer off. Both use eager attention.
- Latency: batch 1 at the job's sequence length (`max_seq_length`, padded), the median of
  `REPEATS` runs after `WARMUP`, onnxruntime's CPU provider with all graph optimizations (its
  QDQ fusion turns DQ -> MatMul -> Q into integer kernels), the threads torch uses here.
- The dev set through the export: GLUE's metrics, or SQuAD's EM / F1 with the windows' start
  and end logits decoded as PyTorch's evaluation decodes them. A metric further than 0.01 of
  its range from the PyTorch one (0.01; 1 point for SQuAD) is said on the console and recorded
  (`onnx_mismatch`).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantlib import metrics
from quantlib.fake_quant import TensorQuantizer, reduce_amax
from quantlib.qmodules import QuantEmbedding, QuantLinear, quantizers

WARMUP, REPEATS = 10, 50
TOLERANCE = 0.01  # absolute, on the task's metrics (0-1)
OPSET = 17


class ExportError(RuntimeError):
    pass


def check_installed() -> None:
    missing = [p for p in ("onnx", "onnxruntime") if importlib.util.find_spec(p) is None]
    if missing:
        raise ExportError(f"export onnx: {' and '.join(missing)} not installed in this job's "
                          "environment (pip install 'quantsweep[export]')")


class _Logits(nn.Module):
    """The model's logits from positional inputs: a classifier's `logits`, a QA model's
    `start_logits` and `end_logits`."""

    def __init__(self, model: nn.Module, names: list[str], qa: bool):
        super().__init__()
        self.model, self.names, self.qa = model, names, qa

    def forward(self, *inputs: torch.Tensor):
        out = self.model(**dict(zip(self.names, inputs)))
        return (out.start_logits, out.end_logits) if self.qa else out.logits


def outputs(qa: bool) -> list[str]:
    return ["start_logits", "end_logits"] if qa else ["logits"]


def tolerance(task: Any) -> float:
    """0.01 of the metric's range: 0.01 for GLUE's 0-1 metrics, 1 point for SQuAD's 0-100."""
    return 1.0 if task.is_qa else TOLERANCE


def _fix_scales(model: nn.Module) -> None:
    """Give every enabled quantizer its export scale (amax / 127), before tracing."""
    weight_of = {}
    for module in model.modules():
        if isinstance(module, (QuantLinear, QuantEmbedding)):
            q = getattr(module, "weight_quantizer", None)
            if q is not None:
                weight_of[id(q)] = module.weight
    for name, q in quantizers(model).items():
        if not q.enabled:
            continue
        if q.nbits != 8:
            raise ExportError(f"{name}: {q.nbits}-bit; ONNX QDQ export is for 8-bit models")
        if q.amax_mode == "dynamic":
            if id(q) not in weight_of:
                raise ExportError(f"{name}: a dynamic activation quantizer has no static scale "
                                  "to export")
            amax = reduce_amax(weight_of[id(q)].detach(), q.granularity, q.groups)
        else:
            amax = q.amax.detach()
        if q.granularity not in ("tensor", "channel"):
            raise ExportError(f"{name}: {q.granularity} scales have no ONNX QDQ form here")
        scale = amax.float().cpu().clamp_min(1e-12) / 127.0
        q.export_scale = float(scale) if amax.numel() == 1 else scale.reshape(-1).clone()


@contextmanager
def _exportable(model: nn.Module, quantized: bool):
    """A CPU copy in eval mode, eager attention, quantizers at their export scales (or all off
    for the FP32 export), Q8BERT's integer path off (the QDQ graph is the integer path)."""
    m = copy.deepcopy(model).cpu().eval()
    if hasattr(m, "set_attn_implementation"):
        m.set_attn_implementation("eager")
    for module in m.modules():
        if isinstance(module, QuantLinear):
            module.integer_inference = False
        if isinstance(module, TensorQuantizer):
            module.calibrating = False
            if not quantized:
                module.enabled = False
    if quantized:
        _fix_scales(m)
    yield m


def example_input(dataset: Any, tokenizer: Any, length: int, names: list[str]
                  ) -> dict[str, np.ndarray]:
    """The first dev example padded to the sequence length, batch 1."""
    row = dataset[0]
    out = {}
    for name in names:
        values = list(row[name])[:length]
        pad = tokenizer.pad_token_id if name == "input_ids" else 0
        out[name] = np.array([values + [pad] * (length - len(values))], dtype=np.int64)
    return out


def export(model: nn.Module, path: Path, names: list[str], length: int, quantized: bool,
           qa: bool = False) -> None:
    with _exportable(model, quantized) as m:
        example = tuple(torch.ones(1, length, dtype=torch.long) for _ in names)
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        for name in outputs(qa):
            axes[name] = {0: "batch", 1: "sequence"} if qa else {0: "batch"}
        tmp = path.with_name(f".{path.name}.tmp")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Logits(m, names, qa), example, str(tmp), input_names=names,
                              output_names=outputs(qa), dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)
        if quantized:
            store_int8_weights(tmp)
        os.replace(tmp, path)


def store_int8_weights(path: Path) -> int:
    """The exporter leaves each weight as a float initializer quantized at run time
    (QuantizeLinear on a constant). Store it as the int8 tensor that QuantizeLinear would make
    (round half to even, saturate to [-128, 127], ONNX's rule) feeding the DequantizeLinear:
    the file holds int8 weights, as a deployed model does. Returns how many were rewritten."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
              for n in graph.node if n.op_type == "Constant" and n.attribute}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    done, drop = 0, []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        w, scale = numpy_helper.to_array(inits[node.input[0]]), value(node.input[1])
        zero = value(node.input[2]) if len(node.input) > 2 else np.zeros((), np.int8)
        if scale is None or zero is None or zero.dtype != np.int8:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per axis: broadcast along `axis`
            shape = [1] * w.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        q = np.clip(np.rint(w / scale) + zero, -128, 127).astype(np.int8)
        name = node.output[0]
        graph.initializer.append(numpy_helper.from_array(q, name))
        drop.append(node)
        done += 1
    for node in drop:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    onnx.save(model, str(path))
    return done


# what onnxruntime's CPU provider fuses the dynamic-quantization pattern into (com.microsoft)
FUSED_INT8 = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention")
CPU_EXPORT_DROPS = ("the activations' calibrated amax (quantized dynamically per tensor, uint8, "
                    "as the CPU kernels take them), the attention matmuls' int8 inputs "
                    "(onnxruntime quantizes no activation x activation MatMul dynamically), "
                    "the QDQ on GEMM outputs and residual inputs (ft2, ft3), the int8 "
                    "embeddings (ft3)")


def _int8_weights(model: nn.Module) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """The job's own int8 weights as the FP32 export stores each quantized Linear's weight
    (its transpose, in x out, float32): keyed by those bytes, (codes in x out int8, scale per
    output column), with the QDQ export's scales (amax / 127, per channel or per tensor)."""
    out = {}
    with _exportable(model, True) as m:
        for module in m.modules():
            q = getattr(module, "weight_quantizer", None)
            if not (isinstance(module, QuantLinear) and q is not None and q.enabled):
                continue
            w = module.weight.detach().float().cpu().numpy()  # out x in
            scale = np.broadcast_to(np.asarray(q.export_scale, np.float32).reshape(-1),
                                    (w.shape[0],)).astype(np.float32)
            codes = np.clip(np.rint(w / scale[:, None]), -128, 127).astype(np.int8)
            out[np.ascontiguousarray(w.T).tobytes()] = (np.ascontiguousarray(codes.T), scale)
    return out


def export_cpu_int8(model: nn.Module, fp32_path: Path, path: Path, optimized: bool = False
                    ) -> int:
    """The INT8 export for onnxruntime's CPU provider: onnxruntime's own dynamic-quantization
    graph over the FP32 export (`quantize_dynamic`: DynamicQuantizeLinear -> MatMulInteger ->
    scale, which the provider fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat at load)
    on the MatMuls of the job's quantized Linears, with the job's own int8 weights and scales
    written in place of the ones quantize_dynamic computed: the weights keep the fake-quant
    model's values; what it drops is CPU_EXPORT_DROPS. `optimized`: first onnxruntime's
    transformer optimizer (fused Attention with Q, K and V packed in one weight, which becomes
    QAttention; SkipLayerNormalization; BiasGelu). Returns how many weights it quantized."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ours = _int8_weights(model)
    source = fp32_path
    if optimized:
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = model.config
        opt = optimize_model(str(fp32_path), model_type="bert",
                             num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
        source = path.with_name(f".{path.name}.fp32-optimized")
        opt.save_model_to_file(str(source))
    graph = onnx.load(str(source)).graph
    inits = {i.name: i for i in graph.initializer}

    def mine(name: str, blocks: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Our codes and scales for initializer `name` (`blocks` weights side by side)."""
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        found = [ours.get(np.ascontiguousarray(part).tobytes())
                 for part in np.split(w, blocks, axis=1)]
        if any(f is None for f in found):
            return None
        return (np.concatenate([c for c, _ in found], axis=1),
                np.concatenate([sc for _, sc in found]))

    weight_of: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    nodes, count = [], 0
    for node in graph.node:
        packed = {"MatMul": 1, "Attention": 3}.get(node.op_type)
        if packed and len(node.input) > 1 and node.input[1] in inits:
            found = mine(node.input[1], packed)
            if found is not None:
                weight_of[node.input[1]] = found
                nodes.append(node.name)
                count += packed
    if not weight_of:
        raise ExportError("export onnx (CPU): no quantized Linear's weight found in the FP32 "
                          "graph")
    tmp = path.with_name(f".{path.name}.tmp")
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic's pre-processing advice, for this call only
    try:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Attention"], nodes_to_quantize=nodes,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    if source != fp32_path:
        source.unlink()
    q = onnx.load(str(tmp))
    by_name = {i.name: i for i in q.graph.initializer}
    for b, (codes, scale) in weight_of.items():
        for name, value in ((f"{b}_quantized", codes), (f"{b}_scale", scale),
                            (f"{b}_zero_point", np.zeros(scale.shape, np.int8))):
            init = by_name.get(name)
            if init is None or tuple(init.dims) != value.shape:
                raise ExportError(f"export onnx (CPU): quantize_dynamic left no {name} of "
                                  f"shape {value.shape}")
            init.CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(q, str(tmp))
    os.replace(tmp, path)
    return count


def fused_nodes(path: Path) -> dict[str, int]:
    """The node types of the graph onnxruntime's CPU provider runs (all optimizations)."""
    import collections
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
        return dict(collections.Counter(n.op_type for n in graph.node))


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latency_ms(sess: Any, feed: dict[str, np.ndarray], warmup: int = WARMUP,
               repeats: int = REPEATS) -> float:
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _run_batches(sess: Any, ds: Any, ctx: Any, names: list[str], wanted: list[str],
                 labels: bool) -> tuple[list[np.ndarray], np.ndarray | None]:
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    keep = [c for c in ds.column_names if c in names or (labels and c in ("label", "labels"))]
    loader = DataLoader(ds.select_columns(keep), batch_size=ctx.args.eval_batch_size,
                        collate_fn=DataCollatorWithPadding(ctx.tokenizer))
    got: list[list[np.ndarray]] = [[] for _ in wanted]
    ys = []
    for batch in loader:
        feed = {n: batch[n].numpy().astype(np.int64) for n in names}
        for i, arr in enumerate(sess.run(wanted, feed)):
            got[i].append(arr)
        if labels:
            ys.append(batch["labels"].numpy())
    return [_concat(g) for g in got], np.concatenate(ys) if labels else None


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Batches padded to their own longest sequence, joined: shorter ones padded with -100
    along the sequence axis, as the Trainer's predict loop pads its predictions."""
    if arrays[0].ndim < 2:
        return np.concatenate(arrays)
    width = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, [(0, 0), (0, width - a.shape[1])], constant_values=-100)
                           for a in arrays])


def _evaluate_qa(sess: Any, ctx: Any, names: list[str]) -> dict[str, float]:
    """EM and F1 (0-100) of the export's answers, decoded as PyTorch's evaluation decodes."""
    from quantlib import squad, squad_metrics

    features = ctx.evals["validation"]
    examples = ctx.eval_examples["validation"]
    (start, end), _ = _run_batches(sess, features, ctx, names, outputs(True), labels=False)
    a = ctx.args
    answers = squad.decode(examples, features, start, end, a.n_best_size, a.max_answer_length)
    return {k: float(v) for k, v in squad_metrics.evaluate(squad.references(examples),
                                                           answers).items()
            if k in ("exact_match", "f1")}


def evaluate(sess: Any, ctx: Any, names: list[str]) -> dict[str, float]:
    """Every eval split through the ONNX model, with the metrics PyTorch's evaluation uses."""
    if ctx.task.is_qa:
        return _evaluate_qa(sess, ctx, names)
    out: dict[str, float] = {}
    for split, ds in ctx.evals.items():
        (z,), y = _run_batches(sess, ds, ctx, names, ["logits"], labels=True)
        preds = np.squeeze(z, axis=-1) if ctx.task.is_regression else np.argmax(z, axis=-1)
        values = metrics.compute(ctx.task, preds, y)
        suffix = "" if split == "validation" else "_" + split.removeprefix("validation_")
        if suffix:
            values = {k: v for k, v in values.items() if k == "accuracy"}
        out.update({f"{k}{suffix}": float(v) for k, v in values.items()})
    return out


def compare(exported: dict[str, float], results: dict[str, float], limit: float = TOLERANCE
            ) -> tuple[str | None, float, bool]:
    """The metric that differs most between the export and PyTorch, by how much, and whether
    that is beyond `limit` (NaN on either side: not compared)."""
    deltas = {k: v - results[k] for k, v in exported.items()
              if isinstance(results.get(k), float) and not np.isnan(results[k])
              and not np.isnan(v)}
    if not deltas:
        return None, 0.0, False
    worst = max(deltas, key=lambda k: abs(deltas[k]))
    return worst, abs(deltas[worst]), abs(deltas[worst]) > limit


def evaluate_against(sess: Any, ctx: Any, names: list[str], results: dict[str, float]
                     ) -> tuple[dict[str, Any], str]:
    """The dev set through an export, against PyTorch's `results`: what goes into the job's
    results (onnx_eval_*, the largest difference, the mismatch flag, the threads) and the
    verdict the console says."""
    onnx_metrics = evaluate(sess, ctx, names)
    limit = tolerance(ctx.task)
    worst, delta, mismatch = compare(onnx_metrics, results, limit)
    info: dict[str, Any] = {f"onnx_eval_{k}": v for k, v in onnx_metrics.items()}
    info.update(onnx_eval_max_delta=delta, onnx_mismatch=mismatch,
                onnx_threads=torch.get_num_threads())
    verdict = (f"MISMATCH: {worst} {onnx_metrics[worst]:.4f} exported vs "
               f"{results[worst]:.4f} in PyTorch, beyond {limit:g}" if mismatch
               else f"metrics within {limit:g} of PyTorch's (largest difference "
                    f"{delta:.4f})")
    return info, verdict


def run(ctx: Any, results: dict[str, float]) -> dict[str, Any]:
    """Export, evaluate and time; returns what goes into the job's results."""
    check_installed()
    if not any(q.enabled for q in quantizers(ctx.model).values()):
        raise ExportError("export onnx: the model has no quantizer on (nothing 8-bit to export)")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in ctx.evals["validation"].column_names]
    length = ctx.args.max_seq_length or ctx.task.max_seq_length
    int8_path, fp32_path = ctx.out_dir / "model.onnx", ctx.out_dir / "model_fp32.onnx"
    cpu_path = ctx.out_dir / "model_int8_cpu.onnx"
    qa = ctx.task.is_qa
    export(ctx.model, int8_path, names, length, quantized=True, qa=qa)
    export(ctx.model, fp32_path, names, length, quantized=False, qa=qa)
    n_matmuls = export_cpu_int8(ctx.model, fp32_path, cpu_path)
    int8, fp32, cpu = session(int8_path), session(fp32_path), session(cpu_path)
    feed = example_input(ctx.evals["validation"], ctx.tokenizer, length, names)
    int8_ms, fp32_ms, cpu_ms = (latency_ms(s, feed) for s in (int8, fp32, cpu))
    info, verdict = evaluate_against(int8, ctx, names, results)
    cpu_info, cpu_verdict = evaluate_against(cpu, ctx, names, results)
    info.update({k.replace("onnx_", "onnx_cpu_", 1): v for k, v in cpu_info.items()
                 if k != "onnx_threads"})
    fused = fused_nodes(cpu_path)
    info.update(onnx_latency_ms=int8_ms, onnx_fp32_latency_ms=fp32_ms,
                onnx_speedup=fp32_ms / int8_ms if int8_ms > 0 else float("nan"),
                onnx_size_mb=int8_path.stat().st_size / 1e6,
                onnx_fp32_size_mb=fp32_path.stat().st_size / 1e6,
                onnx_cpu_latency_ms=cpu_ms,
                onnx_cpu_speedup=fp32_ms / cpu_ms if cpu_ms > 0 else float("nan"),
                onnx_cpu_size_mb=cpu_path.stat().st_size / 1e6,
                onnx_cpu_fused=sum(fused.get(op, 0) for op in FUSED_INT8),
                onnx_cpu_quantized_matmuls=n_matmuls,
                onnx_cpu_isa=cpu_isa())
    print(f"quantlib.export: ONNX INT8 {verdict}; latency (batch 1, {length} tokens) "
          f"{int8_ms:.2f} ms vs FP32 {fp32_ms:.2f} ms: {info['onnx_speedup']:.2f}x", flush=True)
    print(f"quantlib.export: ONNX INT8 for the CPU (dynamic activations; drops "
          f"{CPU_EXPORT_DROPS}) {cpu_verdict}; {info['onnx_cpu_fused']} fused int8 nodes of "
          f"{info['onnx_cpu_quantized_matmuls']} quantized matmuls; {cpu_ms:.2f} ms: "
          f"{info['onnx_cpu_speedup']:.2f}x FP32's speed ({info['onnx_cpu_isa']})", flush=True)
    return info


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu_isa() -> str:
    """The CPU's integer-relevant instruction sets, from /proc/cpuinfo ("avx2 avx512_vnni")."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return " ".join(f for f in ISA_FLAGS if f in flags) or "none of " + ", ".join(ISA_FLAGS)
    return "unknown"
