"""Task table: GLUE (names, metrics, hub columns, download_glue_data.py TSV layouts) and SQuAD.

Torch-free: the spec validator and `collect` read it without importing the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TsvLayout:
    """Where text and label sit in a download_glue_data.py TSV file."""

    text_columns: tuple[str | int, ...]  # header names, or column indices when no header
    label_column: str | int
    header: bool = True
    train_file: str = "train.tsv"
    eval_files: dict[str, str] = field(default_factory=lambda: {"validation": "dev.tsv"})


@dataclass(frozen=True)
class Task:
    name: str  # spec name, also the hub config name of nyu-mll/glue
    display: str  # the spreadsheet's name: "MRPC", "SST-2", ...
    glue_dir: str  # directory name in the download_glue_data.py layout
    hub_columns: tuple[str, ...]  # text columns of the hub dataset
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]  # HF Trainer names without the eval_ prefix
    tsv: TsvLayout | None
    label_names: tuple[str, ...] = ()  # string labels of the TSV files, in hub id order
    hub_eval_splits: dict[str, str] = field(default_factory=lambda: {"validation": "validation"})
    kind: str = "classification"  # or "qa": extractive question answering (SQuAD)
    hub_dataset: str = "nyu-mll/glue"
    hub_config: str | None = ""  # "": the task's name (GLUE configs); None: no config
    max_seq_length: int = 128  # default tokens per example (SQuAD: 384)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa"


_NLI = ("entailment", "not_entailment")

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("cola", "CoLA", "CoLA", ("sentence",), 2, ("matthews_correlation",),
             TsvLayout((3,), 1, header=False)),
        Task("sst2", "SST-2", "SST-2", ("sentence",), 2, ("accuracy",),
             TsvLayout(("sentence",), "label")),
        Task("mrpc", "MRPC", "MRPC", ("sentence1", "sentence2"), 2,
             ("accuracy", "f1", "combined_score"),
             TsvLayout(("#1 String", "#2 String"), "Quality")),
        Task("qqp", "QQP", "QQP", ("question1", "question2"), 2,
             ("accuracy", "f1", "combined_score"),
             TsvLayout(("question1", "question2"), "is_duplicate")),
        Task("stsb", "STS-B", "STS-B", ("sentence1", "sentence2"), 1,
             ("pearson", "spearmanr", "combined_score"),
             TsvLayout(("sentence1", "sentence2"), "score")),
        Task("mnli", "MNLI", "MNLI", ("premise", "hypothesis"), 3,
             ("accuracy", "accuracy_mm"),
             TsvLayout(("sentence1", "sentence2"), "gold_label",
                       eval_files={"validation": "dev_matched.tsv",
                                   "validation_mm": "dev_mismatched.tsv"}),
             label_names=("entailment", "neutral", "contradiction"),
             hub_eval_splits={"validation": "validation_matched",
                              "validation_mm": "validation_mismatched"}),
        Task("qnli", "QNLI", "QNLI", ("question", "sentence"), 2, ("accuracy",),
             TsvLayout(("question", "sentence"), "label"), label_names=_NLI),
        Task("rte", "RTE", "RTE", ("sentence1", "sentence2"), 2, ("accuracy",),
             TsvLayout(("sentence1", "sentence2"), "label"), label_names=_NLI),
        Task("wnli", "WNLI", "WNLI", ("sentence1", "sentence2"), 2, ("accuracy",),
             TsvLayout(("sentence1", "sentence2"), "label")),
        # SQuAD v1.1: the scale of the official evaluate-v1.1.py (0-100)
        Task("squad", "SQuAD", "SQuAD", ("question", "context"), 0, ("exact_match", "f1"),
             None, kind="qa", hub_dataset="rajpurkar/squad", hub_config=None,
             max_seq_length=384),
    )
}

# SQuAD files a data_dir may hold (train, dev): the official names first
SQUAD_FILES = (("train-v1.1.json", "dev-v1.1.json"), ("train.json", "dev.json"))


def finetuned_for(config: dict, task: Task) -> bool:
    """Does a checkpoint whose config.json is `config` (a dict: architectures, finetuning_task,
    id2label / num_labels) already carry a head trained for the task? Torch-free: the launch
    asks it of local checkpoints (jobs.sharing), the trainer of every model it loads."""
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        archs = []
    finetuning_task = str(config.get("finetuning_task") or "").lower().replace("-", "")
    if finetuning_task and finetuning_task.removesuffix("v1") != task.name:
        return False
    if task.is_qa:
        return any(str(a).endswith("ForQuestionAnswering") for a in archs)
    labels = config.get("id2label")
    num_labels = len(labels) if isinstance(labels, dict) and labels else config.get(
        "num_labels", 2)
    has_head = any(str(a).endswith("ForSequenceClassification") for a in archs)
    return has_head and num_labels == task.num_labels
