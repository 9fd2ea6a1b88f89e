"""`export: onnx` for GPTQ's 4-bit weights: onnxruntime's MatMulNBits (com.microsoft contrib
op), so the file holds 4-bit codes, not fake-quantized FP32.

The FP32 graph is exported as for the INT8 export (quantlib.export_onnx, the same inputs and
outputs); every MatMul whose constant weight is one of the GPTQ-quantized Linears' becomes a
MatMulNBits with that weight's own grid: B as uint8 [N, K/block, block/2] (two codes a byte,
the lower column in the low nibble), scales float [N * K/block], zero points uint8, two a byte
per row ([N * ceil(K/block / 2)]), attributes K, N, bits=4, block_size = the job's
group_size (a power of two >= 16, MatMulNBits' rule); dequantized as (code - zero) * scale,
which is GPTQ's grid exactly. The packing follows onnxruntime's own writer
(onnxruntime/quantization/matmul_nbits_quantizer.py: pack_on_row_fast_248bit and the
MatMulNBits node it makes). Linears the exporter writes as Gemm (2-D inputs: pooler, head) stay
FP32 and are counted.

The dev set runs through the export (its metrics beside PyTorch's, within the INT8 export's
tolerance), and its size and batch-1 latency are recorded against the FP32 export and against
onnxruntime's dynamic INT8 quantization of the same FP32 file (quantize_dynamic), timed in the
same process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantlib.export_onnx import (
    ExportError,
    check_installed,
    evaluate_against,
    example_input,
    export,
    latency_ms,
    session,
)

BITS = 4


def pack_codes(codes: np.ndarray, block: int) -> np.ndarray:
    """(N, K) codes 0..15 -> uint8 (N, ceil(K/block), block/2), K padded with zeros."""
    n, k = codes.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.uint8)
    padded[:, :k] = codes
    packed = padded[:, 0::2] | (padded[:, 1::2] << 4)
    return packed.reshape(n, blocks, block // 2)


def pack_zero_points(zeros: np.ndarray) -> np.ndarray:
    """(N, blocks) zero points 0..15 -> uint8 (N * ceil(blocks/2),), two a byte per row."""
    n, blocks = zeros.shape
    padded = np.zeros((n, blocks + blocks % 2), np.uint8)
    padded[:, :blocks] = zeros
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(-1)


def to_matmul_nbits(src: Path, dst: Path, grids: dict[str, Any], weights: dict[str, np.ndarray],
                    block: int, accuracy_level: int = 0) -> tuple[int, int]:
    """Rewrite the FP32 export `src` into `dst` with MatMulNBits for every MatMul whose
    constant B is the transpose of one of `weights` (name -> (N, K) FP32, as the model holds
    them; `grids`: name -> quantlib.gptq.Result). accuracy_level: MatMulNBits' attribute (0:
    FP32 arithmetic on the dequantized weights; 4: the activations quantized to int8 per
    block, the int8 kernels). Returns (MatMuls rewritten, quantized weights left FP32)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, w in weights.items():
        by_shape.setdefault(w.T.shape, []).append(name)
    done: set[str] = set()
    nodes = []
    for node in graph.node:
        b = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 \
            else None
        value = numpy_helper.to_array(b) if b is not None else None
        name = next((n for n in by_shape.get(value.shape, []) if n not in done
                     and np.array_equal(value, weights[n].T)), None) if value is not None \
            else None
        if name is None:
            nodes.append(node)
            continue
        grid = grids[name]
        n_out, k = weights[name].shape
        packed = numpy_helper.from_array(pack_codes(grid.codes.numpy(), block), f"{name}_q4")
        scales = numpy_helper.from_array(
            grid.scales.float().numpy().reshape(-1).astype(np.float32), f"{name}_scales")
        zeros = numpy_helper.from_array(
            pack_zero_points(grid.zeros.numpy().astype(np.uint8)), f"{name}_zero_points")
        graph.initializer.extend([packed, scales, zeros])
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], packed.name, scales.name, zeros.name],
            list(node.output), name=f"{node.name or name}_Q4", domain="com.microsoft",
            K=k, N=n_out, bits=BITS, block_size=block, accuracy_level=accuracy_level))
        done.add(name)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return len(done), len(weights) - len(done)


def run(ctx: Any, results: dict[str, float]) -> dict[str, Any]:
    """Export (4-bit MatMulNBits, FP32, dynamic INT8), evaluate the 4-bit one and time all
    three; returns what goes into the job's results."""
    check_installed()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    block = int(getattr(ctx.method, "group_size", 0))
    if not ctx.grids or block < 16 or block & (block - 1):
        raise ExportError("export onnx: MatMulNBits needs GPTQ weights in groups of a power of "
                          f"two >= 16 columns (group_size is {block})")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in ctx.evals["validation"].column_names]
    length = ctx.args.max_seq_length or ctx.task.max_seq_length
    qa = ctx.task.is_qa
    out = ctx.out_dir
    fp32_path, q4_path, int8_path = (out / "model_fp32.onnx", out / "model.onnx",
                                     out / "model_int8_dynamic.onnx")
    export(ctx.model, fp32_path, names, length, quantized=False, qa=qa)
    params = dict(ctx.model.named_parameters())
    weights = {n: params[n].detach().float().cpu().numpy() for n in ctx.grids}
    rewritten, left = to_matmul_nbits(fp32_path, q4_path, ctx.grids, weights, block)
    if not rewritten:
        raise ExportError("export onnx: no MatMul of the export holds a GPTQ weight")
    tmp = int8_path.with_name(f".{int8_path.name}.tmp")
    quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8)
    tmp.replace(int8_path)
    q4, fp32, int8 = session(q4_path), session(fp32_path), session(int8_path)
    feed = example_input(ctx.evals["validation"], ctx.tokenizer, length, names)
    q4_ms, fp32_ms, int8_ms = latency_ms(q4, feed), latency_ms(fp32, feed), latency_ms(int8, feed)
    info, verdict = evaluate_against(q4, ctx, names, results)
    info.update(onnx_format="MatMulNBits", onnx_nbits_matmuls=rewritten,
                onnx_fp32_matmuls_left=left, onnx_latency_ms=q4_ms, onnx_fp32_latency_ms=fp32_ms,
                onnx_int8_latency_ms=int8_ms,
                onnx_speedup=fp32_ms / q4_ms if q4_ms > 0 else float("nan"),
                onnx_size_mb=q4_path.stat().st_size / 1e6,
                onnx_fp32_size_mb=fp32_path.stat().st_size / 1e6,
                onnx_int8_size_mb=int8_path.stat().st_size / 1e6)
    print(f"quantlib.export: ONNX 4-bit MatMulNBits ({rewritten} MatMuls) {verdict}; latency "
          f"(batch 1, {length} tokens) {q4_ms:.2f} ms vs FP32 {fp32_ms:.2f} ms vs dynamic INT8 "
          f"{int8_ms:.2f} ms", flush=True)
    return info
