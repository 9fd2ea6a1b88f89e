"""quantlib/gptq.py against the reference algorithm: the authors' gptq.py (IST-DASLab/gptq,
`GPTQ.add_batch`, `GPTQ.fasterquant` with static_groups=False) and quant.py (`Quantizer`
with perchannel=True, mse=False, `quantize`), transcribed below as the oracle in the
reference's own shape (its class, its loops, its names); the error below round-to-nearest's;
the layer-by-layer order on a tiny BERT; a job end to end, and its block in collect."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from quantlib import gptq

# -- the oracle: the reference, transcribed ------------------------------------------------


def ref_quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class RefQuantizer:
    def configure(self, bits, sym):
        self.maxq = torch.tensor(2 ** bits - 1)
        self.sym = sym

    def find_params(self, x):
        tmp = torch.zeros(x.shape[0])
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1
        self.scale = (xmax - xmin) / self.maxq
        if self.sym:
            self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
        else:
            self.zero = torch.round(-xmin / self.scale)
        self.scale = self.scale.reshape(-1, 1)
        self.zero = self.zero.reshape(-1, 1)


def ref_fasterquant(W, H, bits, blocksize=128, percdamp=.01, groupsize=-1, actorder=False,
                    sym=False):
    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    quantizer = RefQuantizer()
    quantizer.configure(bits, sym)
    quantizer.find_params(W)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1 and (i1 + i) % groupsize == 0:
                quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)])
            q = ref_quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero,
                             quantizer.maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def ref_hessian(batches):
    """add_batch over (1, tokens, in) inputs: nsamples counts the batch dimension (1 each)."""
    H, nsamples = torch.zeros(batches[0].shape[1], batches[0].shape[1]), 0
    for inp in batches:
        inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t()
        H *= nsamples / (nsamples + tmp)
        nsamples += tmp
        inp = math.sqrt(2 / nsamples) * inp.float()
        H += inp.matmul(inp.t())
    return H


# -- the matrices ---------------------------------------------------------------------------


def layer(rows=12, cols=40, tokens=300, seed=0, dead=()):
    """Weights and the Hessian of correlated inputs (as a layer's activations are)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    mix = torch.randn(cols, cols, generator=g) / math.sqrt(cols)
    x = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 2 * mix)
    x[:, list(dead)] = 0.0
    return w, ref_hessian([x[:150], x[150:]])


CASES = [
    dict(bits=4),
    dict(bits=2),
    dict(bits=3, sym=True),
    dict(bits=8),
    dict(bits=4, actorder=True),
    dict(bits=4, groupsize=8, blocksize=16),  # groups starting inside a block
    dict(bits=3, groupsize=10, blocksize=7, actorder=True),  # neither divides the other
    dict(bits=4, blocksize=5, percdamp=0.1),
    dict(bits=2, groupsize=20, sym=True),
]


@pytest.mark.parametrize("case", CASES, ids=[json.dumps(c) for c in CASES])
def test_the_weights_equal_the_reference(case):
    w, h = layer(dead=(3, 17))
    ref = ref_fasterquant(w, h, case["bits"], blocksize=case.get("blocksize", 128),
                          percdamp=case.get("percdamp", 0.01),
                          groupsize=case.get("groupsize", -1),
                          actorder=case.get("actorder", False), sym=case.get("sym", False))
    ours = gptq.gptq_weight(w, h, case["bits"], group_size=case.get("groupsize", 0),
                            act_order=case.get("actorder", False),
                            damp=case.get("percdamp", 0.01),
                            block_size=case.get("blocksize", 128), sym=case.get("sym", False))
    assert torch.allclose(ours.weight, ref, atol=1e-6, rtol=0), (ours.weight - ref).abs().max()
    assert (ours.weight[:, [3, 17]] == 0).all()  # dead inputs: their weights are 0


def test_the_grid_is_the_min_max_grid_of_quant_py():
    w = torch.tensor([[0.5, -0.25, 0.1], [0.0, 0.0, 0.0], [0.3, 0.6, 0.9]])
    scale, zero = gptq.find_params(w, 15, sym=False)
    # row 0: [-0.25, 0.5] over 15 steps, zero round(0.25 / 0.05) = 5; row 1 all zero: [-1, 1],
    # zero round(1 / (2/15)) = 7 (7.4999... in float32); row 2: min clipped to 0 (0 on the grid)
    assert torch.allclose(scale.flatten(), torch.tensor([0.75 / 15, 2 / 15, 0.9 / 15]))
    assert zero.flatten().tolist() == [5.0, 7.0, 0.0]
    scale, zero = gptq.find_params(w, 15, sym=True)
    # sym mirrors only a negative minimum: row 2 keeps [0, 0.9] (quant.py's own behaviour)
    assert torch.allclose(scale.flatten(), torch.tensor([1.0 / 15, 2 / 15, 0.9 / 15]))
    assert zero.flatten().tolist() == [8.0] * 3


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group_size", [0, 8])
def test_the_output_error_is_below_round_to_nearest(bits, group_size):
    w, h = layer(rows=32, cols=64, tokens=512, seed=bits)
    done = gptq.gptq_weight(w, h, bits, group_size=group_size)
    rtn = gptq.rtn_weight(w, bits, group_size)
    ours, theirs = gptq.output_error(w, done.weight, h), gptq.output_error(w, rtn, h)
    assert ours < 0.8 * theirs, (ours, theirs)
    levels = group_size or w.shape[1]
    for c in range(0, w.shape[1], levels):  # every row of every group on a 2^b-level grid
        for row in done.weight[:, c:c + levels]:
            assert len(torch.unique(row)) <= 2 ** bits


def test_the_hessian_is_2_over_n_sum_x_xt_over_the_tokens():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, 6, generator=g) for n in (5, 9, 2)]
    acc = gptq.Hessian(6, torch.device("cpu"))
    for x in xs:
        acc.add(x)
    x = torch.cat(xs)
    assert torch.allclose(acc.h, 2 / x.shape[0] * x.t() @ x, atol=1e-6)
    assert acc.n == 16


def test_layers_in_order_each_from_the_inputs_after_the_quantized_ones(tiny_model):
    """Each encoder layer's query/key/value Hessian is that of its inputs in the final model
    (the layers before it quantized, itself not yet): GPTQ again from that Hessian on the
    original weights gives exactly the weights it has. Padded tokens are left out."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(3):
        ids = torch.randint(5, 90, (4, 12), generator=g)
        mask = torch.ones(4, 12, dtype=torch.long)
        mask[1, 7:], mask[3, 4:] = 0, 0  # padded rows
        batches.append({"input_ids": ids, "attention_mask": mask,
                        "labels": torch.zeros(4, dtype=torch.long)})
    codes, info, grids = gptq.quantize_layers(model, batches, ["*encoder*"], 3, group_size=16)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and "encoder" in n]
    assert set(codes) == {f"{n}.weight" for n in names}
    assert info["gptq_layers"] == len(names) and info["gptq_error_vs_rtn"] < 1.0
    model.eval()
    for n in [n for n in names if n.endswith("attention.self.query")]:
        seen = gptq.Hessian(model.get_submodule(n).in_features, torch.device("cpu"))
        mask_now: list[torch.Tensor] = []

        def hook(module, args, output, seen=seen, mask_now=mask_now):  # noqa: ARG001
            seen.add(args[0][mask_now[0].bool()])

        handle = model.get_submodule(n).register_forward_hook(hook)
        with torch.no_grad():
            for b in batches:
                mask_now[:] = [b["attention_mask"]]
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        handle.remove()
        assert seen.n == sum(int(b["attention_mask"].sum()) for b in batches)
        again = gptq.gptq_weight(original[f"{n}.weight"], seen.h, 3, group_size=16)
        assert torch.allclose(again.weight, model.get_submodule(n).weight, atol=1e-5), n
    untouched = [k for k in original if "encoder" not in k or not k.endswith(".weight")
                 or "LayerNorm" in k]
    assert all(torch.equal(original[k], model.state_dict()[k]) for k in untouched)


def test_a_gptq_job_records_its_settings_and_gets_its_block(tmp_path, tiny_model, demo_task):
    from analysis.blocks import build_blocks
    from analysis.results import find_runs
    from jobs import runtime

    config = {"task": "sst2", "method": "gptq", "nbits": 4, "group_size": 16,
              "act_order": True, "num_calib_batch": 2, "model_name_or_path": str(tiny_model),
              "data_dir": str(demo_task), "max_seq_length": 24, "batch_size": 8,
              "finetune_epochs": 0.25, "max_train_samples": 64, "max_eval_samples": 32,
              "output_dir": str(tmp_path / "runs/g/sst2_gptq4")}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert runtime.main([str(path)]) == 0
    results = json.loads((tmp_path / "runs/g/sst2_gptq4/eval_results.json").read_text())
    assert 0 <= results["eval_accuracy"] <= 1
    assert results["calib_batches"] == 2 and results["gptq_group_size"] == 16
    assert results["gptq_act_order"] is True and results["gptq_damp"] == 0.01
    assert 0 < results["gptq_error_vs_rtn"] < 1
    assert results["model_size_mb"] < results["fp32_size_mb"]
    assert "sparsity" in results  # the zero fraction of the quantized weights
    (block,) = [b for b in build_blocks(find_runs([str(tmp_path / "runs")]).runs)
                if b.method == "gptq"]
    assert block.title == "GPTQ" and 4 in block.bits


def test_the_codes_and_grids_give_back_the_weights():
    w, h = layer(rows=6, cols=48)
    done = gptq.gptq_weight(w, h, 4, group_size=16)
    assert done.codes.dtype == torch.uint8 and int(done.codes.max()) <= 15
    assert done.scales.shape == done.zeros.shape == (6, 3)
    scale = done.scales.repeat_interleave(16, 1)
    zero = done.zeros.repeat_interleave(16, 1)
    assert torch.allclose(scale * (done.codes.float() - zero), done.weight, atol=1e-7)


def test_matmul_nbits_reads_our_packing_as_we_mean_it(tmp_path):
    """One MatMulNBits node on packed random codes (K not a multiple of the block: padded)
    against (code - zero) * scale in numpy."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from quantlib.export_nbits import pack_codes, pack_zero_points

    rng = np.random.default_rng(0)
    n, k, block = 5, 40, 16
    blocks = -(-k // block)
    codes = rng.integers(0, 16, (n, k), dtype=np.uint8)
    zeros = rng.integers(0, 16, (n, blocks), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, (n, blocks)).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "S", "Z"], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, n])],
        [numpy_helper.from_array(pack_codes(codes, block), "B"),
         numpy_helper.from_array(scales.reshape(-1), "S"),
         numpy_helper.from_array(pack_zero_points(zeros), "Z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    a = rng.standard_normal((3, k)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "m.onnx"),
                                providers=["CPUExecutionProvider"]).run(None, {"A": a})
    col_block = np.arange(k) // block
    w = (codes.astype(np.float32) - zeros[:, col_block]) * scales[:, col_block]
    assert np.allclose(y, a @ w.T, atol=1e-4)
