"""Which quantizers each method inserts (ft1/ft2/ft3 exactly as documented, Q8BERT), that the
quantized modules compute what the originals compute when their quantizers are off, and that
calibration reads weights without changing them."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from quantlib.configs import PTQConfig, Q8BertConfig
from quantlib.qmodules import quantizers
from quantlib.quantize_model import calibrate, enable, fuse_qkv, install_ft, install_q8bert

ENCODER = ("*encoder.layer.*",)

# FasterTransformer examples/pytorch/bert/bert-quantization-sparsity, written out here from its
# files (not from quantlib): modeling.py's quantizer modules per encoder layer ...
FT_GEMMS = ["attention.self.query", "attention.self.key", "attention.self.value",
            "attention.output.dense", "intermediate.dense", "output.dense"]
FT_LAYER = ([f"{g}._{q}_quantizer" for g in FT_GEMMS for q in ("input", "weight", "aftergemm")]
            + [f"attention.self.{q}_quantizer" for q in ("matmul_q_input", "matmul_k_input",
                                                         "matmul_v_input", "matmul_a_input",
                                                         "softmax_input")]
            + [f"{b}.{q}_quantizer" for b in ("attention.output", "output")
               for q in ("add_local_input", "add_residual_input", "layernorm_input")])
# ... and quant_utils.set_args' quant_disable_keyword lists
FT_SET_ARGS = {
    "ft1": ['final_input', 'layernorm_input', 'softmax_input', 'residual_input', 'local_input',
            'aftergemm'],
    "ft2": ['final_input', 'layernorm_input', 'softmax_input', 'local_input'],
    "ft3": ['final_input', 'layernorm_input', 'local_input'],
}


def ft_on(mode: str, layer: int) -> list[str]:
    """quant_utils.set_quantizer_by_name(model, keywords, _disabled=True) on FT's names."""
    on = []
    for rel in FT_LAYER:
        name = f"bert.encoder.layer.{layer}.{rel}"
        module, attr = name.rsplit(".", 1)
        # a LinearActivation has _input_quantizer: matched by its own name, both input and
        # weight quantizers go; otherwise a *_quantizer module is matched by its name
        text = module if attr in ("_input_quantizer", "_weight_quantizer") else name
        if not any(re.search(k, text) for k in FT_SET_ARGS[mode]):
            on.append(rel.replace("._", "."))  # ours: input_quantizer for FT's _input_quantizer
    return sorted(on)


DOCUMENTED = {mode: ft_on(mode, 0) for mode in FT_SET_ARGS}


def test_ft_inventory_counts_per_layer():
    # the figures: ft1 16 per layer (the 4 attention-matmul inputs on), ft2 24 (+ 6
    # aftergemm, 2 add_residual), ft3 25 (+ softmax input); add_local off in all three
    assert {m: len(v) for m, v in DOCUMENTED.items()} == {"ft1": 16, "ft2": 24, "ft3": 25}
    assert not any("add_local" in n or "layernorm_input" in n for v in DOCUMENTED.values()
                   for n in v)
    assert "intermediate.dense.aftergemm_quantizer" in DOCUMENTED["ft2"]  # the GELU input


@pytest.fixture
def model(tmp_path):
    from quantlib.demo import write_model

    path = write_model(tmp_path / "m", num_labels=2, seed=3)
    m = AutoModelForSequenceClassification.from_pretrained(path)
    m.eval()
    return m


def batch(n=4, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 80, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # padding exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def per_layer(names):
    layers: dict[str, list[str]] = {}
    for name in names:
        m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.+)", name)
        assert m, name  # nothing outside the encoder layers
        layers.setdefault(m.group(1), []).append(m.group(2))
    return {k: sorted(v) for k, v in layers.items()}


@pytest.mark.parametrize("mode", ["ft1", "ft2", "ft3"])
def test_ft_modes_quantize_exactly_the_documented_tensors(model, mode):
    reference = model(**batch()).logits
    install_ft(model, PTQConfig(quant_mode=mode), ENCODER)
    qs = quantizers(model)
    assert per_layer(qs) == {"0": DOCUMENTED[mode], "1": DOCUMENTED[mode]}
    weights = {n: q for n, q in qs.items() if n.endswith("weight_quantizer")}
    assert {q.granularity for q in weights.values()} == {"channel" if mode == "ft1"
                                                        else "tensor"}
    # inserted but off: the model computes what it computed before (eager == sdpa)
    assert torch.allclose(model(**batch()).logits, reference, atol=1e-5)

    params = {k: v.clone() for k, v in model.named_parameters()}
    calibrate(model, [batch(seed=s) for s in range(3)])
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())
    for name, q in weights.items():
        w = model.get_submodule(name.rsplit(".", 1)[0]).weight
        expected = w.abs().amax(dim=1, keepdim=True) if mode == "ft1" else w.abs().max()
        if mode == "ft1" or not re.search(r"\.(query|key|value)\.", name):
            assert torch.equal(q.amax, expected), name
    if mode != "ft1":
        assert fuse_qkv(model) == 6  # 2 layers x (matmul inputs, weights, aftergemm)
        att = model.bert.encoder.layer[0].attention.self
        for triple in ([att.matmul_q_input_quantizer, att.matmul_k_input_quantizer,
                        att.matmul_v_input_quantizer],
                       [lin.aftergemm_quantizer for lin in (att.query, att.key, att.value)]):
            assert len({float(q.amax) for q in triple}) == 1
        assert float(att.query.weight_quantizer.amax) == max(
            float(lin.weight.detach().abs().max()) for lin in (att.query, att.key, att.value))
    enable(qs.values())
    quantized = model(**batch()).logits
    assert not torch.equal(quantized, reference)
    assert torch.allclose(quantized, reference, atol=0.1)  # 8 bits: close


def fake_quant(x, amax, bits=8):
    """pytorch-quantization's fake_tensor_quant, full range (FT: narrow_range False)."""
    max_bound = 2 ** (bits - 1) - 1
    scale = max_bound / amax
    return torch.clamp(torch.round(x * scale), -max_bound - 1, max_bound) / scale


def test_ft3_attention_computes_fts_modeling_forward(model):
    """Layer 0's self-attention, quantized, against FT modeling.py's forward written out:
    LinearActivation = bias + aftergemm(input_q(x) @ weight_q(W)^T); the softmax input
    quantizer on the raw QK^T, then / sqrt(d), the mask, softmax."""
    att = model.bert.encoder.layer[0].attention.self
    with torch.no_grad():  # the random-init model attends almost uniformly: sharpen it
        att.query.weight.mul_(8)
        att.key.weight.mul_(8)
    install_ft(model, PTQConfig(quant_mode="ft3", calibrator="max"), ENCODER)
    calibrate(model, [batch(seed=s) for s in range(2)])
    fuse_qkv(model)
    enable(quantizers(model).values())
    x = torch.randn(2, 7, model.config.hidden_size, generator=torch.Generator().manual_seed(5))

    def gemm(lin):
        y = F.linear(fake_quant(x, lin.input_quantizer.amax),
                     fake_quant(lin.weight, lin.weight_quantizer.amax))
        return fake_quant(y, lin.aftergemm_quantizer.amax) + lin.bias

    heads, size = att.num_attention_heads, att.attention_head_size

    def split(t):
        return t.reshape(2, 7, heads, size).permute(0, 2, 1, 3)

    q, k, v = split(gemm(att.query)), split(gemm(att.key)), split(gemm(att.value))
    scores = torch.matmul(fake_quant(q, att.matmul_q_input_quantizer.amax),
                          fake_quant(k, att.matmul_k_input_quantizer.amax).transpose(2, 3))
    # an amax that clips the raw scores, so that where the quantizer sits (before or after the
    # 1/sqrt(d) scale) shows
    att.softmax_input_quantizer.amax.fill_(float(scores.detach().abs().max()) / 3)
    scores = fake_quant(scores, att.softmax_input_quantizer.amax) / math.sqrt(size)
    probs = F.softmax(scores, dim=-1)
    context = torch.matmul(fake_quant(probs, att.matmul_a_input_quantizer.amax),
                           fake_quant(v, att.matmul_v_input_quantizer.amax))
    expected = context.permute(0, 2, 1, 3).reshape(2, 7, -1)
    with torch.no_grad():
        ours, _ = att(x)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_q8bert_quantizes_embeddings_encoder_pooler_and_a_delayed_head(model):
    now, later = install_q8bert(model, Q8BertConfig(nbits=8), ENCODER)
    names = {id(q): n for n, q in quantizers(model).items()}
    now_names = sorted(names[id(q)] for q in now)
    later_names = sorted(names[id(q)] for q in later)
    assert later_names == ["classifier.input_quantizer", "classifier.weight_quantizer"]
    emb = [n for n in now_names if "embeddings" in n]
    assert emb == [f"bert.embeddings.{e}_embeddings.weight_quantizer"
                   for e in ("position", "token_type", "word")]
    assert "bert.pooler.dense.input_quantizer" in now_names
    encoder = [n for n in now_names if ".encoder." in n]
    assert len(encoder) == 2 * 6 * 2  # 2 layers x 6 GEMMs x (input, weight)
    assert not any("LayerNorm" in n for n in names.values())
    kinds = {names[id(q)].rsplit(".", 1)[1]: (q.amax_mode, q.narrow) for q in now}
    assert kinds == {"input_quantizer": ("ema", True), "weight_quantizer": ("dynamic", True)}


def test_ft2_on_a_model_without_bert_attention_is_a_clear_error(model):
    with pytest.raises(ValueError, match="quant_mode ft2 quantizes BERT's attention"):
        install_ft(model, PTQConfig(quant_mode="ft2"), ("*nothing*", "*classifier*"))
