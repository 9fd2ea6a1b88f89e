"""Trainer arguments and the method registry: one config dataclass per method.

Torch-free on purpose: `sweep launch` validates specs against these schemas without importing the
trainer. The function that applies a config lives in `quantlib.recipes`, registered by config
type (torchao's `quantize_(model, config)` pattern). Adding a method = a config class registered
here with `register_method` + a recipe registered in `quantlib.recipes`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from quantlib import bitwidths
from quantlib.tasks import TASKS


class ConfigError(ValueError):
    """A value that a job cannot run with; `key` names the offending trainer argument."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def param(default: Any = None, kind: str = "str", help: str = "", *, choices: tuple = (),
          lo: float | None = None, hi: float | None = None, required: bool = False) -> Any:
    """A dataclass field that carries its validation rule (kind, choices, bounds)."""
    meta = {"kind": kind, "help": help, "choices": choices, "lo": lo, "hi": hi,
            "required": required}
    if isinstance(default, (list, tuple)):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata=meta)
    return field(default=default, metadata=meta)


def per_module_bits(lo: int, hi: int) -> Any:
    """The `nbits_per_module` field of a method with a bit width (quantlib.bitwidths)."""
    return param(None, "optional_bits_map", "bit widths per module pattern, e.g. "
                 "{'*layer.11.*': 2}: the most specific matching pattern wins, the rest nbits "
                 "(quantlib/bitwidths.py)", lo=lo, hi=hi)


@dataclass(frozen=True)
class TrainArgs:
    """Arguments every job takes, whatever its method."""

    task: str = param(None, "str", "GLUE task or squad", choices=tuple(TASKS), required=True)
    method: str = param(None, "str", "compression method", required=True)
    model_name_or_path: str = param("bert-base-uncased", "str", "hub id or local directory")
    tokenizer_name: str | None = param(None, "optional_str", "defaults to the model's")
    dataset_name: str | None = param(None, "optional_str", "hub dataset (used when data_dir is "
                                     "unset); default: the task's (nyu-mll/glue, rajpurkar/squad)")
    data_dir: str | None = param(None, "optional_str",
                                 "local task directory: download_glue_data.py TSV layout, or "
                                 "SQuAD's train-v1.1.json and dev-v1.1.json")
    max_seq_length: int | None = param(None, "optional_int", "tokens per example; default: the "
                                       "task's (GLUE 128, SQuAD 384)", lo=8, hi=4096)
    doc_stride: int = param(128, "int", "SQuAD: tokens shared by consecutive windows of a long "
                            "context", lo=0)
    max_query_length: int = param(64, "int", "SQuAD: question tokens kept", lo=1)
    n_best_size: int = param(20, "int", "SQuAD: start/end candidates per window", lo=1)
    max_answer_length: int = param(30, "int", "SQuAD: longest answer in tokens", lo=1)
    batch_size: int = param(32, "int", "training batch size per device", lo=1)
    eval_batch_size: int = param(64, "int", "evaluation batch size per device", lo=1)
    learning_rate: float = param(2e-5, "float", "AdamW peak learning rate", lo=0.0)
    weight_decay: float = param(0.01, "float", "AdamW weight decay", lo=0.0)
    warmup_ratio: float = param(0.1, "float", "warmup share of each stage", lo=0.0, hi=1.0)
    max_grad_norm: float = param(1.0, "float", "gradient clipping (0 = off)", lo=0.0)
    seed: int = param(42, "int", "random seed (numpy's range: 0 to 2**32 - 1)", lo=0,
                      hi=2**32 - 1)
    finetune: str = param("auto", "str",
                          "FP32 fine-tuning before compression: auto = only when the checkpoint "
                          "is not fine-tuned on the task", choices=("auto", "always", "never"))
    finetune_epochs: float = param(3.0, "float", "epochs of FP32 fine-tuning", lo=0.0)
    max_train_samples: int | None = param(None, "optional_int", "truncate the train set", lo=1)
    max_eval_samples: int | None = param(None, "optional_int", "truncate the eval sets", lo=1)
    quantize_modules: tuple[str, ...] = param(
        ("*encoder.layer.*", "*transformer.layer.*"), "strs",
        "fnmatch patterns of module names whose nn.Linear weights are quantized (or pruned): "
        "BERT's and DistilBERT's encoder layers")
    save_model: bool = param(False, "bool", "save the final model into the output dir")
    finetune_checkpoint: bool = param(False, "bool", "keep the FP32 fine-tuning's last Trainer "
                                      "checkpoint (model, optimizer, scheduler, RNG) in "
                                      "<output_dir>/finetuned/ for the jobs that continue "
                                      "from it (a sweep's shared fine-tuning job sets it)")
    fp16: bool = param(False, "bool", "mixed precision (CUDA)")
    bf16: bool = param(False, "bool", "bfloat16 mixed precision")
    logging_steps: int = param(50, "int", "log the training loss every N steps", lo=1)
    report_to: str = param("none", "str", "training curves through the HF Trainer: "
                           "tensorboard (the job's tensorboard/), wandb (offline without "
                           "network), mlflow (the job's mlruns/), none",
                           choices=("none", "tensorboard", "wandb", "mlflow"))
    export: str = param("none", "str", "onnx: write the 8-bit model as ONNX (int8 QDQ); INQ "
                        "and gptq: their packed codes (model_packed.safetensors) and, where "
                        "onnxruntime has a kernel, MatMulNBits; evaluate it with onnxruntime "
                        "and time it against the FP32 export",
                        choices=("none", "onnx"))


# What an FP32 fine-tuning depends on (and how its model is evaluated): jobs equal in these
# that fine-tune first can take the fine-tuning from one shared job (jobs.grid.share_finetune).
# Every other trainer argument acts after the fine-tuning (AFTER_FINETUNE_KEYS); the two lists
# cover TrainArgs (checked below), so a new argument has to be placed in one of them.
FINETUNE_KEYS = ("task", "model_name_or_path", "tokenizer_name", "dataset_name", "data_dir",
                 "max_seq_length", "doc_stride", "max_query_length", "n_best_size",
                 "max_answer_length", "batch_size", "eval_batch_size", "learning_rate",
                 "weight_decay", "warmup_ratio", "max_grad_norm", "seed", "finetune",
                 "finetune_epochs", "max_train_samples", "max_eval_samples", "fp16", "bf16",
                 "logging_steps", "report_to")
AFTER_FINETUNE_KEYS = ("method", "quantize_modules", "save_model", "finetune_checkpoint",
                       "export")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config."""

    tasks = ()  # the tasks the method runs on; () = every task
    # True: the method's training starts with the plain FP32 fine-tuning stage of the same
    # Trainer run (quantlib.recipes.finetune_stage first, nothing of the method active in it,
    # the model's parameters as loaded), so a job can resume from a shared fine-tuning's
    # checkpoint at the stage's end and compute what it computes alone
    shares_finetune = False


@dataclass(frozen=True)
class FP32Config(MethodConfig):
    """No compression: the (fine-tuned) FP32 baseline."""

    shares_finetune = True


@dataclass(frozen=True)
class INQConfig(MethodConfig):
    """Incremental Network Quantization (Zhou et al. 2017); subclasses fix the level set."""

    nbits: int = param(None, "int", "bits per weight", lo=1, hi=8, required=True)
    nbits_per_module: dict[str, int] | None = per_module_bits(1, 8)
    inq_steps: tuple[float, ...] = param((0.5, 0.75, 0.875, 1.0), "fractions",
                                         "accumulated frozen fractions, ending at 1.0")
    inq_strategy: str = param("magnitude", "str", "which weights freeze first",
                              choices=("magnitude", "random"))
    epochs_per_stage: float = param(1.0, "float", "retraining epochs after each partition",
                                    lo=0.0)

    mode = "inq"
    shares_finetune = True


@dataclass(frozen=True)
class LinearINQConfig(INQConfig):
    granularity: str = param("tensor", "str", "one scale per tensor or per output row",
                             choices=("tensor", "row"))
    inq_scale: str = param("max", "str", "the step: max (max|W| / (2^(b-1)-1), the paper) or "
                           "mse (least squared error, per tensor or row)", choices=("max", "mse"))
    mode = "lin"


@dataclass(frozen=True)
class Pow2INQConfig(INQConfig):
    granularity: str = param("tensor", "str", "one level set per tensor or per output row",
                             choices=("tensor", "row"))
    inq_scale: str = param("max", "str", "the top exponent n1: max (floor(log2(4 max|W|/3)), "
                           "the paper) or mse (least squared error, per tensor or row)",
                           choices=("max", "mse"))
    mode = "p2"


@dataclass(frozen=True)
class MultiBitINQConfig(INQConfig):
    amq_cycles: int = param(2, "int", "alternating refit cycles", lo=0, hi=100)
    mode = "mb"


@dataclass(frozen=True)
class Q8BertConfig(MethodConfig):
    """Q8BERT-style QAT (Zafrir et al. 2019): symmetric per-tensor fake quantization of the
    embeddings, every encoder Linear (weights: max|W| each step; inputs: EMA of max|x|), the
    pooler and the task head."""

    nbits: int = param(8, "int", "bits per weight and activation", lo=2, hi=8)
    nbits_per_module: dict[str, int] | None = per_module_bits(2, 8)
    qat_epochs: float = param(3.0, "float", "epochs of quantization-aware training", lo=0.01)
    ema_decay: float = param(0.9999, "float", "EMA decay of the activation thresholds",
                             lo=0.0, hi=1.0)
    ste: str = param("plain", "str", "straight-through gradient: plain (Q8BERT) or clip "
                     "(zero where |x| > amax)", choices=("plain", "clip"))
    head_start_step: int = param(200, "int", "QAT step at which the task head starts "
                                 "quantizing", lo=0)
    quantize_embeddings: bool = param(True, "bool", "word / position / token-type embeddings")
    quantize_head: bool = param(True, "bool", "pooler and task head")
    quantize_outputs: bool = param(False, "bool", "also quantize Linear outputs (EMA)")
    integer_inference: bool = param(True, "bool", "evaluate through the integer GEMM path "
                                    "(int32 bias at scale s_w*s_x)")

    shares_finetune = True  # its quantizers are buffers, off (EMA idle) until the QAT stage


@dataclass(frozen=True)
class PTQConfig(MethodConfig):
    """Post-training quantization with calibration, FasterTransformer quant modes
    (NVIDIA pytorch-quantization)."""

    nbits: int = param(8, "int", "bits per tensor (the FT modes are 8-bit)", lo=2, hi=8)
    nbits_per_module: dict[str, int] | None = per_module_bits(2, 8)
    quant_mode: str = param("ft2", "str", "which tensors are quantized (FasterTransformer's "
                            "quant_utils.set_args; quantlib/quantize_model.py)",
                            choices=("ft1", "ft2", "ft3"))
    calibrator: str = param("percentile", "str", "how activation amax is calibrated",
                            choices=("max", "percentile", "mse", "entropy"))
    percentile: float = param(99.99, "float", "for the percentile calibrator", lo=0.0, hi=100.0)
    num_calib_batch: int = param(4, "int", "training batches seen by calibration", lo=1)
    weight_granularity: str = param("auto", "str", "weight amax per output channel or per "
                                    "tensor; auto: channel for ft1, tensor for ft2/ft3",
                                    choices=("auto", "channel", "tensor"))
    narrow_range: bool = param(False, "bool", "integer range -(2^(b-1)-1).. instead of "
                               "-2^(b-1)..")

    shares_finetune = True  # it quantizes after the fine-tuning


@dataclass(frozen=True)
class GPTQConfig(MethodConfig):
    """GPTQ (Frantar et al. 2023): weight-only PTQ of the selected Linears, layer by layer,
    each column's rounding error spread over the columns not yet quantized through the inverse
    Hessian of the layer's inputs (quantlib/gptq.py; the authors' gptq.py fasterquant)."""

    nbits: int = param(4, "int", "bits per weight", lo=2, hi=8)
    nbits_per_module: dict[str, int] | None = per_module_bits(2, 8)
    group_size: int = param(0, "int", "columns sharing a scale and zero point (the reference's "
                            "groupsize); 0: one per output channel", lo=0)
    act_order: bool = param(False, "bool", "quantize columns in decreasing order of the "
                            "Hessian's diagonal (the reference's --act-order)")
    damp: float = param(0.01, "float", "dampening: this fraction of the Hessian's mean "
                        "diagonal is added to it (the reference's percdamp)", lo=0.0, hi=1.0)
    block_size: int = param(128, "int", "columns updated together (lazy batch)", lo=1)
    sym: bool = param(False, "bool", "symmetric grid (zero point in the middle); the "
                      "reference's default is asymmetric min-max")
    num_calib_batch: int = param(8, "int", "training batches the Hessians are computed from",
                                 lo=1)

    shares_finetune = True


@dataclass(frozen=True)
class QATConfig(PTQConfig):
    """QAT from the calibrated model, weight amax frozen."""

    qat_epochs: float = param(1.0, "float", "epochs of quantization-aware training", lo=0.01)
    ste: str = param("clip", "str", "straight-through gradient: clip (pytorch-quantization) "
                     "or plain", choices=("plain", "clip"))

    # its quantized modules are installed before training and run eager attention through
    # QuantSelfAttention in the FP32 stage too: not the shared fine-tuning's kernels
    shares_finetune = False


@dataclass(frozen=True)
class QATKDConfig(QATConfig):
    """QAT with distillation from the FP teacher: CE + kd_scale * KL(T) (FasterTransformer)."""

    kd_scale: float = param(10000.0, "float", "weight of the KL term", lo=0.0)
    kd_temperature: float = param(3.0, "float", "softmax temperature T", lo=0.01)
    kd_reduction: str = param("mean", "str", "KL reduction: mean over all elements (FT) or "
                              "batchmean", choices=("mean", "batchmean"))
    kd_t_squared: bool = param(False, "bool", "multiply the KL term by T^2")
    kd_heads: str = param("sum", "str", "SQuAD's start and end KL terms: summed, as "
                          "FasterTransformer's run_squad.py, or averaged",
                          choices=("sum", "mean"))
    teacher_name_or_path: str | None = param(
        None, "optional_str", "teacher checkpoint; default: the job's own FP model")


@dataclass(frozen=True)
class DistillQuantConfig(MethodConfig):
    """Distillation for quantization (Intel Neural Compressor / ZeroQuant): student and teacher
    from the same fine-tuned checkpoint; MSE over every layer's output and attention
    probabilities plus the logits term."""

    nbits: int = param(8, "int", "bits per weight", lo=2, hi=8)
    nbits_per_module: dict[str, int] | None = per_module_bits(2, 8)
    act_nbits: int = param(8, "int", "bits per activation (Linear inputs)", lo=2, hi=8)
    qat_epochs: float = param(3.0, "float", "epochs of distillation-aware QAT", lo=0.01)
    weight_granularity: str = param("tensor", "str", "weight amax per tensor, output channel "
                                    "or group of output rows (ZeroQuant)",
                                    choices=("tensor", "channel", "group"))
    weight_groups: int = param(48, "int", "groups for group-wise weight quantization", lo=1)
    act_granularity: str = param("tensor", "str", "activation amax: per tensor (EMA, static at "
                                 "eval) or per token (dynamic, ZeroQuant)",
                                 choices=("tensor", "token"))
    ema_decay: float = param(0.9999, "float", "EMA decay of per-tensor activation amax",
                             lo=0.0, hi=1.0)
    layer_weight: float = param(1.0, "float", "weight of the layer-output MSE terms", lo=0.0)
    attention_weight: float = param(1.0, "float", "weight of the attention-probability MSE "
                                    "terms", lo=0.0)
    logits_weight: float = param(1.0, "float", "weight of the logits term", lo=0.0)
    logits_loss: str = param("mse", "str", "logits term: mse or kl (at kd_temperature)",
                             choices=("mse", "kl"))
    kd_temperature: float = param(1.0, "float", "temperature of the kl logits term", lo=0.01)
    ce_weight: float = param(0.0, "float", "weight of the task loss on the labels", lo=0.0)

    tasks = tuple(t for t in TASKS if not TASKS[t].is_qa)  # its logits term: classification
    # its FP32 stage runs with eager attention (the probabilities for the loss): not the
    # shared fine-tuning's kernels, so not bit-equal to it
    shares_finetune = False


@dataclass(frozen=True)
class SparseConfig(QATConfig):
    """Pruning, then fine-tuning with the sparsity pattern locked; with `qat`, then QAT (FT
    quant modes, calibrated after pruning) with the pattern still locked, in the same job."""

    nbits: int = param(8, "int", "bits per tensor in the QAT stage", lo=2, hi=8)
    sparse_epochs: float = param(1.0, "float", "epochs of fine-tuning with the mask fixed",
                                 lo=0.0)
    qat: bool = param(False, "bool", "add a QAT stage (qat_epochs) after the sparse one")

    shares_finetune = True  # without qat (see finetune_shareable)


@dataclass(frozen=True)
class Sparse24Config(SparseConfig):
    """2:4 structured sparsity (NVIDIA ASP m4n2_1d) of the selected Linear weights whose shape
    fits tensor cores (rows % 8, columns % 16); the others stay dense."""


@dataclass(frozen=True)
class MagnitudeConfig(SparseConfig):
    """Unstructured one-shot magnitude pruning of the selected Linear weights to a target
    sparsity."""

    target_sparsity: float = param(0.5, "float", "fraction of weights set to zero", lo=0.0,
                                   hi=0.99)
    prune_scope: str = param("layer", "str", "smallest |w| per tensor or over all of them",
                             choices=("layer", "global"))


@dataclass(frozen=True)
class PruneOFAConfig(MethodConfig):
    """Prune Once For All (Zafrir et al. 2021): fine-tune a pre-sparsified checkpoint with its
    pattern locked (mask = W != 0 at the start) and distillation from a fine-tuned teacher;
    stage 2 (`qat: true`, from stage 1's best checkpoint) adds Q8BERT-style QAT."""

    teacher_name_or_path: str = param(None, "str", "fine-tuned teacher checkpoint",
                                      required=True)
    epochs: float = param(9.0, "float", "training epochs (the reference: 9, stage 2: 3)",
                          lo=0.01)
    ce_weight: float = param(0.0, "float", "w0: weight of CE on the labels", lo=0.0)
    kd_weight: float = param(1.0, "float", "w1: weight of T^2 * KL(teacher || student)", lo=0.0)
    kd_temperature: float = param(2.0, "float", "distillation temperature T", lo=0.01)
    keep_best: bool = param(True, "bool", "evaluate after every epoch and keep the best one")
    qat: bool = param(False, "bool", "stage 2: quantization-aware training as well")
    nbits: int = param(8, "int", "QAT: bits per weight and activation", lo=2, hi=8)
    nbits_per_module: dict[str, int] | None = per_module_bits(2, 8)
    ema_decay: float = param(0.9999, "float", "QAT: EMA decay of activation thresholds",
                             lo=0.0, hi=1.0)
    ste: str = param("plain", "str", "QAT: straight-through gradient", choices=("plain", "clip"))
    head_start_step: int = param(0, "int", "QAT: step at which the head starts quantizing",
                                 lo=0)
    quantize_embeddings: bool = param(True, "bool", "QAT: embeddings too")
    quantize_head: bool = param(True, "bool", "QAT: pooler and task head too")
    quantize_outputs: bool = param(False, "bool", "QAT: Linear outputs too")
    integer_inference: bool = param(True, "bool", "QAT: evaluate through the integer GEMM "
                                    "path (as q8bert)")


@dataclass(frozen=True)
class DistilSquadConfig(MethodConfig):
    """DistilBERT distillation on SQuAD (transformers research_projects/distillation):
    alpha_ce * T^2 * (KL_start + KL_end) / 2 (batchmean) + alpha_squad * the student's QA loss."""

    teacher_name_or_path: str = param(None, "str", "BERT fine-tuned on SQuAD", required=True)
    distil_epochs: float = param(3.0, "float", "epochs of distillation", lo=0.01)
    alpha_ce: float = param(0.5, "float", "weight of the distillation term", lo=0.0)
    alpha_squad: float = param(0.5, "float", "weight of the student's own QA loss", lo=0.0)
    kd_temperature: float = param(2.0, "float", "distillation temperature T", lo=0.01)

    tasks = ("squad",)


@dataclass(frozen=True)
class MethodEntry:
    name: str
    display: str  # block title in the measurements sheet
    config: type[MethodConfig]


METHODS: dict[str, MethodEntry] = {}


def register_method(name: str, display: str, config: type[MethodConfig]) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    METHODS[name] = MethodEntry(name, display, config)


# Seed names and display names; the measurements sheet lists blocks in this order.
register_method("p2", "Power of 2", Pow2INQConfig)
register_method("lin", "Linear", LinearINQConfig)
register_method("mb", "mbq", MultiBitINQConfig)
register_method("fp32", "FP32", FP32Config)
register_method("q8bert", "Q8BERT", Q8BertConfig)
register_method("ptq", "PTQ", PTQConfig)
register_method("qat", "QAT", QATConfig)
register_method("qat-kd", "QAT+KD", QATKDConfig)
register_method("distill-quant", "Distill-Quant", DistillQuantConfig)
register_method("sparse24", "2:4 sparse", Sparse24Config)
register_method("magnitude", "Magnitude pruning", MagnitudeConfig)
register_method("pruneofa", "Prune OFA", PruneOFAConfig)
register_method("distil-squad", "DistilBERT", DistilSquadConfig)
register_method("gptq", "GPTQ", GPTQConfig)


@functools.cache
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    """A config class's fields by name (cached: a 10,000-job spec asks a million times)."""
    return {f.name: f for f in dataclasses.fields(cls)}


TRAIN_FIELDS = _fields(TrainArgs)
if set(FINETUNE_KEYS) | set(AFTER_FINETUNE_KEYS) != set(TRAIN_FIELDS) or (
        set(FINETUNE_KEYS) & set(AFTER_FINETUNE_KEYS)):
    raise AssertionError("FINETUNE_KEYS and AFTER_FINETUNE_KEYS must split TrainArgs")


def method_fields(method: str) -> dict[str, dataclasses.Field]:
    return _fields(METHODS[method].config)


def all_keys() -> frozenset[str]:
    """Every trainer argument any method accepts."""
    return _all_keys(len(METHODS))


@functools.cache
def _all_keys(n_methods: int) -> frozenset[str]:  # keyed by the registry's size
    keys = set(TRAIN_FIELDS)
    for entry in METHODS.values():
        keys |= set(_fields(entry.config))
    return frozenset(keys)


@functools.cache
def defaults(method: str) -> dict[str, Any]:
    """Every argument a method's job takes, with its default (None for required ones)."""
    out: dict[str, Any] = {}
    for key, f in {**TRAIN_FIELDS, **method_fields(method)}.items():
        if f.default is not dataclasses.MISSING:
            out[key] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[key] = f.default_factory()
    return out


def identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """What makes a job the job it is: its resolved arguments less those equal to their
    defaults. Writing `seed: 42` (the default) or leaving it out is the same job, and a new
    argument added to a method with a default changes no existing job."""
    base = defaults(resolved["method"])
    return {k: v for k, v in resolved.items()
            if k not in base or type(base[k]) is not type(v) or base[k] != v}


def identity_key(resolved: dict[str, Any]) -> str:
    """The job's identity as one canonical text: the same for the same job however its spec
    wrote it. The one test of "the same job": job ids hash it (jobs.grid.job_id), a relaunch
    adopts a recorded job by it (jobs.ledger), collect counts a copied job once by it."""
    return _identity_text(identity(resolved))


_identity_text = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=list).encode


def suggest(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(key: str, value: Any, f: dataclasses.Field) -> Any:
    """Validate and normalise one value against its field; raises ConfigError."""
    meta = f.metadata
    kind = meta["kind"]
    if kind.startswith("optional_"):
        if value is None:
            return None
        kind = kind[len("optional_"):]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"{value!r} is not an integer")
    elif kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads 2e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"{value!r} is not a number")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(key, f"{value!r} is not a finite number")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(key, f"{value!r} is not true or false")
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"{value!r} is not a non-empty string")
    elif kind == "strs":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"{value!r} is not a list of strings")
        value = tuple(value)
    elif kind == "bits_map":
        try:
            value = bitwidths.check(value, meta["lo"], meta["hi"])
        except ValueError as e:
            raise ConfigError(key, str(e)) from None
        return value
    elif kind == "fractions":
        if not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(key, f"{value!r} is not a list of fractions")
        value = tuple(float(v) for v in value)
        if not all(math.isfinite(v) for v in value):
            raise ConfigError(key, f"{list(value)} holds a number that is not finite")
        if any(b <= a for a, b in zip(value, value[1:])) or value[0] <= 0 or value[-1] != 1.0:
            raise ConfigError(key, f"{list(value)} must increase strictly within (0, 1] "
                                   "and end at 1.0")
    choices = meta["choices"]
    if choices and value not in choices:
        raise ConfigError(key, f"{value!r} is not allowed{suggest(value, choices)}; "
                               f"allowed: {', '.join(map(str, choices))}")
    lo, hi = meta["lo"], meta["hi"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise ConfigError(key, f"{value} is outside {lo}..{hi}")
        if lo is not None and value < lo:
            raise ConfigError(key, f"{value} is below the minimum {lo}")
    return value


_ATOMS = (int, float, str, bool, type(None))  # values check_value's result may be cached for
_CHECKED: dict[tuple[dataclasses.Field, type, Any], Any] = {}  # (field, type, value) -> checked


@functools.cache
def _job_fields(method: str) -> dict[str, dataclasses.Field]:
    return {**TRAIN_FIELDS, **method_fields(method)}


def resolve(values: dict[str, Any]) -> dict[str, Any]:
    """Validate a job's explicit arguments; return only those its method uses, normalised.

    Arguments that the job's method does not use (e.g. nbits for fp32) are dropped, so they do
    not enter the job's identity. Raises ConfigError naming the key.
    """
    known = all_keys()
    for key in values:
        if key not in known:
            raise ConfigError(key, f"unknown trainer argument{suggest(key, sorted(known))}")
    method = values.get("method")
    if method is None:
        raise ConfigError("method", "missing; give it in base, grid, zip or include")
    if method not in METHODS:
        raise ConfigError("method", f"unknown method {method!r}{suggest(method, METHODS)}; "
                                    f"allowed: {', '.join(METHODS)}")
    out: dict[str, Any] = {}
    checked = _CHECKED
    for key, f in _job_fields(method).items():
        if key in values:
            value = values[key]
            if type(value) in _ATOMS:  # a 10,000-job grid checks the same values again and again
                seen = (f, type(value), value)
                if seen not in checked:
                    checked[seen] = check_value(key, value, f)
                out[key] = checked[seen]
            else:
                out[key] = check_value(key, value, f)
        elif f.metadata["required"]:
            raise ConfigError(key, f"missing; method {method!r} needs it")
    task = out["task"]
    if task not in TASKS:  # check_value caught it already; keeps type checkers honest
        raise ConfigError("task", f"unknown task {task!r}")
    allowed = METHODS[method].config.tasks
    if allowed and task not in allowed:
        raise ConfigError("task", f"{task!r}: method {method!r} runs on {', '.join(allowed)} "
                                  "only")
    if out.get("export", "none") == "onnx":
        _check_export(method, out)
    return out


ONNX_METHODS = ("q8bert", "ptq", "qat", "qat-kd")
ONNX_WITH_QAT = ("sparse24", "magnitude", "pruneofa")
LOW_BIT_EXPORT = (INQConfig, GPTQConfig)  # weights on an integer grid: packed, MatMulNBits


def _check_export(method: str, out: dict[str, Any]) -> None:
    if issubclass(METHODS[method].config, LOW_BIT_EXPORT):  # quantlib.export_nbits
        return
    fields = method_fields(method)
    nbits = out.get("nbits", fields["nbits"].default if "nbits" in fields else None)
    qat = out.get("qat", fields["qat"].default if "qat" in fields else False)
    if not (method in ONNX_METHODS or (method in ONNX_WITH_QAT and qat)):
        raise ConfigError("export", f"onnx: method {method!r} has no 8-bit QDQ form; allowed: "
                          f"{', '.join(ONNX_METHODS)}, {', '.join(ONNX_WITH_QAT)} with "
                          "qat: true, and the low-bit methods (packed codes, MatMulNBits): "
                          f"{', '.join(low_bit_methods())}")
    if nbits != 8:
        raise ConfigError("export", f"onnx: the export is 8-bit (int8 QDQ); nbits is {nbits}")
    mixed = {p: b for p, b in (out.get("nbits_per_module") or {}).items() if b != 8}
    if mixed:
        raise ConfigError("export", f"onnx: the export is 8-bit (int8 QDQ); nbits_per_module "
                          f"gives {', '.join(f'{p}: {b}' for p, b in mixed.items())}")


def low_bit_methods() -> list[str]:
    """Methods whose export is their packed integer codes (quantlib.export_nbits)."""
    return [m for m, e in METHODS.items() if issubclass(e.config, LOW_BIT_EXPORT)]


def finetune_shareable(resolved: dict[str, Any]) -> bool:
    """Can this job take its FP32 fine-tuning from a shared job (MethodConfig.shares_finetune;
    a sparse method with `qat` installs QAT's modules before training, as QAT does)?"""
    cls = METHODS[resolved["method"]].config
    if issubclass(cls, SparseConfig) and resolved.get("qat", False):
        return False
    return bool(cls.shares_finetune)


def ignored_keys(values: dict[str, Any]) -> list[str]:
    """Arguments present in `values` that the job's method does not use."""
    method = values.get("method")
    if method not in METHODS:
        return []
    used = set(TRAIN_FIELDS) | set(method_fields(method))
    return sorted(k for k in values if k not in used)


def build(config: dict[str, Any]) -> tuple[TrainArgs, MethodConfig]:
    """Turn a resolved job config (as written to config.json) into dataclasses."""
    resolved = resolve({k: v for k, v in config.items() if k in all_keys()})
    train = TrainArgs(**{k: v for k, v in resolved.items() if k in TRAIN_FIELDS})
    entry = METHODS[resolved["method"]]
    mfields = _fields(entry.config)
    method = entry.config(**{k: v for k, v in resolved.items() if k in mfields})
    return train, method


def with_defaults(resolved: dict[str, Any]) -> dict[str, Any]:
    """The full configuration a job runs with: explicit values (already validated by
    `resolve`) plus every default, in the dataclasses' field order."""
    full = {**defaults(resolved["method"]), **resolved}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
