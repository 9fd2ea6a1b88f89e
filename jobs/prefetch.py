"""Resolve, on the submitting machine, every model, tokenizer, teacher and dataset a sweep's jobs
need, and fetch the hub ones into the Hugging Face cache once, before anything is submitted.

Compute nodes of most clusters cannot reach the hub, and 24 jobs that start together would all
download the same model: the jobs then run with HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 and
read the cache (the same HF_HOME, which a spec may set in resources.env). Whatever cannot be
resolved (a hub id that does not exist, a local directory that is missing, a data_dir without
the task's files) is a one-line error naming the spec key and the job, before any job runs.

The hub libraries are imported only when something must be fetched; `sweep launch --dry-run`
and `--no-prefetch` never come here.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jobs.grid import MARKER, Job, describe, where_from
from jobs.spec import Spec
from quantlib.configs import with_defaults
from quantlib.errors import SpecError
from quantlib.tasks import SQUAD_FILES, TASKS

MODEL_KEYS = ("model_name_or_path", "tokenizer_name", "teacher_name_or_path")
# a hub repo id: "name" or "namespace/name" (huggingface_hub's validate_repo_id, in short)
HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# what from_pretrained reads: configs, vocabularies, weights (safetensors, else PyTorch bins)
MODEL_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"]
TOKENIZER_FILES = ["*.json", "*.txt", "*.model"]
HF_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_")


@dataclass(frozen=True)
class Need:
    kind: str  # "model", "tokenizer" (its files only) or "dataset"
    name: str  # hub id (model, dataset)
    config: str | None  # the dataset's config (GLUE: the task), None for models
    key: str  # spec key it came from, e.g. "base.model_name_or_path"
    job: str  # the first job that needs it: "<id> (<label>)"


def _looks_like_path(value: str) -> bool:
    first = value.split("/", 1)[0]
    return (value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1
            or ("/" in value and first != value and Path(first).is_dir()))


def _local_model(path: Path, key: str) -> str | None:
    """Why a local model / tokenizer directory will not load, or None."""
    if not path.is_dir():
        return "is a file, not a model directory"
    if key == "tokenizer_name":
        names = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
        if not any((path / n).is_file() for n in names):
            return f"holds no tokenizer ({', '.join(names)})"
        return None
    if not (path / "config.json").is_file():
        return "holds no config.json: not a saved model"
    return None


def _local_data(task_name: str, root: Path) -> str | None:
    """Why a data_dir does not hold the task's files, or None."""
    if not root.is_dir():
        return "no such directory"
    task = TASKS[task_name]
    if task.is_qa:
        if any(all((root / f).is_file() for f in pair) for pair in SQUAD_FILES):
            return None
        return "holds no SQuAD files (" + " or ".join(" + ".join(p) for p in SQUAD_FILES) + ")"
    assert task.tsv is not None
    files = [task.tsv.train_file, *task.tsv.eval_files.values()]
    missing = [f for f in files if not (root / f).is_file()]
    return f"holds no {', '.join(missing)} (the {task.display} files of download_glue_data.py)" \
        if missing else None


def needs(spec: Spec, jobs: list[Job]) -> list[Need]:
    """The hub models and datasets the jobs need, each once; local paths are checked here."""
    found: dict[tuple[str, str, str | None], Need] = {}
    for job in jobs:
        config = with_defaults(job.config)
        who = _who(spec, job)
        fail = functools.partial(_fail, spec, job)
        for key in MODEL_KEYS:
            value = config.get(key)
            if not value or str(value).startswith(MARKER):  # unset, or a parent's model
                continue
            path = Path(value).expanduser()
            if path.exists():
                why = _local_model(path, key)
                if why:
                    fail(key, value, why)
            elif _looks_like_path(value):
                fail(key, value, f"is not a directory here ({Path.cwd()}) nor a hub id")
            elif not HUB_ID_RE.match(value):
                fail(key, value, "is neither a local directory nor a hub id (name or "
                                 "namespace/name)")
            else:
                kind = "tokenizer" if key == "tokenizer_name" else "model"
                if kind == "tokenizer" and ("model", value, None) in found:
                    continue  # the model's files hold its tokenizer
                found.setdefault((kind, value, None), Need(kind, value, None,
                                                           where_from(spec, job, key), who))
                if kind == "model":  # a model fetched whole makes its tokenizer-only fetch moot
                    found.pop(("tokenizer", value, None), None)
        task = TASKS[config["task"]]
        if config.get("data_dir"):
            why = _local_data(task.name, Path(config["data_dir"]).expanduser())
            if why:
                fail("data_dir", config["data_dir"], why)
            continue
        name = config.get("dataset_name") or task.hub_dataset
        ds_config = None if task.hub_config is None else (task.hub_config or task.name)
        local = Path(name).expanduser()
        if not local.is_dir():
            if _looks_like_path(name):
                fail("dataset_name", name, "is not a directory here nor a hub dataset id")
            if not HUB_ID_RE.match(name):
                fail("dataset_name", name, "is neither a local directory nor a hub dataset id")
        found.setdefault(("dataset", name, ds_config), Need(
            "dataset", name, ds_config, where_from(spec, job, "dataset_name"), who))
    return list(found.values())


def _who(spec: Spec, job: Job) -> str:
    return f"{job.id}: {describe(spec, job.config)}"


def _fail(spec: Spec, job: Job, key: str, value: Any, why: str) -> None:
    raise SpecError(spec.path, where_from(spec, job, key),
                    f"{value!r} {why} (job {_who(spec, job)})")


def hub_environment(spec: Spec) -> None:
    """The spec's HF_* variables (resources.env, e.g. HF_HOME) here too, before the hub
    libraries are imported: the jobs must find what is fetched now in the same cache."""
    for key, value in spec.resources.env.items():
        if key.startswith(HF_ENV_PREFIXES):
            os.environ[key] = os.path.expanduser(os.path.expandvars(value))


def _fetch_model(repo: str, tokenizer_only: bool = False) -> str:
    from huggingface_hub import HfApi, constants, snapshot_download

    if tokenizer_only:  # tokenizer_name: its vocabulary and configs, not the weights
        return snapshot_download(repo, allow_patterns=TOKENIZER_FILES)
    patterns = list(MODEL_FILES)
    if not constants.HF_HUB_OFFLINE:
        files = HfApi().list_repo_files(repo)
        if any(f.endswith(".safetensors") for f in files):
            patterns.remove("*.bin")  # the same weights twice: from_pretrained takes these
    return snapshot_download(repo, allow_patterns=patterns)


def _fetch_dataset(name: str, config: str | None) -> str:
    import datasets

    data = datasets.load_dataset(name, config)
    first = next(iter(data.values()))
    return str(Path(first.cache_files[0]["filename"]).parent) if first.cache_files else name


def _explain(exc: Exception) -> str:
    kind = type(exc).__name__
    text = " ".join(str(exc).split())
    if kind in ("RepositoryNotFoundError", "DatasetNotFoundError"):
        return "not found on the Hugging Face hub (a typo? a private repo needs `hf auth login`)"
    if kind == "GatedRepoError":
        return "gated on the hub: accept its terms on its page and log in (`hf auth login`)"
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or (
            "offline" in text.lower() and "cache" in text.lower()):
        return ("not in the Hugging Face cache, and the hub may not be asked (HF_HUB_OFFLINE / "
                "HF_DATASETS_OFFLINE is set here)")
    return f"could not be fetched: {kind}: {text[:200]}"


def prefetch(spec: Spec, jobs: list[Job], out: IO[str] | None = None) -> list[Need]:
    """Check every local path, fetch every hub model and dataset into the cache; raises
    SpecError (nothing submitted yet) for what cannot be had."""
    out = out or sys.stderr
    todo = needs(spec, jobs)
    if not todo:
        return todo
    hub_environment(spec)
    for i, need in enumerate(todo, 1):
        label = need.name + (f" ({need.config})" if need.config else "")
        print(f"prefetch [{i}/{len(todo)}] {need.kind} {label}", file=out, flush=True)
        try:
            where = (_fetch_dataset(need.name, need.config) if need.kind == "dataset"
                     else _fetch_model(need.name, tokenizer_only=need.kind == "tokenizer"))
        except Exception as exc:  # whatever the hub libraries raise: one line, nothing runs
            raise SpecError(spec.path, need.key, f"{need.kind} {label!r} {_explain(exc)} "
                                                 f"(job {need.job})") from None
        print(f"  -> {where}", file=out, flush=True)
    print(f"prefetch: {len(todo)} model(s) and dataset(s) in the Hugging Face cache; jobs "
          "read them offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1)", file=out, flush=True)
    return todo
