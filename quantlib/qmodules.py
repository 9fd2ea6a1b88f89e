"""Quantized BERT building blocks. Modules are converted in place (their class is swapped for a
subclass and quantizers are attached), so parameters, their names and the optimizer's view of
them stay exactly as they were; checkpoints gain only the quantizers' buffers.

- QuantLinear: input / weight / optional output quantizers, and FasterTransformer's
  `aftergemm` quantizer on the GEMM's output before the bias is added (for the FFN's first
  dense, the GELU input); an integer inference path (Q8BERT) that computes the GEMM on the
  integers with the bias quantized to 32 bit at scale s_w * s_x.
- QuantEmbedding: weight quantizer.
- QuantSelfAttention: quantizers on the two attention matmuls' inputs (Q, K, V, probabilities)
  and on the softmax input (the raw QK^T, before the 1/sqrt(d) scale and the mask, where FT's
  modeling.py places it).
- QuantResidualOutput (BertSelfOutput / BertOutput): quantizers on both inputs of the residual
  add (the GEMM's output, "local", and the residual) and on the LayerNorm's input (their sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertOutput, BertSelfAttention, BertSelfOutput

from quantlib.fake_quant import TensorQuantizer, quantize_int

QuantizerSpec = TensorQuantizer | None


class QuantLinear(nn.Linear):
    input_quantizer: QuantizerSpec
    weight_quantizer: QuantizerSpec
    output_quantizer: QuantizerSpec
    aftergemm_quantizer: QuantizerSpec
    integer_inference: bool

    @classmethod
    def convert(cls, module: nn.Linear, *, input: QuantizerSpec = None,
                weight: QuantizerSpec = None, output: QuantizerSpec = None,
                aftergemm: QuantizerSpec = None,
                integer_inference: bool = False) -> QuantLinear:
        if type(module) is not nn.Linear and not isinstance(module, QuantLinear):
            raise TypeError(f"cannot quantize {type(module).__name__}")
        if aftergemm is not None and module.bias is None:
            raise ValueError("an aftergemm quantizer sits between the GEMM and its bias "
                             "(FT's LinearActivation has one only with a bias)")
        module.__class__ = cls
        for name, q in (("input_quantizer", input), ("weight_quantizer", weight),
                        ("output_quantizer", output), ("aftergemm_quantizer", aftergemm)):
            if q is not None:
                q.to(module.weight.device)
            setattr(module, name, q)
        module.integer_inference = integer_inference
        return module  # type: ignore[return-value]

    def _integer_ready(self) -> bool:
        iq, wq = self.input_quantizer, self.weight_quantizer
        return bool(self.integer_inference and not self.training and iq is not None
                    and wq is not None and iq.enabled and wq.enabled
                    and self.aftergemm_quantizer is None
                    and iq.amax_mode != "dynamic")

    def integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Integer GEMM simulated exactly in float64: q_x @ q_w^T + q_b, q_b = round(b*s_w*s_x)
        clamped to int32, then dequantized by 1/(s_w*s_x)."""
        iq, wq = self.input_quantizer, self.weight_quantizer
        s_x = iq.scale().double()
        s_w = wq.scale(self.weight).double()
        q_x = quantize_int(x.double(), s_x, iq.nbits, iq.narrow)
        q_w = quantize_int(self.weight.double(), s_w, wq.nbits, wq.narrow)
        s_out = (s_x * s_w).reshape(-1)  # per output channel or scalar
        acc = q_x @ q_w.t()
        if self.bias is not None:
            q_b = torch.clamp(torch.round(self.bias.double() * s_out), -2 ** 31, 2 ** 31 - 1)
            acc = acc + q_b
        out = torch.where(s_out > 0, acc / s_out.clamp_min(1e-300), torch.zeros_like(acc))
        out = out.to(x.dtype)
        if self.output_quantizer is not None:
            out = self.output_quantizer(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._integer_ready():
            return self.integer_forward(x)
        w = self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if self.aftergemm_quantizer is not None:  # FT: bias_act(bias, aftergemm(x @ W^T))
            out = self.aftergemm_quantizer(F.linear(x, w)) + self.bias
        else:
            out = F.linear(x, w, self.bias)
        if self.output_quantizer is not None:
            out = self.output_quantizer(out)
        return out


class QuantEmbedding(nn.Embedding):
    weight_quantizer: TensorQuantizer

    @classmethod
    def convert(cls, module: nn.Embedding, weight: TensorQuantizer) -> QuantEmbedding:
        module.__class__ = cls
        module.weight_quantizer = weight.to(module.weight.device)
        return module  # type: ignore[return-value]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_quantizer(self.weight), self.padding_idx,
                           self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)


ATTENTION_QUANTIZERS = ("matmul_q_input_quantizer", "matmul_k_input_quantizer",
                        "matmul_v_input_quantizer", "matmul_a_input_quantizer",
                        "softmax_input_quantizer")


def _maybe(q: QuantizerSpec, x: torch.Tensor) -> torch.Tensor:
    return q(x) if q is not None else x


class QuantSelfAttention(BertSelfAttention):
    """Eager attention with quantizers; the model must use attn_implementation "eager" (an
    additive float mask)."""

    @classmethod
    def convert(cls, module: BertSelfAttention, quantizers: dict[str, QuantizerSpec]):
        if type(module) is not BertSelfAttention:
            raise TypeError(f"cannot quantize {type(module).__name__}")
        if module.is_decoder:  # encoders only: no key/value cache to carry
            raise ValueError("quantized attention is for BERT encoders, not decoders")
        module.__class__ = cls
        device = module.query.weight.device
        for name in ATTENTION_QUANTIZERS:
            q = quantizers.get(name)
            setattr(module, name, q.to(device) if q is not None else None)
        return module

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        q = self.query(hidden_states).view(shape).transpose(1, 2)
        k = self.key(hidden_states).view(shape).transpose(1, 2)
        v = self.value(hidden_states).view(shape).transpose(1, 2)
        q = _maybe(self.matmul_q_input_quantizer, q)
        k = _maybe(self.matmul_k_input_quantizer, k)
        v = _maybe(self.matmul_v_input_quantizer, v)
        scores = torch.matmul(q, k.transpose(2, 3))  # FT: quantized raw, then scaled
        scores = _maybe(self.softmax_input_quantizer, scores) * self.scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = F.softmax(scores, dim=-1)
        probs = F.dropout(probs, p=self.dropout.p, training=self.training)
        context = torch.matmul(_maybe(self.matmul_a_input_quantizer, probs), v)
        context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1).contiguous()
        return context, probs


class QuantResidualOutput(nn.Module):
    """Mixin forward for BertSelfOutput / BertOutput: LayerNorm(local + residual), both
    quantized."""

    add_local_input_quantizer: QuantizerSpec
    add_residual_input_quantizer: QuantizerSpec
    layernorm_input_quantizer: QuantizerSpec

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))
        h = _maybe(self.add_local_input_quantizer, h)
        r = _maybe(self.add_residual_input_quantizer, input_tensor)
        return self.LayerNorm(_maybe(self.layernorm_input_quantizer, h + r))


class QuantBertSelfOutput(QuantResidualOutput, BertSelfOutput):
    pass


class QuantBertOutput(QuantResidualOutput, BertOutput):
    pass


def convert_residual(module: nn.Module, local: QuantizerSpec, residual: QuantizerSpec,
                     layernorm: QuantizerSpec = None):
    if type(module) is BertSelfOutput:
        module.__class__ = QuantBertSelfOutput
    elif type(module) is BertOutput:
        module.__class__ = QuantBertOutput
    else:
        raise TypeError(f"cannot quantize {type(module).__name__}")
    device = module.dense.weight.device
    module.add_local_input_quantizer = local.to(device) if local is not None else None
    module.add_residual_input_quantizer = residual.to(device) if residual is not None else None
    module.layernorm_input_quantizer = layernorm.to(device) if layernorm is not None else None
    return module


def quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, TensorQuantizer)}
