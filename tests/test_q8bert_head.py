"""Q8BERT's delayed head against nlp-architect 0.5.1 (nlp_architect/nn/torch/quantization.py):
a QuantizedLayer runs unquantized until `_step >= start_step`; `_update_ema` fills the input
threshold with max|x| at `_step == start_step` and moves it by
`ema -= (1 - ema_decay) * (ema - max|x|)` afterwards. So the head's EMA starts at its start step,
not at the start of QAT."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, TrainerControl, TrainerState

from quantlib.configs import Q8BertConfig
from quantlib.qat import QuantStart
from quantlib.quantize_model import install_q8bert

ENCODER = ("*encoder.layer.*",)


def tiny(tmp_path):
    from quantlib.demo import write_model

    model = AutoModelForSequenceClassification.from_pretrained(
        write_model(tmp_path / "m", num_labels=2, seed=3), hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    model.train()
    return model


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 80, (4, 10), generator=g)}


def test_head_ema_starts_at_its_start_step(tmp_path):
    model = tiny(tmp_path)
    decay, start_step, steps = 0.9, 5, 12
    now, head = install_q8bert(model, Q8BertConfig(ema_decay=decay), ENCODER)
    switch = QuantStart(model, [1.0], 0, now, delayed=(start_step, head))
    seen = []  # what reaches the classifier (its input quantizer's input), per step
    model.classifier.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    state, control = TrainerState(max_steps=steps, global_step=0), TrainerControl()
    switch.on_train_begin(None, state, control)
    q = model.classifier.input_quantizer
    amax_seen = []
    for step in range(steps):
        state.global_step = step
        switch.on_step_begin(None, state, control)
        model(**batch(step))
        amax_seen.append(float(q.amax))

    expected, ema = [], None  # nlp-architect's QuantizedLinear._update_ema, written out
    for step, x in enumerate(seen):
        if step >= start_step:
            ema = x.abs().max() if step == start_step else ema - (1 - decay) * (ema - x.abs().max())
        expected.append(0.0 if ema is None else float(ema))
    assert amax_seen == expected
    assert amax_seen[:start_step] == [0.0] * start_step and amax_seen[start_step] > 0
    switch.on_train_end(None, state, control)
    assert switch.head_quantized


def test_a_head_whose_start_step_never_came_stays_fp(tmp_path, capsys):
    model = tiny(tmp_path)
    now, head = install_q8bert(model, Q8BertConfig(), ENCODER)
    switch = QuantStart(model, [1.0], 0, now, delayed=(200, head))
    state, control = TrainerState(max_steps=3, global_step=0), TrainerControl()
    switch.on_train_begin(None, state, control)
    for step in range(3):
        state.global_step = step
        switch.on_step_begin(None, state, control)
        model(**batch(step))
    state.global_step = 3
    switch.on_train_end(None, state, control)
    assert not switch.head_quantized
    assert not any(q.enabled for q in head) and all(q.enabled for q in now)
    assert "before the head's start step 200: the head stays in FP32" in capsys.readouterr().out
