"""Demo assets: a small learnable task in GLUE TSV layout and a tiny BERT with its own vocab.

`python -m quantlib.demo DIR` writes
- DIR/data/SST-2/{train,dev}.tsv: sentences mixing 0-2 "positive" and 0-2 "negative" words,
  each negated by a preceding "not" half the time, in filler; the label says whether the
  effective positives outnumber the negatives. Learnable, but only through word order (the
  encoder has to pair "not" with the next word), so heavy quantization of the encoder hurts.
- DIR/data/SST-2-hard: the harder variant (HARD): up to 3 words per polarity, and half the
  negations put an intensifier between "not" and its word ("not very good").
- DIR/model: a randomly initialised 2-layer BERT (hidden 64) and a WordPiece tokenizer, saved
  with save_pretrained, so jobs load it through the same from_pretrained path as
  bert-base-uncased. It is not fine-tuned: jobs fine-tune it in FP32 first.
Also the tests' source of tiny models and data (`write_model`, `write_glue_tsv`).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

POSITIVE = ["good", "great", "superb", "lovely", "fine", "happy", "bright", "brilliant",
            "charming", "delight", "fresh", "gentle", "joyful", "kind", "warm", "wonderful"]
NEGATIVE = ["bad", "awful", "poor", "dull", "sad", "grim", "boring", "bleak", "clumsy", "cold",
            "harsh", "nasty", "rough", "stale", "ugly", "weak"]
FILLER = ["the", "a", "film", "movie", "story", "plot", "actor", "scene", "music", "script",
          "ending", "cast", "was", "is", "and", "but", "very", "quite", "rather", "with", "of",
          "in", "this", "that", "it", "its", "for", "on", "an", "at", "to", "by", "from",
          "director", "camera", "dialogue", "pace", "tone", "score", "light", "not"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


INTENSIFIERS = ["very", "quite", "rather"]
HARD = {"most": 3, "gap": 0.5}  # the harder variant (data/SST-2-hard)


def sentence(rng: random.Random, most: int = 2, gap: float = 0.0) -> tuple[str, int]:
    """0..most sentiment words per polarity, each negated by a preceding "not" half the time;
    the label says whether the effective positives outnumber the negatives (never a tie).
    gap: the chance that an intensifier stands between a "not" and its word ("not very good"),
    so the encoder has to pair words two apart (0 draws nothing: the demo's sentences)."""
    while True:
        polarities = [1] * rng.randint(0, most) + [-1] * rng.randint(0, most)
        negated = [rng.random() < 0.5 for _ in polarities]
        score = sum(-p if n else p for p, n in zip(polarities, negated))
        if score != 0:
            break
    phrases = [(["not"] if n else [])
               + ([rng.choice(INTENSIFIERS)] if n and gap and rng.random() < gap else [])
               + [rng.choice(POSITIVE if p > 0 else NEGATIVE)]
               for p, n in zip(polarities, negated)]
    phrases += [[rng.choice(FILLER)] for _ in range(rng.randint(2, 6))]
    rng.shuffle(phrases)
    return " ".join(w for phrase in phrases for w in phrase), int(score > 0)


def write_glue_tsv(task_dir: str | Path, n_train: int = 3000, n_dev: int = 500,
                   seed: int = 0, most: int = 2, gap: float = 0.0) -> Path:
    """The demo task in the SST-2 layout (header `sentence<TAB>label`); `most`, `gap`: as
    `sentence`'s (HARD: the harder variant)."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        pairs = (sentence(rng, most, gap) for _ in range(n))
        rows = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in pairs]
        (task_dir / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return task_dir


ASPECTS = ["actor", "music", "plot", "pace", "tone", "score", "script", "ending", "cast",
           "camera", "dialogue", "director"]
QUESTION_WORDS = ["how", "what", "?"]


def write_squad_json(task_dir: str | Path, n_train: int = 2000, n_dev: int = 300,
                     seed: int = 0, positive_answer: bool = False) -> Path:
    """A small extractive QA task in SQuAD v1.1 JSON (train-v1.1.json, dev-v1.1.json): a
    context rates 2-3 aspects of a film ("the music was dull"), among filler; the question asks
    for one aspect ("how was the music ?"), the answer is its rating word. Dev questions carry
    two ground truths (the word, and "was <word>"), as SQuAD's do. positive_answer: the asked
    aspect's rating is positive and the others negative, a cue a 2-layer model picks up within
    a few epochs (tests); without it the model must match the aspect, which takes longer."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, n, dev in (("train-v1.1.json", n_train, False), ("dev-v1.1.json", n_dev, True)):
        paragraphs = []
        for i in range(n):
            aspects = rng.sample(ASPECTS, rng.randint(2, 3))
            asked = rng.choice(aspects)
            words: list[str] = []
            spans = {}
            for aspect in aspects:
                words += [rng.choice(FILLER) for _ in range(rng.randint(0, 3))]
                ratings = POSITIVE + NEGATIVE
                if positive_answer:
                    ratings = POSITIVE if aspect == asked else NEGATIVE
                rating = rng.choice(ratings)
                words += ["the", aspect, "was"]
                spans[aspect] = (len(" ".join(words)) + (1 if words else 0), rating)
                words.append(rating)
            context = " ".join(words)
            start, rating = spans[asked]
            assert context[start:start + len(rating)] == rating
            answers = [{"text": rating, "answer_start": start}]
            if dev:
                answers.append({"text": f"was {rating}", "answer_start": start - 4})
            qa = {"id": f"{name[:3]}{i:06d}", "question": f"how was the {asked} ?",
                  "answers": answers}
            paragraphs.append({"context": context, "qas": [qa]})
        doc = {"version": "1.1", "data": [{"title": "films", "paragraphs": paragraphs}]}
        (task_dir / name).write_text(json.dumps(doc), encoding="utf-8")
    return task_dir


def write_vocab(path: Path, extra_words: list[str] | None = None) -> Path:
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + (extra_words or [])))
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    path.write_text("\n".join(SPECIAL + words + pieces) + "\n", encoding="utf-8")
    return path


def write_model(model_dir: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 2,
                intermediate: int = 128, seed: int = 0, extra_words: list[str] | None = None,
                num_labels: int | None = None) -> Path:
    """A randomly initialised tiny BERT (masked-LM head, i.e. not fine-tuned, unless
    num_labels is given) and its WordPiece tokenizer, saved with save_pretrained."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertTokenizer,
    )

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_vocab(model_dir / "vocab.txt", extra_words)
    # from_pretrained reads vocab.txt in transformers 4 and 5 alike (the constructor's
    # vocab argument changed between them)
    tokenizer = BertTokenizer.from_pretrained(model_dir, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=128)
    if num_labels is None:
        model = BertForMaskedLM(config)
    else:
        config.num_labels = num_labels
        model = BertForSequenceClassification(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def write_distilbert(model_dir: str | Path, *, dim: int = 64, layers: int = 1, heads: int = 2,
                     hidden: int = 128, seed: int = 0,
                     extra_words: list[str] | None = None) -> Path:
    """A randomly initialised tiny DistilBERT (masked LM) sharing write_model's vocabulary."""
    import torch
    from transformers import BertTokenizer, DistilBertConfig, DistilBertForMaskedLM

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_vocab(model_dir / "vocab.txt", extra_words)
    tokenizer = BertTokenizer.from_pretrained(model_dir, do_lower_case=True)
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=dim, n_layers=layers,
                              n_heads=heads, hidden_dim=hidden, max_position_embeddings=128)
    DistilBertForMaskedLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def sparsify(model_dir: str | Path, out_dir: str | Path, sparsity: float) -> Path:
    """A pre-sparsified copy of a saved model (as Intel's Prune OFA checkpoints): every encoder
    Linear weight magnitude-pruned to `sparsity`; the model keeps its class (and head)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from quantlib.sparsity import magnitude_masks
    from quantlib.stages import select_weights

    arch = (AutoConfig.from_pretrained(model_dir).architectures or ["AutoModelForMaskedLM"])[0]
    model = getattr(transformers, arch).from_pretrained(model_dir)
    weights = select_weights(model, ("*encoder.layer.*", "*transformer.layer.*"))
    masks = magnitude_masks(weights, sparsity)
    for name, w in weights.items():
        w.data.mul_(masks[name])
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m quantlib.demo DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    write_glue_tsv(root / "data" / "SST-2")
    write_glue_tsv(root / "data" / "SST-2-hard", seed=1, **HARD)
    write_model(root / "model")
    print(f"demo assets in {root}: data/SST-2 and data/SST-2-hard (train 3000, dev 500 each) "
          "and model/ (tiny BERT)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
