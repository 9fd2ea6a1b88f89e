"""Which quantizers each method inserts (ft1/ft2/ft3 exactly as documented, Q8BERT), that the
quantized modules compute what the originals compute when their quantizers are off, and that
calibration reads weights without changing them."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from quantlib.configs import PTQConfig, Q8BertConfig
from quantlib.qmodules import quantizers
from quantlib.qplans import calibrate, enable, fuse_qkv, install_ft, install_q8bert

ENCODER = ("*encoder.layer.*",)
GEMMS = ["attention.self.query", "attention.self.key", "attention.self.value",
         "attention.output.dense", "intermediate.dense", "output.dense"]
FT1 = sorted(f"{g}.{w}_quantizer" for g in GEMMS for w in ("input", "weight"))
FT2 = sorted(FT1 + [f"attention.self.matmul_{x}_input_quantizer" for x in "qkva"]
             + [f"{m}.add_{x}_input_quantizer" for m in ("attention.output", "output")
                for x in ("local", "residual")])
FT3 = sorted(FT2 + ["attention.self.softmax_input_quantizer"])
DOCUMENTED = {"ft1": FT1, "ft2": FT2, "ft3": FT3}


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
        assert fuse_qkv(model) == 4  # 2 layers x (matmul inputs, weights)
        att = model.bert.encoder.layer[0].attention.self
        triple = [att.matmul_q_input_quantizer, att.matmul_k_input_quantizer,
                  att.matmul_v_input_quantizer]
        assert len({float(q.amax) for q in triple}) == 1
        assert float(att.query.weight_quantizer.amax) == max(
            float(lin.weight.detach().abs().max()) for lin in (att.query, att.key, att.value))
    enable(qs.values())
    quantized = model(**batch()).logits
    assert not torch.equal(quantized, reference)
    assert torch.allclose(quantized, reference, atol=0.1)  # 8 bits: close


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
