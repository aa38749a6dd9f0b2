"""Training provenance: what trained a model, as a flat list of stages, each naming its parents by hash.

A model's record (`training` in pretrained/manifest.json, what `compass eval` reports) is

    {"recipe": ..., "data": ..., "stages": [stage, ...], "model_stages": [id, ...]}

"stages" holds every stage of the model's history once, parents before children; "model_stages" the ones that
made this model, in order. A stage is

    {"id", "recipe", "stage", "steps", "hours", "config", "validation", "from": {role: {"source", "stage": id}}}

with role `init_from` (the weights or checkpoint it started from) or `base_from` / `residual_from` (shipped weights a
joint stage loaded); "stage" is the parent stage's id (None when its record is unknown): for shipped weights, their
last stage of the same name, else their last. An id is the first 16 hex digits of the sha256 of the rest of the
stage, so it stands for its parents' records too. Records written before 2026-12 (weights files, checkpoints, the
results of `compass eval`) nest whole records in each other instead; `flatten` reads both (pure Python).
"""
from __future__ import annotations

import hashlib
import json

ROLES = ("init_from", "base_from", "residual_from")


def flatten(training: dict | None) -> dict | None:
    """The flat form of a model's training record, nested (older) or flat (returned as it is)."""
    if not training or "model_stages" in training or "stages" not in training:
        return training
    stages: dict[str, dict] = {}
    own = _add_training(training, stages)
    return {"recipe": training.get("recipe"), "data": training.get("data"), "stages": list(stages.values()),
            "model_stages": own}


def _add_training(training: dict, stages: dict[str, dict]) -> list[str]:
    """Add the stages of a training record (nested or flat) to `stages`; the ids of the model's own stages."""
    if "model_stages" in training:
        for s in training["stages"]:
            stages.setdefault(s["id"], s)
        return list(training["model_stages"])
    return [_add_stage(s, training.get("recipe"), stages) for s in training["stages"] if isinstance(s, dict)]


def _add_stage(stage: dict, recipe: str | None, stages: dict[str, dict]) -> str:
    """Add a nested stage record and its parents to `stages`; its id."""
    parents = {}
    for role in ROLES:
        source = stage.get("init_from") if role == "init_from" else (stage.get("shipped_sources") or {}).get(role)
        if not source:
            continue
        if "stage" in source:  # a checkpoint, with its stage's record
            parent = _add_stage(source["stage"], recipe, stages)
        elif source.get("training"):  # shipped weights, with their training record
            own = [stages[i] for i in _add_training(source["training"], stages)]
            same = [s for s in own if s["stage"] == stage["stage"]]
            parent = (same or own)[-1]["id"]
        else:
            parent = None
        parents[role] = {"source": source.get("source"), "stage": parent}
    record = {"recipe": recipe, "stage": stage["stage"], "steps": stage["steps"], "hours": stage.get("hours"),
              "config": stage.get("config"), "validation": stage.get("validation"), "from": parents}
    sid = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    stages.setdefault(sid, {"id": sid, **record})
    return sid


def history(training: dict, stage_id: str) -> list[int]:
    """Steps of a stage and of the runs of the same stage it continued (its parents), oldest first."""
    stages = {s["id"]: s for s in flatten(training)["stages"]}
    stage = stages[stage_id]
    for role in ROLES:
        parent = stages.get((stage["from"].get(role) or {}).get("stage"))
        if parent is not None and parent["stage"] == stage["stage"]:
            return history(training, parent["id"]) + [stage["steps"]]
    return [stage["steps"]]
