"""Shared FP32 fine-tuning: an implicit first stage of the jobs whose fine-tuning is the same.

The seed study fine-tunes one model on one task with one seed 24 times before quantizing it
24 ways. Here the jobs of a sweep's first stage that fine-tune first (their method's
`shares_finetune`, quantlib.configs.finetune_shareable), with the same values of every
argument the fine-tuning depends on (quantlib.configs.FINETUNE_KEYS), get one parent job in the
stage FINETUNE_STAGE: an fp32 job with `finetune_checkpoint: true`, which keeps its last
Trainer checkpoint (model, optimizer, scheduler, RNG) in its directory's `finetuned/`. Each
child depends on it as a later-stage job depends on its parent (same mechanics on every
backend: SLURM afterok, LSF done(), the local launcher's wait) and resumes its own Trainer run
from that checkpoint at the fine-tuning's last step, so that it computes what it computes
alone (quantlib.trainer.train_stages checks that the checkpoint is its own step boundary and
fine-tunes by itself otherwise).

A child keeps the id and directory it has unshared: its configuration is the same, the sharing
is how it is run. A spec opts out with `finetune_sharing: false`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jobs.spec import FINETUNE_STAGE, Spec
from quantlib.configs import FINETUNE_KEYS, defaults, finetune_shareable, identity_key, resolve
from quantlib.tasks import TASKS, finetuned_for

MIN_CHILDREN = 2  # one job alone gains nothing from waiting for a parent


def parent_config(config: dict, known: dict[str, dict | None] | None = None) -> dict | None:
    """The shared fine-tuning job's configuration for a job that can share (None: it cannot,
    or has no fine-tuning to share). `known`: checkpoint configs already read, by name."""
    if not finetune_shareable(config):
        return None
    full = {**defaults(config["method"]), **config}
    epochs = float(full["finetune_epochs"])
    # whole epochs: a fractional fine-tuning ends mid-epoch, at a step that the job alone
    # rounds from its own total (quantlib.stages.stage_starts) and may place elsewhere
    if full["finetune"] == "never" or not epochs > 0 or not epochs.is_integer():
        return None
    if full["finetune"] == "auto":  # a checkpoint fine-tuned for the task fine-tunes nothing
        name = str(full["model_name_or_path"])
        if known is None or name not in known:
            found = checkpoint_config(name)
            if known is not None:
                known[name] = found
        else:
            found = known[name]
        if found is not None and finetuned_for(found, TASKS[full["task"]]):
            return None
    values = {k: config[k] for k in FINETUNE_KEYS if k in config}
    return resolve({**values, "method": "fp32", "finetune_checkpoint": True})


MAX_CONFIG_BYTES = 1 << 20  # a model's config.json is a few KB


def checkpoint_config(name: str) -> dict | None:
    """A checkpoint's config.json, where it is on this machine without asking the hub: a local
    directory, or a hub id's snapshot in the hub cache (refs/main). None when it is not there
    or does not read (the shared job then finds out when it runs)."""
    import json
    import os

    folder = Path(name)
    if not folder.is_dir():
        hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "huggingface"), "hub")
        repo = Path(hub) / ("models--" + name.replace("/", "--"))
        try:
            commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not commit or "/" in commit or commit.startswith("."):
            return None
        folder = repo / "snapshots" / commit
    try:
        path = folder / "config.json"
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def share_finetune(spec: Spec, configs: list[dict], taken: set[str]
                   ) -> tuple[list[dict], list[list[int]]]:
    """The shared fine-tunings of a first stage whose jobs have `configs`: (their
    configurations, and for each the positions of the jobs that take it). `taken`: ids of the
    sweep's jobs (a shared job is never one of them: that group stays unshared)."""
    from jobs.grid import job_id

    if not spec.finetune_sharing:
        return [], []
    groups: dict[str, list[int]] = {}
    parents: dict[str, dict] = {}
    known: dict[str, dict | None] = {}
    seen: dict[tuple, str | None] = {}  # the fine-tuning's arguments -> identity (10,000 jobs)
    for i, config in enumerate(configs):
        # resolved values of scalar arguments (each of one kind: validated), hashable as is
        what = (finetune_shareable(config), config.get("method"),
                tuple(map(config.get, FINETUNE_KEYS)))
        if what not in seen:
            pconf = parent_config(config, known)
            seen[what] = None if pconf is None else identity_key(pconf)
            if pconf is not None:
                parents[str(seen[what])] = pconf
        key = seen[what]
        if key is not None:
            groups.setdefault(key, []).append(i)
    out_configs, out_members = [], []
    for key, members in groups.items():
        if len(members) < MIN_CHILDREN or job_id(parents[key]) in taken:
            continue
        out_configs.append(parents[key])
        out_members.append(members)
    return out_configs, out_members


def stage_names(spec: Spec) -> list[str]:
    """The sweep's stages in the order they run: the shared fine-tuning first."""
    return [FINETUNE_STAGE] + [st.name for st in spec.stages]


def by_stage(spec: Spec, jobs: list) -> list[list]:
    """Jobs grouped by stage, in the order the stages run (empty stages left out)."""
    groups = [[j for j in jobs if j.stage == name] for name in stage_names(spec)]
    return [g for g in groups if g]


def sharing_note(jobs: list) -> list[str]:
    """What the dry run says about the shared fine-tuning: jobs, and epochs saved."""
    from quantlib.configs import TRAIN_FIELDS

    parents = [j for j in jobs if j.stage == FINETUNE_STAGE]
    if not parents:
        return []
    default = TRAIN_FIELDS["finetune_epochs"].default

    def epochs(j) -> float:
        return float(j.config.get("finetune_epochs", default))

    children = [j for j in jobs if j.shared_finetune]
    saved = sum(epochs(j) for j in children) - sum(epochs(j) for j in parents)
    return [f"shared FP32 fine-tuning: {len(parents)} job{'s' if len(parents) > 1 else ''} "
            f"(stage {FINETUNE_STAGE}) fine-tune{'' if len(parents) > 1 else 's'} for "
            f"{len(children)} jobs, which resume from its checkpoint (kept in its directory's "
            f"finetuned/): {saved:g} fine-tuning epochs fewer; finetune_sharing: false in the "
            "spec gives each job its own"]


def unshare_known(jobs: list) -> tuple[list, set[str]]:
    """`jobs` less the shared fine-tunings that turn out to have nothing to fine-tune now that
    the launch fetched the model (a hub checkpoint already fine-tuned for the task: its
    config.json was not in the hub cache when the spec was expanded); their children run on
    their own. Returns (the jobs, the ids of the shared jobs dropped)."""
    first_child: dict[str, Any] = {}
    for j in jobs:
        if j.shared_finetune:
            first_child.setdefault(str(j.after), j)
    known: dict[str, dict | None] = {}
    dropped = {pid for pid, child in first_child.items()
               if parent_config(child.config, known) is None}
    if not dropped:
        return jobs, dropped
    out = [dataclasses.replace(j, after=None, upstream_dir=None, shared_finetune=False)
           if j.shared_finetune and j.after in dropped else j
           for j in jobs if j.id not in dropped]
    return out, dropped
