"""`export: onnx` for the low-bit weights (INQ lin / p2 / mb, GPTQ, at every bit width): the
packed file always, and onnxruntime's MatMulNBits (com.microsoft contrib op) where the installed
onnxruntime has a kernel for the grid, so the files hold the codes, not fake-quantized FP32.

1. `model_packed.safetensors` (quantlib.packed): every quantized weight as its codes packed
   `bits` a value with its scales, the rest FP32; read back and checked equal to the model
   before it is recorded; its size is the job's `model_size_mb`.
2. `model.onnx`: the FP32 graph exported as for the INT8 export (quantlib.export_onnx, the same
   inputs and outputs), every MatMul whose constant weight is a quantized Linear with an
   affine grid (value = (code - zero) * scale: INQ lin at b >= 2, GPTQ) at a bit width
   onnxruntime's CPU MatMulNBits loads (probed: 2, 4 and 8 in onnxruntime 1.32) rewritten as
   MatMulNBits: B uint8 [N, K/block, block * bits / 8] (codes little-endian within a byte),
   scales float [N * K/block], zero points uint8 packed the same way per row, attributes K, N,
   bits, block_size (a power of two >= 16 dividing the grid's group, or for one scale a row the
   largest of 128..16 dividing K); dequantized as (code - zero) * scale, the grid exactly. The
   packing follows onnxruntime's own writer (onnxruntime/quantization/matmul_nbits_quantizer.py:
   pack_on_row_fast_248bit and the MatMulNBits node it makes). Weights without a kernel (p2,
   mb, 1, 3, 5-7 bits, GPTQ act_order in groups) stay FP32 MatMuls on their dequantized values
   and are counted; with none left to rewrite there is no ONNX file, and the job says why.
   Linears the exporter writes as Gemm (2-D inputs: pooler, head) stay FP32.

The dev set runs through the export (its metrics beside PyTorch's, within the INT8 export's
tolerance), and its size and batch-1 latency are recorded against the FP32 export and against
onnxruntime's dynamic INT8 quantization of the same FP32 file (quantize_dynamic), timed in the
same process.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from quantlib import packed
from quantlib.export_onnx import (
    OPSET,
    ExportError,
    check_installed,
    evaluate_against,
    example_input,
    export,
    latency_ms,
    session,
)
from quantlib.packed import Packed

BLOCKS = (128, 64, 32, 16)  # MatMulNBits block sizes tried, largest first


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """(N, M) values < 2^bits -> uint8 (N, ceil(M * bits / 8)), 8 / bits values a byte, the
    first in the low bits (bits 2, 4 or 8): each row padded to whole bytes, then the packed
    file's bit stream (quantlib.packed.pack_bits)."""
    import torch

    per = 8 // bits
    n, m = values.shape
    padded = np.zeros((n, -(-m // per) * per), np.uint8)
    padded[:, :m] = values
    return packed.pack_bits(torch.from_numpy(padded), bits).numpy().reshape(n, -1)


def pack_codes(codes: np.ndarray, block: int, bits: int = 4) -> np.ndarray:
    """(N, K) codes -> uint8 (N, ceil(K/block), block * bits / 8), K padded with zeros."""
    n, k = codes.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.uint8)
    padded[:, :k] = codes
    return pack_rows(padded, bits).reshape(n, blocks, block * bits // 8)


def pack_zero_points(zeros: np.ndarray, bits: int = 4) -> np.ndarray:
    """(N, blocks) zero points -> uint8 (N * ceil(blocks * bits / 8),), packed per row."""
    return pack_rows(zeros, bits).reshape(-1)


def _probe_node(name: str, k: int, n: int, bits: int, block: int, accuracy_level: int = 0):
    from onnx import helper

    return helper.make_node("MatMulNBits", ["A", f"{name}_q", f"{name}_scales",
                                            f"{name}_zero_points"], ["Y"],
                            name=f"{name}_Q{bits}", domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=accuracy_level)


@functools.lru_cache(maxsize=1)
def kernel_bits() -> frozenset[int]:
    """The bit widths the installed onnxruntime's CPU MatMulNBits loads and computes right
    (a one-node graph on random codes against (code - zero) * scale)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n, block = 32, 3, 16
    a = rng.standard_normal((2, k)).astype(np.float32)
    ok = set()
    for bits in range(1, 9):
        if 8 % bits:
            continue
        codes = rng.integers(0, 2 ** bits, (n, k), dtype=np.uint8)
        zeros = rng.integers(0, 2 ** bits, (n, k // block), dtype=np.uint8)
        scales = rng.uniform(0.5, 1.0, (n, k // block)).astype(np.float32)
        graph = helper.make_graph(
            [_probe_node("w", k, n, bits, block)], "probe",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, n])],
            [numpy_helper.from_array(pack_codes(codes, block, bits), "w_q"),
             numpy_helper.from_array(scales.reshape(-1), "w_scales"),
             numpy_helper.from_array(pack_zero_points(zeros, bits), "w_zero_points")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid("com.microsoft", 1)])
        quiet = ort.SessionOptions()
        quiet.log_severity_level = 4  # a refused bit width is an answer, not an error to log
        try:
            sess = ort.InferenceSession(model.SerializeToString(), quiet,
                                        providers=["CPUExecutionProvider"])
            (y,) = sess.run(None, {"A": a})
        except Exception:  # noqa: BLE001 (onnxruntime raises its own kinds): no kernel
            continue
        col = np.arange(k) // block
        w = (codes.astype(np.float32) - zeros[:, col]) * scales[:, col]
        if np.allclose(y, a @ w.T, rtol=1e-4, atol=1e-3):
            ok.add(bits)
    return frozenset(ok)


def block_for(grid: Packed, kernels: frozenset[int]) -> int | None:
    """The MatMulNBits block size that carries this grid exactly, or None (no kernel)."""
    if grid.encoding != "affine" or grid.bits not in kernels:
        return None
    groups = grid.scales.shape[1]
    if groups == 1:  # one scale a row (or tensor)
        k = grid.shape[1]
        return next((b for b in BLOCKS if k % b == 0), BLOCKS[-1])
    if grid.perm is not None:
        return None  # act_order's groups are not contiguous in the columns
    return next((b for b in BLOCKS if grid.group_size % b == 0), None)


def no_kernel_reason(grids: dict[str, Packed], kernels: frozenset[int]) -> str:
    return (f"no onnxruntime kernel for {encodings(grids)} (MatMulNBits: affine grids at "
            f"{', '.join(map(str, sorted(kernels))) or 'no'} bits, groups a multiple of 16 "
            f"columns in order)")


def _block_grid(grid: Packed, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid's scales and zero points per row and MatMulNBits block."""
    n, k = grid.shape
    starts = np.arange(0, k, block)
    if grid.scales.shape[1] == 1:
        g = np.zeros(len(starts), np.int64)
    else:
        g = starts // grid.group_size
    scales = grid.scales.float().numpy().astype(np.float32)
    zeros = grid.zeros.numpy().astype(np.uint8) if grid.zeros is not None \
        else np.zeros_like(scales, np.uint8)
    scales = np.broadcast_to(scales, (n, scales.shape[1]))[:, g]
    zeros = np.broadcast_to(zeros, (n, zeros.shape[1]))[:, g]
    return np.ascontiguousarray(scales), np.ascontiguousarray(zeros)


def to_matmul_nbits(src: Path, dst: Path, grids: dict[str, Packed],
                    weights: dict[str, np.ndarray], kernels: frozenset[int],
                    accuracy_level: int = 0) -> tuple[int, int]:
    """Rewrite the FP32 export `src` into `dst` with MatMulNBits for every MatMul whose
    constant B is the transpose of one of `weights` (name -> (N, K) FP32, as the model holds
    them) with a grid `block_for` accepts. accuracy_level: MatMulNBits' attribute (0: FP32
    arithmetic on the dequantized weights; 4: the activations quantized to int8 per block, the
    int8 kernels). Returns (MatMuls rewritten, quantized weights left FP32)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, w in weights.items():
        if block_for(grids[name], kernels):
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
        block = block_for(grid, kernels)
        assert block is not None
        n_out, k = weights[name].shape
        scales, zeros = _block_grid(grid, block)
        packed = numpy_helper.from_array(pack_codes(grid.codes.numpy(), block, grid.bits),
                                         f"{name}_q{grid.bits}")
        scale_t = numpy_helper.from_array(scales.reshape(-1), f"{name}_scales")
        zero_t = numpy_helper.from_array(pack_zero_points(zeros, grid.bits),
                                         f"{name}_zero_points")
        graph.initializer.extend([packed, scale_t, zero_t])
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], packed.name, scale_t.name, zero_t.name],
            list(node.output), name=f"{node.name or name}_Q{grid.bits}", domain="com.microsoft",
            K=k, N=n_out, bits=grid.bits, block_size=block, accuracy_level=accuracy_level))
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


def encodings(grids: dict[str, Packed]) -> str:
    return ", ".join(sorted({f"{g.encoding} {g.bits}-bit" for g in grids.values()}))


def write_packed(ctx: Any) -> dict[str, Any]:
    """The packed file, checked to decode to the model; what it records."""
    params = dict(ctx.model.named_parameters())
    path = ctx.out_dir / packed.FILE
    size = packed.write(path, params, ctx.grids)
    packed.check_equal(path, params)
    return {"packed_file": packed.FILE, "packed_size_mb": size / 1e6,
            "packed_weights": len(ctx.grids), "packed_encoding": encodings(ctx.grids)}


def run(ctx: Any, results: dict[str, float]) -> dict[str, Any]:
    """The packed file; then, where a kernel exists, the MatMulNBits export (evaluated) timed
    against the FP32 export and dynamic INT8; returns what goes into the job's results."""
    check_installed()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not ctx.grids:
        raise ExportError("export onnx: the job has no low-bit weights to pack")
    info = write_packed(ctx)
    kernels = kernel_bits()
    runnable = sum(1 for g in ctx.grids.values() if block_for(g, kernels))
    if not runnable:
        reason = no_kernel_reason(ctx.grids, kernels)
        info.update(onnx_format="none", onnx_note=reason)
        print(f"quantlib.export: {reason}: the packed codes and scales only, "
              f"{packed.FILE} ({info['packed_size_mb']:.3f} MB)", flush=True)
        return info
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in ctx.evals["validation"].column_names]
    length = ctx.args.max_seq_length or ctx.task.max_seq_length
    qa = ctx.task.is_qa
    out = ctx.out_dir
    fp32_path, nbits_path, int8_path = (out / "model_fp32.onnx", out / "model.onnx",
                                        out / "model_int8_dynamic.onnx")
    export(ctx.model, fp32_path, names, length, quantized=False, qa=qa)
    params = dict(ctx.model.named_parameters())
    weights = {n: params[n].detach().float().cpu().numpy() for n in ctx.grids}
    rewritten, left = to_matmul_nbits(fp32_path, nbits_path, ctx.grids, weights, kernels)
    if not rewritten:  # e.g. only Linears the exporter writes as Gemm: the packed file only
        nbits_path.unlink(missing_ok=True)
        info.update(onnx_format="none", onnx_note="no MatMul of the ONNX export holds a "
                    "quantized weight (Gemm only): the packed codes and scales only")
        print(f"quantlib.export: {info['onnx_note']}, {packed.FILE}", flush=True)
        return info
    tmp = int8_path.with_name(f".{int8_path.name}.tmp")
    quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8)
    tmp.replace(int8_path)
    nb, fp32, int8 = session(nbits_path), session(fp32_path), session(int8_path)
    feed = example_input(ctx.evals["validation"], ctx.tokenizer, length, names)
    nb_ms, fp32_ms, int8_ms = latency_ms(nb, feed), latency_ms(fp32, feed), latency_ms(int8, feed)
    onnx_info, verdict = evaluate_against(nb, ctx, names, results)
    info.update(onnx_info)
    info.update(onnx_format="MatMulNBits", onnx_nbits_matmuls=rewritten,
                onnx_fp32_matmuls_left=left, onnx_latency_ms=nb_ms, onnx_fp32_latency_ms=fp32_ms,
                onnx_int8_latency_ms=int8_ms,
                onnx_speedup=fp32_ms / nb_ms if nb_ms > 0 else float("nan"),
                onnx_size_mb=nbits_path.stat().st_size / 1e6,
                onnx_fp32_size_mb=fp32_path.stat().st_size / 1e6,
                onnx_int8_size_mb=int8_path.stat().st_size / 1e6)
    if left:
        info["onnx_note"] = no_kernel_reason(
            {n: g for n, g in ctx.grids.items() if not block_for(g, kernels)}, kernels) + \
            f": {left} weights stay FP32 MatMuls"
    print(f"quantlib.export: ONNX MatMulNBits ({rewritten} MatMuls, {encodings(ctx.grids)}; "
          f"{left} left FP32) {verdict}; latency (batch 1, {length} tokens) {nb_ms:.2f} ms vs "
          f"FP32 {fp32_ms:.2f} ms vs dynamic INT8 {int8_ms:.2f} ms; {packed.FILE} "
          f"{info['packed_size_mb']:.3f} MB", flush=True)
    return info
