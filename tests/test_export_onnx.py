"""export: onnx — an 8-bit job's model as ONNX QDQ with its own scales, evaluated with
onnxruntime, timed against the FP32 export; what the spec may ask for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import sweep_cli, write_spec

from jobs.ledger import Ledger
from quantlib.configs import ConfigError, resolve
from quantlib.export_onnx import TOLERANCE, compare

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SPEC = """
name: onnx
grid:
  task: [sst2]
  method: [ptq, q8bert, sparse24]
base:
  quant_mode: ft2
  calibrator: max
  head_start_step: 0
  qat: true                # sparse24: 2:4 pruning, then QAT, pattern locked
  sparse_epochs: 0.5
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 32
  batch_size: 32
  learning_rate: 5.0e-4
  finetune_epochs: 6
  qat_epochs: 0.5
  export: onnx
  save_model: true
"""


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, tiny_model):
    from quantlib.demo import write_glue_tsv

    root = tmp_path_factory.mktemp("onnx")
    data = write_glue_tsv(root / "SST-2", n_train=2000, n_dev=200)  # enough to learn the task
    spec = write_spec(root, SPEC.format(model=tiny_model, data=data))
    proc = sweep_cli("launch", str(spec), "--backend", "local", "--max-parallel", "2", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = {}
    for e in Ledger(root / "runs/onnx").jobs.values():
        d = root / "runs/onnx" / e["output_dir"]
        out[e["config"]["method"]] = (d, json.loads((d / "eval_results.json").read_text()),
                                      Path(root / "runs/onnx" / e["log"]).read_text())
    return out


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("method", ["ptq", "q8bert"])
def test_the_export_keeps_the_metric_and_is_timed(jobs, method):
    out, results, log = jobs[method]
    assert abs(results["onnx_eval_accuracy"] - results["eval_accuracy"]) <= TOLERANCE
    assert results["onnx_mismatch"] is False
    assert results["onnx_latency_ms"] > 0 and results["onnx_fp32_latency_ms"] > 0
    assert results["onnx_speedup"] == pytest.approx(
        results["onnx_fp32_latency_ms"] / results["onnx_latency_ms"])
    assert "quantlib.export: ONNX INT8 metrics within 0.01 of PyTorch's" in log
    # the CPU form (export_cpu_int8): every quantized Linear one fused int8 node, evaluated
    assert (out / "model_int8_cpu.onnx").is_file()
    assert results["onnx_cpu_fused"] == results["onnx_cpu_quantized_matmuls"] == 12
    assert abs(results["onnx_cpu_eval_accuracy"] - results["eval_accuracy"]) <= 0.05
    assert results["onnx_cpu_latency_ms"] > 0 and "onnx_cpu_threads" not in results
    assert results["onnx_cpu_isa"] and "ONNX INT8 for the CPU (dynamic activations" in log
    int8, fp32 = ops(out / "model.onnx"), ops(out / "model_fp32.onnx")
    assert "QuantizeLinear" not in fp32 and "DequantizeLinear" not in fp32
    # identical QDQ pairs (Q, K and V's inputs: one tensor, one scale) are merged by the
    # exporter: at most one pair per quantizer that is on, and every quantized weight has one
    assert 0 < int8.count("DequantizeLinear") <= results["quantizers_enabled"]
    graph = onnx.load(str(out / "model.onnx")).graph
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    stored = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"} & int8
    # weights stored as int8 feeding their DequantizeLinear, no float copy left: ptq the 2
    # layers' 6 GEMMs; q8bert + 3 embeddings, the pooler and the head
    assert len(stored) == {"ptq": 12, "q8bert": 17}[method]
    assert not any(".encoder." in i.name and i.name.endswith(("query.weight", "dense.weight"))
                   for i in graph.initializer)  # the GEMMs' float weights are gone
    assert results["onnx_size_mb"] < results["onnx_fp32_size_mb"]
    assert results["eval_pred_classes"] == 2  # a model that learnt something


def test_sparse_24_with_qat_exports_and_is_the_smallest(jobs):
    """2:4 + 8-bit QAT: the export keeps the accuracy; the size counts half the GEMM values at
    8 bits plus their 2-bit indices, so it is below the dense 8-bit PTQ model's."""
    _, results, log = jobs["sparse24"]
    assert results["onnx_mismatch"] is False and "metrics within 0.01" in log
    assert abs(results["onnx_eval_accuracy"] - results["eval_accuracy"]) <= TOLERANCE
    ptq = jobs["ptq"][1]
    # same quantizers (ft2), the same FP32 rest: the difference is the 12 GEMM weights'
    # codes, 8 bits each dense, (8 + 2) / 2 bits each as 2:4 (2 layers: 4 x 64x64 + 2 x 64x128)
    gemm = 2 * (4 * 64 * 64 + 2 * 64 * 128)
    saved = gemm * (1 - 10 / 16) / 1e6
    assert ptq["model_size_mb"] - results["model_size_mb"] == pytest.approx(saved, rel=1e-6)


def test_ptq_scales_are_the_jobs_own(jobs):
    """The QDQ scales in the graph are the job's calibrated amax / 127 (its saved model's
    buffers), nothing else."""
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    out, _, _ = jobs["ptq"]
    amax = {k: v for f in (out / "model").glob("*.safetensors")
            for k, v in load_file(str(f)).items() if k.endswith(".amax")}
    assert len(amax) == 48  # ft2: 24 per layer
    expected = {np.float32(float(a) / 127.0) for a in amax.values()}
    graph = onnx.load(str(out / "model.onnx")).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    scales = {np.float32(consts[n.input[1]]) for n in graph.node
              if n.op_type == "DequantizeLinear"}
    assert scales == expected


def test_compare_flags_a_mismatch():
    assert compare({"accuracy": 0.80}, {"accuracy": 0.85}) == ("accuracy", pytest.approx(0.05),
                                                               True)
    assert compare({"accuracy": 0.845}, {"accuracy": 0.85})[2] is False
    assert compare({"accuracy": float("nan")}, {"accuracy": 0.85}) == (None, 0.0, False)


@pytest.mark.parametrize("values,message", [
    ({"method": "fp32"}, "method 'fp32' has no 8-bit QDQ form"),
    ({"method": "q8bert", "nbits": 4}, "the export is 8-bit (int8 QDQ); nbits is 4"),
    ({"method": "sparse24"}, ", sparse24, magnitude, pruneofa with qat: true, and the low-bit "
                             "methods (packed codes, MatMulNBits): p2, lin, mb, gptq"),
])
def test_what_may_be_exported(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve({"task": "sst2", "export": "onnx", **values})
    resolve({"task": "sst2", "export": "onnx", "method": "sparse24", "qat": True})
    for low_bit in ({"method": "gptq", "group_size": 48, "nbits": 3, "act_order": True},
                    {"method": "p2", "nbits": 3}, {"method": "mb", "nbits": 2},
                    {"method": "lin", "nbits": 1}):  # packed codes at any bit width
        resolve({"task": "sst2", "export": "onnx", **low_bit})


SQUAD_SPEC = """
name: onnx-squad
grid:
  task: [squad]
  method: [ptq]
base:
  quant_mode: ft1
  calibrator: max
  model_name_or_path: {model}
  data_dir: {data}
  max_seq_length: 64
  doc_stride: 16
  max_query_length: 16
  batch_size: 32
  learning_rate: 1.0e-3
  finetune_epochs: 6
  logging_steps: 1000
  export: onnx
"""


def test_squad_export_decodes_the_same_answers(tmp_path, tiny_model):
    """SQuAD through the export: the windows' start and end logits from onnxruntime, decoded
    as PyTorch's evaluation decodes them, give EM / F1 within a point of PyTorch's."""
    from quantlib.demo import write_squad_json

    data = write_squad_json(tmp_path / "squad", n_train=1000, n_dev=150, positive_answer=True)
    spec = write_spec(tmp_path, SQUAD_SPEC.format(model=tiny_model, data=data))
    proc = sweep_cli("launch", str(spec), "--backend", "local", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (entry,) = Ledger(tmp_path / "runs/onnx-squad").jobs.values()
    out = tmp_path / "runs/onnx-squad" / entry["output_dir"]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_f1"] > 50  # the tiny model learnt the task
    for metric in ("exact_match", "f1"):
        assert abs(results[f"onnx_eval_{metric}"] - results[f"eval_{metric}"]) <= 1.0
    assert results["onnx_mismatch"] is False
    assert ops(out / "model.onnx").count("DequantizeLinear") > 0
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["start_logits", "end_logits"]


@pytest.mark.parametrize("mode", ["ft1", "ft2"])
def test_the_cpu_export_is_onnxruntimes_fused_int8_with_our_weights(tmp_path, mode):
    """The CPU form: onnxruntime's dynamic-quantization graph with the job's own int8 weights.
    In the graph the CPU provider runs, every quantized matmul is one fused int8 node
    (DynamicQuantizeMatMul / MatMulIntegerToFloat), no Q/DQ pair or unfused MatMulInteger is
    left, the stored weights are the fake-quant model's codes, and the logits stay near it."""
    import torch
    from onnx import numpy_helper
    from transformers import BertConfig, BertForSequenceClassification

    from quantlib import export_onnx
    from quantlib.configs import PTQConfig
    from quantlib.qmodules import QuantLinear, quantizers
    from quantlib.quantize_model import calibrate, enable, fuse_qkv, install_ft

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=2)).eval()
    install_ft(model, PTQConfig(quant_mode=mode, calibrator="max"), ("*encoder.layer.*",))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 200, (8, 24), generator=g),
                "attention_mask": torch.ones(8, 24, dtype=torch.long)} for _ in range(3)]
    calibrate(model, batches)
    if mode != "ft1":
        fuse_qkv(model)
    enable(quantizers(model).values())
    feed = {"input_ids": batches[0]["input_ids"][:2].numpy(),
            "attention_mask": batches[0]["attention_mask"][:2].numpy(),
            "token_type_ids": np.zeros((2, 24), np.int64)}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    fp32, cpu = tmp_path / "fp32.onnx", tmp_path / "cpu.onnx"
    export_onnx.export(model, fp32, names, 24, quantized=False)
    linears = sum(1 for m in model.modules() if isinstance(m, QuantLinear))
    assert export_onnx.export_cpu_int8(model, fp32, cpu) == linears == 12  # 6 per layer
    fused = export_onnx.fused_nodes(cpu)
    assert sum(fused.get(op, 0) for op in export_onnx.FUSED_INT8) == 12
    for op in ("MatMulInteger", "QuantizeLinear", "DequantizeLinear"):
        assert fused.get(op, 0) == 0, (op, fused)
    # left in float: the attention matmuls (QK^T, PV: dropped, CPU_EXPORT_DROPS) and the
    # pooler and classifier (FP32 in FT's modes); fused as onnxruntime fuses float ones
    assert fused.get("MatMul", 0) + fused.get("FusedMatMul", 0) == 4
    assert fused.get("Gemm", 0) + fused.get("FusedGemm", 0) == 2
    # after onnxruntime's transformer optimizer: Q, K and V in one QAttention, still ours
    opt = tmp_path / "cpu_optimized.onnx"
    assert export_onnx.export_cpu_int8(model, fp32, opt, optimized=True) == 12
    fused_opt = export_onnx.fused_nodes(opt)
    assert fused_opt.get("QAttention", 0) == 2 and fused_opt.get("DynamicQuantizeMatMul", 0) == 6
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left
    got_opt = export_onnx.session(opt).run(None, feed)[0]
    # the weights are ours: the QDQ export's codes and scales (amax / 127), not recomputed
    ours = export_onnx._int8_weights(model)
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(cpu)).graph.initializer}
    codes = [v for k, v in stored.items() if k.endswith("_quantized") and v.ndim == 2]
    assert len(codes) == 12
    assert sorted(c.tobytes() for c, _ in ours.values()) == sorted(c.tobytes() for c in codes)
    got = export_onnx.session(cpu).run(None, feed)[0]
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    for logits in (got, got_opt):
        assert np.abs(logits - want).max() < 0.05 * max(1.0, float(np.abs(want).max()))
