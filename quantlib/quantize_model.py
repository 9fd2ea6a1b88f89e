"""Where each QAT/PTQ method puts its fake quantizers in a model (install_*), and their
calibration (calibrate, save_calibration, load_calibration).

Q8BERT (`install_q8bert`): embeddings (word, position, token type), every encoder Linear
(input EMA + weight max|W|, optionally the output), pooler and task head; narrow symmetric range.

FasterTransformer quant modes (`install_ft`): FT's own rule, derived here from the same data.
FT's modeling.py (examples/pytorch/bert/bert-quantization-sparsity) defines, per encoder layer,
29 quantizers (`FT_LAYER_QUANTIZERS`) and one after the encoder; `quant_utils.set_args` gives
each mode a list of keywords (`FT_DISABLED_KEYWORDS`), and `set_quantizer_by_name` disables
every quantizer whose name `re.search`es one of them. What stays on, per layer:

| quantizer                                                  | ft1 | ft2 | ft3 |
|------------------------------------------------------------|-----|-----|-----|
| input + weight of the 6 GEMMs (query, key, value,          |  x  |  x  |  x  |
|   attention.output.dense, intermediate.dense, output.dense)|     |     |     |
| weights per output channel (else per tensor)               |  x  |     |     |
| attention matmul inputs: matmul_q/k/v (the Q/K/V GEMM      |  x  |  x  |  x  |
|   outputs) and matmul_a (the probabilities)                |     |     |     |
| aftergemm: each GEMM's output before its bias (6)          |     |  x  |  x  |
| add_residual (the residual input of the 2 adds)            |     |  x  |  x  |
| softmax input (raw QK^T, before the scale and the mask)    |     |     |  x  |
| add_local, layernorm_input, encoder final_input            |     |     |     |

16 / 24 / 25 per layer. ft2/ft3 fuse the Q/K/V amax (FT's fuse_qkv: matmul_q/k/v inputs, the
per-tensor q/k/v weights and their aftergemm): the max of the three. Embeddings, pooler, head,
LayerNorm and GELU stay FP in every mode.

Distillation for quantization (`install_distill_quant`): encoder Linear weights (dynamic: per
tensor, channel or group of rows) and inputs (EMA per tensor, or dynamic per token).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertOutput, BertSelfAttention, BertSelfOutput

from quantlib import bitwidths
from quantlib.calibrators import MaxCalibrator, make_calibrator
from quantlib.configs import DistillQuantConfig, PTQConfig, Q8BertConfig, QATConfig
from quantlib.fake_quant import TensorQuantizer
from quantlib.qmodules import (
    ATTENTION_QUANTIZERS,
    QuantEmbedding,
    QuantLinear,
    QuantSelfAttention,
    convert_residual,
    quantizers,
)
from quantlib.stages import matches, select_linears


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# -- Q8BERT --------------------------------------------------------------------------------
def install_q8bert(model: nn.Module, cfg: Q8BertConfig,
                   patterns: tuple[str, ...]) -> tuple[list[TensorQuantizer],
                                                      list[TensorQuantizer]]:
    """Returns (quantizers from the QAT start, head quantizers that start later)."""
    def weight_q() -> TensorQuantizer:
        return TensorQuantizer(cfg.nbits, amax_mode="dynamic", narrow=True, ste=cfg.ste)

    def act_q() -> TensorQuantizer:
        return TensorQuantizer(cfg.nbits, amax_mode="ema", narrow=True, ste=cfg.ste,
                               decay=cfg.ema_decay)

    now: list[TensorQuantizer] = []
    later: list[TensorQuantizer] = []
    base = {id(m) for m in model.base_model.modules()}
    targets = select_linears(model, patterns, required=True)
    if cfg.quantize_head:
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and ("pooler" in name or id(m) not in base):
                targets[name] = m
    for lin in targets.values():
        qs = {"input": act_q(), "weight": weight_q(),
              "output": act_q() if cfg.quantize_outputs else None}
        QuantLinear.convert(lin, **qs, integer_inference=cfg.integer_inference)
        group = now if id(lin) in base else later
        group += [q for q in qs.values() if q is not None]
    if cfg.quantize_embeddings:
        for name, m in model.named_modules():
            if type(m) is nn.Embedding and "embeddings" in name:
                q = weight_q()
                QuantEmbedding.convert(m, q)
                now.append(q)
    set_weight_bits(model, cfg)
    return now, later


def set_weight_bits(model: nn.Module, cfg: object) -> dict[str, int]:
    """Give each weight quantizer the bit width `nbits_per_module` assigns its module
    (quantlib.bitwidths); returns them (empty without nbits_per_module)."""
    per_module = getattr(cfg, "nbits_per_module", None)
    if not per_module:
        return {}
    qs = {n: m.weight_quantizer for n, m in model.named_modules()
          if isinstance(getattr(m, "weight_quantizer", None), TensorQuantizer)}
    bitwidths.require_matched(qs, per_module)
    bits = bitwidths.assign(qs, cfg.nbits, per_module)  # type: ignore[attr-defined]
    for name, b in bits.items():
        qs[name].nbits = b
    return bits


# -- FasterTransformer modes (PTQ / QAT) ---------------------------------------------------
def weight_granularity(cfg: PTQConfig) -> str:
    if cfg.weight_granularity != "auto":
        return cfg.weight_granularity
    return "channel" if cfg.quant_mode == "ft1" else "tensor"


# FT modeling.py's quantizers, named as FT names them (relative to an encoder layer; the
# encoder's own is "encoder.final_input_quantizer"). A GEMM is FT's LinearActivation with
# do_quant=True and a bias: `_input_quantizer`, `_weight_quantizer`, `_aftergemm_quantizer`.
FT_GEMMS = ("attention.self.query", "attention.self.key", "attention.self.value",
            "attention.output.dense", "intermediate.dense", "output.dense")
FT_LAYER_QUANTIZERS = (
    *(f"{g}.{q}" for g in FT_GEMMS
      for q in ("_input_quantizer", "_weight_quantizer", "_aftergemm_quantizer")),
    *(f"attention.self.{q}" for q in ("matmul_q_input_quantizer", "matmul_k_input_quantizer",
                                      "matmul_v_input_quantizer", "matmul_a_input_quantizer",
                                      "softmax_input_quantizer")),
    *(f"{block}.{q}" for block in ("attention.output", "output")
      for q in ("add_local_input_quantizer", "add_residual_input_quantizer",
                "layernorm_input_quantizer")),
)
FT_ENCODER_QUANTIZERS = ("encoder.final_input_quantizer",)
# quant_utils.set_args: quant_disable_keyword per mode
FT_DISABLED_KEYWORDS = {
    "ft1": ("final_input", "layernorm_input", "softmax_input", "residual_input", "local_input",
            "aftergemm"),
    "ft2": ("final_input", "layernorm_input", "softmax_input", "local_input"),
    "ft3": ("final_input", "layernorm_input", "local_input"),
}


def ft_enabled(mode: str) -> list[str]:
    """FT's quantizers (FT's names) that `mode` leaves on: set_quantizer_by_name disables a
    GEMM's input and weight quantizers when the keyword is found in the GEMM module's name, and
    any other quantizer when it is found in the quantizer's own name."""
    keywords = FT_DISABLED_KEYWORDS[mode]

    def off(text: str) -> bool:
        return any(re.search(k, text) for k in keywords)

    on = []
    for name in (*FT_LAYER_QUANTIZERS, *FT_ENCODER_QUANTIZERS):
        module, _, attr = name.rpartition(".")
        if attr in ("_input_quantizer", "_weight_quantizer"):
            if not off(module):
                on.append(name)
        elif not off(name):
            on.append(name)
    return on


def ft_attributes(mode: str) -> set[str]:
    """The quantizer attributes (FT's names, e.g. "_aftergemm_quantizer") a mode turns on."""
    return {name.rpartition(".")[2] for name in ft_enabled(mode)}


# where install_ft places each of FT's quantizers
_PLACED = {"_input_quantizer", "_weight_quantizer", "_aftergemm_quantizer",
           "matmul_q_input_quantizer", "matmul_k_input_quantizer", "matmul_v_input_quantizer",
           "matmul_a_input_quantizer", "softmax_input_quantizer", "add_local_input_quantizer",
           "add_residual_input_quantizer", "layernorm_input_quantizer"}


def install_ft(model: nn.Module, cfg: PTQConfig, patterns: tuple[str, ...]) -> dict[str, int]:
    """Insert the mode's quantizers (disabled, with calibrators attached); returns counts."""
    ste = cfg.ste if isinstance(cfg, QATConfig) else "clip"
    w_gran = weight_granularity(cfg)
    on = ft_attributes(cfg.quant_mode)
    unplaced = on - _PLACED
    if unplaced:
        raise ValueError(f"quant_mode {cfg.quant_mode} turns on {', '.join(sorted(unplaced))}, "
                         "which quantsweep does not place")

    def act_q(attr: str) -> TensorQuantizer | None:
        if attr not in on:
            return None
        q = TensorQuantizer(cfg.nbits, narrow=cfg.narrow_range, ste=ste)
        q.calibrator = make_calibrator(cfg.calibrator, cfg.nbits, percentile=cfg.percentile)
        return q

    def weight_q(lin: nn.Linear) -> TensorQuantizer | None:
        if "_weight_quantizer" not in on:
            return None
        shape = (lin.out_features, 1) if w_gran == "channel" else ()
        q = TensorQuantizer(cfg.nbits, granularity=w_gran, narrow=cfg.narrow_range, ste=ste,
                            amax_shape=shape)
        q.calibrator = MaxCalibrator(w_gran)
        return q

    linears = select_linears(model, patterns, required=True)
    if not any(type(m) is BertSelfAttention and matches(n, patterns)
               for n, m in model.named_modules()):
        raise ValueError(f"quant_mode {cfg.quant_mode} quantizes BERT's attention matmuls "
                         f"(FasterTransformer's modeling.py); {type(model).__name__} has no "
                         "BertSelfAttention inside quantize_modules")
    for lin in linears.values():
        QuantLinear.convert(lin, input=act_q("_input_quantizer"), weight=weight_q(lin),
                            aftergemm=act_q("_aftergemm_quantizer") if lin.bias is not None
                            else None)
    model.set_attn_implementation("eager")  # the quantized attention adds a float mask
    for name, m in list(model.named_modules()):
        if not matches(name, patterns):
            continue
        if type(m) is BertSelfAttention:
            QuantSelfAttention.convert(m, {k: act_q(k) for k in ATTENTION_QUANTIZERS})
        elif type(m) in (BertSelfOutput, BertOutput):
            convert_residual(m, act_q("add_local_input_quantizer"),
                             act_q("add_residual_input_quantizer"),
                             act_q("layernorm_input_quantizer"))
    set_weight_bits(model, cfg)
    return {"quantizers": len(quantizers(model))}


def fuse_qkv(model: nn.Module) -> int:
    """Q, K and V share one amax (the max of the three), as FT's quant_utils.fuse_qkv: the
    matmul inputs, the weights when they are per tensor, and the GEMMs' aftergemm quantizers.
    Returns how many triples were fused."""
    fused = 0
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, BertSelfAttention):
                continue
            triples = []
            if isinstance(m, QuantSelfAttention) and m.matmul_q_input_quantizer is not None:
                triples.append([m.matmul_q_input_quantizer, m.matmul_k_input_quantizer,
                                m.matmul_v_input_quantizer])
            for attr in ("weight_quantizer", "aftergemm_quantizer"):
                triple = [getattr(lin, attr, None) for lin in (m.query, m.key, m.value)]
                if all(q is not None and q.amax.dim() == 0 for q in triple):
                    triples.append(triple)
            for triple in triples:
                amax = torch.stack([q.amax for q in triple]).max()
                for q in triple:
                    q.amax.fill_(amax)
                fused += 1
    return fused


# -- Distillation for quantization ---------------------------------------------------------
def install_distill_quant(model: nn.Module, cfg: DistillQuantConfig,
                          patterns: tuple[str, ...]) -> list[TensorQuantizer]:
    out = []
    for lin in select_linears(model, patterns, required=True).values():
        w = TensorQuantizer(cfg.nbits, amax_mode="dynamic", granularity=cfg.weight_granularity,
                            groups=cfg.weight_groups, narrow=True, ste="plain")
        if cfg.act_granularity == "token":
            x = TensorQuantizer(cfg.act_nbits, amax_mode="dynamic", granularity="token",
                                narrow=True, ste="plain")
        else:
            x = TensorQuantizer(cfg.act_nbits, amax_mode="ema", narrow=True, ste="plain",
                                decay=cfg.ema_decay)
        QuantLinear.convert(lin, input=x, weight=w)
        out += [x, w]
    set_weight_bits(model, cfg)
    return out


# -- switching and calibration -------------------------------------------------------------
def enable(qs: Iterable[TensorQuantizer]) -> None:
    for q in qs:
        q.enabled = True
        q.calibrating = False


def check_calibrated(qs: Iterable[TensorQuantizer]) -> None:
    bad = [q for q in qs if q.amax_mode == "static" and not bool((q.amax > 0).any())]
    if bad:
        raise RuntimeError(f"{len(bad)} quantizers have no amax: calibration saw no data")


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[dict]) -> int:
    """Calibrate every quantizer that has a calibrator: eval mode, quantization off, N batches,
    then load amax and drop the statistics. Weights are only read. Returns batches seen."""
    qs = [q for q in quantizers(model).values() if q.calibrator is not None]
    was_training = model.training
    model.eval()
    for q in qs:
        q.enabled, q.calibrating = False, True
    device = next(model.parameters()).device
    seen = 0
    try:
        for batch in batches:
            model(**{k: v.to(device) for k, v in batch.items()
                     if k not in ("labels", "start_positions", "end_positions")})
            seen += 1
    finally:
        for q in qs:
            q.calibrating = False
        model.train(was_training)
    if not seen:
        raise RuntimeError("calibration got no batches")
    for q in qs:
        amax = q.calibrator.compute_amax().to(q.amax.device, q.amax.dtype)
        q.amax.copy_(amax.reshape(q.amax.shape))
        q.calibrator = None
    return seen


def summary(model: nn.Module) -> dict[str, float]:
    qs = quantizers(model)
    on = [q for q in qs.values() if q.enabled]
    return {"quantizers": float(len(qs)), "quantizers_enabled": float(len(on))}


# -- calibrated checkpoints ----------------------------------------------------------------
CALIBRATION_FILE = "calibration.json"
# what must agree for a checkpoint's amax to serve another job's quantizers
PLAN_KEYS = ("nbits", "quant_mode", "calibrator", "percentile", "num_calib_batch",
             "weight_granularity", "narrow_range", "nbits_per_module")


def save_calibration(model_dir: str | Path, cfg: PTQConfig) -> None:
    """Beside a saved PTQ/QAT model (its amax are buffers in the weights file): the plan that
    produced them, so that a later stage can start from the calibration instead of redoing it."""
    from quantlib.atomic import write_json

    write_json(Path(model_dir) / CALIBRATION_FILE,
               {k: getattr(cfg, k) for k in PLAN_KEYS})


def load_calibration(model: nn.Module, model_dir: str, cfg: PTQConfig) -> str:
    """Give the installed quantizers the amax of a calibrated checkpoint made with the same
    plan; returns what happened ("loaded ...", or why not)."""
    root = Path(model_dir)
    record_path = root / CALIBRATION_FILE
    if not record_path.is_file():
        return "calibrated here (the checkpoint carries no calibration)"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    differ = [k for k in PLAN_KEYS if record.get(k) != getattr(cfg, k)]
    if differ:
        return f"calibrated here (the checkpoint's calibration differs in {', '.join(differ)})"
    from safetensors.torch import load_file

    saved: dict[str, torch.Tensor] = {}
    for f in sorted(root.glob("*.safetensors")):
        saved.update({k: v for k, v in load_file(str(f)).items() if k.endswith(".amax")})
    qs = quantizers(model)
    names = {f"{n}.amax" for n in qs}
    missing = sorted(names - set(saved))
    if missing:  # e.g. made before quantsweep placed FT's aftergemm quantizers
        return (f"calibrated here (the checkpoint's calibration lacks {len(missing)} of this "
                f"plan's quantizers, e.g. {missing[0]})")
    with torch.no_grad():
        for n, q in qs.items():
            q.amax.copy_(saved[f"{n}.amax"].reshape(q.amax.shape))
            q.calibrator = None
    return f"loaded from {model_dir} ({len(qs)} quantizers)"
