"""quantlib.packed: low-bit weights stored as their codes (bits a value) and scales, decoding to
the job's weights bit for bit; MatMulNBits at the bit widths onnxruntime has kernels for."""

from __future__ import annotations

import json

import pytest
import torch

from quantlib import packed
from quantlib.gptq import gptq_weight
from quantlib.quantizers import make_quantizer


def bert_like(rows: int = 12, cols: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.04
    w[0, 3], w[5, 7] = 0.5, -0.4  # outliers, as BERT has
    return w


@pytest.mark.parametrize("bits", range(1, 9))
def test_the_bit_stream_round_trips_and_is_bits_a_value(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (7, 13), generator=g).to(torch.uint8)
    stream = packed.pack_bits(codes, bits)
    assert stream.numel() == -(-7 * 13 * bits // 8)
    assert torch.equal(packed.unpack_bits(stream, bits, 7 * 13).reshape(7, 13), codes)
    if bits == 4:  # value 0 in the low nibble (MatMulNBits' order within a block)
        assert int(stream[0]) == int(codes[0, 0]) | int(codes[0, 1]) << 4


def test_a_stream_of_the_wrong_length_is_refused():
    with pytest.raises(packed.PackedError, match="cannot hold"):
        packed.unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 8)


INQ_CASES = [(mode, bits, per_row) for mode in ("lin", "p2") for bits in (1, 2, 3, 4, 8)
             for per_row in (False, True)] + [("mb", bits, True) for bits in (1, 2, 3, 4)]


@pytest.mark.parametrize("mode,bits,per_row", INQ_CASES)
def test_inq_codes_decode_to_the_projected_weight_exactly(mode, bits, per_row):
    w = bert_like()
    kw = {} if mode == "mb" else {"per_row": per_row, "scale_rule": "mse"}
    q = make_quantizer(mode, bits, **kw).fit(w)
    projected = q.project(w)
    grid = packed.from_inq(q, projected)
    assert int(grid.codes.max()) < 2 ** grid.bits and grid.bits == bits
    assert torch.equal(grid.values(), projected)
    expected = {"lin": "mb" if bits == 1 else "affine", "p2": "p2", "mb": "mb"}[mode]
    assert grid.encoding == expected
    # what is stored beside the codes is what model_size counts for the quantizer
    assert grid.stored_bytes() - (-(-w.numel() * bits // 8)) == q.scale_bytes() + (
        grid.zeros.numel() if grid.zeros is not None else 0)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,group", [(4, 16), (3, 0), (2, 16)])
def test_gptq_codes_decode_to_its_weights_exactly(act_order, bits, group):
    w = bert_like(rows=6, cols=48)
    x = torch.randn(200, 48, generator=torch.Generator().manual_seed(1))
    done = gptq_weight(w, 2 * x.T @ x / 200, bits, group_size=group, act_order=act_order)
    grid = packed.from_gptq(done, bits, group, done.perm)
    assert torch.equal(grid.values(), done.weight.float())


def test_the_file_decodes_to_the_model_and_is_the_size_it_claims(tmp_path):
    w = bert_like(rows=64, cols=96)
    q = make_quantizer("lin", 3, per_row=True, scale_rule="mse").fit(w)
    projected = q.project(w)
    p2 = make_quantizer("p2", 2).fit(w)
    params = {"encoder.q.weight": projected, "encoder.q.bias": torch.randn(64),
              "encoder.k.weight": p2.project(w), "emb.weight": torch.randn(50, 8)}
    grids = {"encoder.q.weight": packed.from_inq(q, projected),
             "encoder.k.weight": packed.from_inq(p2, params["encoder.k.weight"])}
    path = tmp_path / packed.FILE
    size = packed.write(path, params, grids)
    back = packed.read(path)
    assert set(back) == set(params)
    for name, p in params.items():
        assert torch.equal(back[name], p)
    packed.check_equal(path, params)
    # codes 3 and 2 bits a weight, a float32 step a row, an int8 exponent; the rest FP32
    payload = (-(-64 * 96 * 3 // 8) + 64 * 4 + 64) + (-(-64 * 96 * 2 // 8) + 1) + 4 * (64 + 400)
    assert payload <= size <= payload + 2048  # + the safetensors header
    params["encoder.q.bias"] = params["encoder.q.bias"] + 1
    with pytest.raises(packed.PackedError, match="encoder.q.bias decodes 1 away"):
        packed.check_equal(path, params)


def test_a_file_that_is_not_ours_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(packed.PackedError, match="not a quantsweep packed file"):
        packed.read(tmp_path / "x.safetensors")
    meta = {"format": packed.FORMAT, "weights": {"w": {"encoding": "lut", "bits": 3,
                                                      "shape": [2]}}}
    save_file({"w:codes": torch.zeros(1, dtype=torch.uint8)}, str(tmp_path / "y.safetensors"),
              metadata={"quantsweep_packed": json.dumps(meta)})
    with pytest.raises(packed.PackedError, match="encoding 'lut' at 3 bits"):
        packed.read(tmp_path / "y.safetensors")


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matmul_nbits_computes_an_inq_grid_as_we_decode_it(tmp_path, bits):
    """A one-Linear graph through to_matmul_nbits (per-row INQ lin grid, K not a multiple of
    128): onnxruntime's product equals x @ values.T."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from quantlib import export_nbits

    kernels = export_nbits.kernel_bits()
    if bits not in kernels:
        pytest.skip(f"this onnxruntime has no {bits}-bit MatMulNBits")
    w = bert_like(rows=10, cols=48)
    q = make_quantizer("lin", bits, per_row=True, scale_rule="mse").fit(w)
    projected = q.project(w)
    grid = packed.from_inq(q, projected)
    assert export_nbits.block_for(grid, kernels) == 16
    weight = projected.numpy()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 48])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 10])],
        [numpy_helper.from_array(weight.T.copy(), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "fp32.onnx"))
    done, left = export_nbits.to_matmul_nbits(tmp_path / "fp32.onnx", tmp_path / "q.onnx",
                                              {"w": grid}, {"w": weight}, kernels)
    assert (done, left) == (1, 0)
    model = onnx.load(str(tmp_path / "q.onnx"))
    (node,) = model.graph.node
    assert node.op_type == "MatMulNBits" and {a.name: a.i for a in node.attribute}["bits"] == bits
    x = np.random.default_rng(0).standard_normal((3, 48)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "q.onnx"),
                                providers=["CPUExecutionProvider"]).run(None, {"X": x})
    assert np.allclose(y, x @ weight.T, atol=1e-5)


def test_grids_without_a_kernel_are_named():
    from quantlib import export_nbits

    kernels = frozenset({2, 4, 8})
    w = bert_like()
    p2 = packed.from_inq(make_quantizer("p2", 3).fit(w), make_quantizer("p2", 3).fit(w).project(w))
    lin3 = make_quantizer("lin", 3).fit(w)
    grids = {"a": p2, "b": packed.from_inq(lin3, lin3.project(w))}
    assert all(export_nbits.block_for(g, kernels) is None for g in grids.values())
    assert export_nbits.no_kernel_reason(grids, kernels) == (
        "no onnxruntime kernel for affine 3-bit, p2 3-bit (MatMulNBits: affine grids at 2, 4, "
        "8 bits, groups a multiple of 16 columns in order)")


@pytest.mark.slow
def test_low_bit_jobs_write_their_codes_and_run_where_a_kernel_is(tmp_path, tiny_model,
                                                                  demo_task):
    """One sweep, one shared fine-tuning: GPTQ 4-bit in groups of 16 and INQ lin per row at 2
    bits, layer 1 at 4 (mixed precision), run as MatMulNBits (the dev set through the export
    within the tolerance); INQ p2 3-bit has no kernel: the packed file only, said so. Every
    job's model_size_mb is its packed file's."""
    pytest.importorskip("onnxruntime")
    import onnx
    from conftest import sweep_cli, write_spec

    from jobs.ledger import Ledger
    from quantlib import export_nbits

    spec = write_spec(tmp_path, f"""
name: lowbit
grid:
  task: [sst2]
  method: [gptq]                    # 4-bit in groups of 16 (base)
include:
  - {{task: sst2, method: lin, nbits: 2, granularity: row, inq_scale: mse,
      nbits_per_module: {{"*layer.1.*": 4}}}}
  - {{task: sst2, method: p2, nbits: 3}}
base:
  nbits: 4
  group_size: 16
  num_calib_batch: 2
  model_name_or_path: {tiny_model}
  data_dir: {demo_task}
  max_seq_length: 24
  batch_size: 8
  finetune_epochs: 0.25
  epochs_per_stage: 0.25
  inq_steps: [0.5, 1.0]
  max_train_samples: 64
  max_eval_samples: 32
  export: onnx
""")
    proc = sweep_cli("launch", str(spec), "--backend", "local", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "runs/lowbit"
    got = {}
    for e in Ledger(sweep).jobs.values():
        d = sweep / e["output_dir"]
        if (d / "eval_results.json").exists() and e["config"].get("method") != "fp32":
            got[e["config"]["method"]] = (d, json.loads((d / "eval_results.json").read_text()))
    assert set(got) == {"gptq", "lin", "p2"}
    kernels = export_nbits.kernel_bits()
    assert got["lin"][1]["weight_bits_mean"] == 3.0  # half the encoder at 2 bits, half at 4
    for method in ("gptq", "lin"):
        d, r = got[method]
        if not {2, 4} <= kernels:
            continue
        ops = [n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node]
        assert ops.count("MatMulNBits") == r["onnx_nbits_matmuls"] == r["packed_weights"] > 0
        assert r["onnx_format"] == "MatMulNBits" and r["onnx_fp32_matmuls_left"] == 0
        assert abs(r["onnx_eval_accuracy"] - r["eval_accuracy"]) <= 0.01 and not r["onnx_mismatch"]
        assert r["onnx_size_mb"] < r["onnx_fp32_size_mb"]
        assert {"onnx_latency_ms", "onnx_fp32_latency_ms", "onnx_int8_latency_ms"} <= set(r)
        assert r["packed_encoding"] == ("affine 4-bit" if method == "gptq"
                                        else "affine 2-bit, affine 4-bit")
    d, r = got["p2"]
    assert r["onnx_format"] == "none" and not (d / "model.onnx").exists()
    assert r["onnx_note"].startswith("no onnxruntime kernel for p2 3-bit")
    for d, r in got.values():
        size = (d / packed.FILE).stat().st_size
        assert r["model_size_mb"] == r["packed_size_mb"] == size / 1e6
        assert r["compression_ratio"] == pytest.approx(r["fp32_size_mb"] / r["model_size_mb"])
        # the formula's figure and the file differ by the file's header and names only
        assert 0 <= r["model_size_mb"] - r["model_size_computed_mb"] < 0.05
