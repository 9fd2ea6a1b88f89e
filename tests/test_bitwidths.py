"""Mixed precision: nbits_per_module's rule (the most specific pattern wins), its validation,
and every method with a bit width giving each weight its own bits, the size following."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from quantlib import bitwidths
from quantlib.configs import ConfigError, LinearINQConfig, resolve

BERT = [f"bert.encoder.layer.{i}.{m}" for i in range(12)
        for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense", "intermediate.dense", "output.dense")]


def test_the_issue_example_layer_11_before_attention_the_rest_nbits():
    bits = bitwidths.assign(BERT, 8, {"*layer.11.*": 2, "*attention*": 4})
    assert bits["bert.encoder.layer.11.attention.self.query"] == 2  # 6 modules beat 48
    assert bits["bert.encoder.layer.11.output.dense"] == 2
    assert bits["bert.encoder.layer.3.attention.output.dense"] == 4
    assert bits["bert.encoder.layer.3.intermediate.dense"] == 8
    again = bitwidths.assign(BERT, 8, {"*attention*": 4, "*layer.11.*": 2})
    assert again == bits  # the order patterns are written in does not matter


def test_ties_go_to_more_literal_characters_then_fewer_bits():
    names = ["a.query", "a.key", "b.query", "b.key"]
    # both reach 2 modules; "a.*" has 2 literal characters, "*query" 5
    assert bitwidths.assign(names, 8, {"a.*": 2, "*query": 6})["a.query"] == 6
    # equal reach and letters: the fewer bits
    assert bitwidths.assign(names, 8, {"a*ey": 3, "a.k*": 2})["a.key"] == 2


def test_unmatched_patterns_are_named():
    assert bitwidths.unmatched(BERT, {"*layer.12.*": 2, "*layer.1.*": 3}) == ["*layer.12.*"]


@pytest.mark.parametrize("value,message", [
    ({"*layer.1.*": 9}, "'*layer.1.*': 9 is not a bit width in 1..8"),
    ({"*layer.1.*": True}, "True is not a bit width"),
    ({"\x1b[2J": 2}, "pattern '\\x1b[2J': allowed are fnmatch patterns"),
    ({"$(rm -rf ~)": 2}, "allowed are fnmatch patterns"),
    ({"": 2}, "allowed are fnmatch patterns"),
    (["*layer.1.*"], "is not a mapping of module patterns to bit widths"),
    ({f"p{i}": 2 for i in range(300)}, "300 patterns; at most 256"),
])
def test_a_bad_map_is_one_clear_error(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        resolve({"task": "sst2", "method": "lin", "nbits": 4, "nbits_per_module": value})
    assert e.value.key == "nbits_per_module"


def test_the_qat_family_takes_2_to_8_and_its_qdq_export_stays_8_bit():
    with pytest.raises(ConfigError, match="1 is not a bit width in 2..8"):
        resolve({"task": "sst2", "method": "qat", "nbits_per_module": {"*layer.1.*": 1}})
    with pytest.raises(ConfigError, match="nbits_per_module gives \\*layer.1.\\*: 4"):
        resolve({"task": "sst2", "method": "ptq", "export": "onnx",
                 "nbits_per_module": {"*layer.1.*": 4}})
    resolve({"task": "sst2", "method": "lin", "nbits": 4, "export": "onnx",
             "nbits_per_module": {"*layer.1.*": 2}})


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.ModuleDict({"attn": nn.Linear(32, 64), "ffn": nn.Linear(64, 32)})

    def forward(self, x):
        return self.encoder["ffn"](torch.relu(self.encoder["attn"](x)))


def test_inq_gives_each_weight_its_own_level_set_and_the_size_follows():
    from quantlib import model_size
    from quantlib.inq import INQController
    from quantlib.stages import TrainingStage, select_weights

    net = Net()
    cfg = LinearINQConfig(nbits=4, nbits_per_module={"encoder.ffn": 2})
    weights = select_weights(net, ("encoder.*",))
    ctl = INQController(weights, cfg, [TrainingStage("inq1", 0.0, 1.0)])
    ctl.apply_due(None)
    assert ctl.bits == {"encoder.attn.weight": 4, "encoder.ffn.weight": 2}
    s = ctl.summary()
    assert s["weights_over_level_limit"] == 0 and s["level_limit"] == 15
    assert torch.unique(net.encoder["ffn"].weight).numel() <= 3  # 2 bits: -d, 0, d
    assert 3 < torch.unique(net.encoder["attn"].weight).numel() <= 15
    measured = model_size.measure(net, ctl.codes())
    assert measured["weight_bits_mean"] == 3.0  # 2048 weights at 4 bits, 2048 at 2
    size = measured["model_size_mb"] * 1e6
    biases = 4 * (64 + 32)
    assert size == (32 * 64 * 4 + 7) // 8 + 4 + (64 * 32 * 2 + 7) // 8 + 4 + biases
    grids = ctl.packed()
    assert {n: g.bits for n, g in grids.items()} == ctl.bits
    with pytest.raises(ValueError, match="nbits_per_module: encoder.nothing matches none"):
        INQController(weights, LinearINQConfig(nbits=4, nbits_per_module={"encoder.nothing": 2}),
                      [])


def test_gptq_quantizes_each_layer_at_its_bits(tiny_model):
    from transformers import AutoModelForSequenceClassification

    from quantlib import gptq

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(5, 90, (4, 12), generator=g)} for _ in range(2)]
    codes, _, grids = gptq.quantize_layers(model, batches, ["*encoder*"], 4,
                                           nbits_per_module={"*layer.1.*": 2,
                                                             "*layer.0.attention.self.query": 3})
    for name, code in codes.items():
        want = 2 if "layer.1." in name else 3 if "layer.0.attention.self.query" in name else 4
        assert code.bits == grids[name].bits == want, name
        assert int(grids[name].codes.max()) < 2 ** want
        assert torch.equal(grids[name].values(), model.get_parameter(name).detach())


def test_the_qat_family_sets_each_weight_quantizer(tiny_model):
    from transformers import AutoModelForSequenceClassification

    from quantlib.configs import PTQConfig, Q8BertConfig
    from quantlib.model_size import fake_quant_codes
    from quantlib.qmodules import quantizers
    from quantlib.quantize_model import install_ft, install_q8bert

    for cfg, install in ((PTQConfig(quant_mode="ft2", nbits_per_module={"*layer.1.*": 4}),
                          install_ft),
                         (Q8BertConfig(nbits_per_module={"*layer.1.*": 4,
                                                         "*word_embeddings": 6}),
                          install_q8bert)):
        model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
        install(model, cfg, ("*encoder.layer.*",))
        for q in quantizers(model).values():
            q.enabled = True  # as the QAT stage / calibration turns them on
        codes = fake_quant_codes(model)  # what the size accounting reads
        assert len(codes) >= 12, cfg
        for name, code in codes.items():
            want = 4 if "layer.1." in name else 6 if "word_embeddings" in name else 8
            assert code.bits == want, (type(cfg).__name__, name)
        # activations keep nbits
        acts = [m for n, m in model.named_modules() if n.endswith("input_quantizer")]
        assert acts and all(q.nbits == 8 for q in acts)
