"""The weights registry: shipped files in `compass/pretrained/`, a manifest, sha256 checks, checked configs.

A weights file is self-describing: it carries the config that rebuilds its model (`compass.models` builds it), so
nothing keeps a parallel table of architectures. A scalable model whose base is a shipped single-layer codec refers
to it (`base_from`: name and sha256) instead of holding a copy: the five shipped models hold one base, not five.
Floating-point parameters are stored in fp16 (half the size); the integer probability tables are stored exactly
and are rebuilt at export time from the fp16-rounded parameters, so the tables and the network that uses them
always agree.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from .bitstream import valid_model_name
from .codec import CodecConfig, MeanScaleHyperprior
from .errors import CompassError
from .fileutil import atomic_write, open_input
from .liff import LiffConfig
from .limits import MAX_HIDDEN_LAYERS, MODEL_CONFIG_MAX

WEIGHTS_FORMAT = "compass-weights/1"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MANIFEST = PRETRAINED_DIR / "manifest.json"


class WeightsError(CompassError):
    """A weights file, checkpoint or manifest is missing, damaged, malformed or of an unknown format, or weights
    fail their sha256 check. The message names the file."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open_input(path, WeightsError) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(path: Path | None = None) -> dict:
    """The manifest of shipped weights (or the one at `path`): {"models": {name: entry}}, every entry with a "file"
    beside the manifest and its "sha256". Anything else is a WeightsError naming the manifest."""
    path = MANIFEST if path is None else path
    if not path.exists():
        return {"models": {}}
    with open_input(path, WeightsError) as f:
        try:
            man = json.loads(f.read())
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError
            raise WeightsError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from None
    if not (isinstance(man, dict) and isinstance(man.get("models"), dict)):
        raise WeightsError(f'{path}: not a manifest (expected {{"models": {{NAME: {{"file": ..., "sha256": ...}}}}}})')
    for name, entry in man["models"].items():
        file, digest = (entry.get("file"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(file, str) and file not in ("", ".", "..") and file == os.path.basename(file)):
            raise WeightsError(f"{path}: model {name!r} needs a 'file' naming a file beside the manifest, got {file!r}")
        if not (isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)):
            raise WeightsError(f"{path}: model {name!r} needs a 'sha256' of 64 hex digits, got {digest!r}")
    return man


def registered() -> list[str]:
    return sorted(manifest()["models"])


def half_state(module: nn.Module) -> dict:
    """State dict with parameters in fp16; buffers (tables, medians) keep their exact dtype."""
    params = {name for name, _ in module.named_parameters()}
    return {k: v.half() if k in params else v for k, v in module.state_dict().items()}


def round_to_half(module: nn.Module) -> None:
    """Round every float parameter to fp16 precision in place (what the shipped file will hold)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def export(modules: dict[str, nn.Module], configs: dict, name: str, path: str | Path, info: dict | None = None,
           frozen: Collection[str] = (), base_ref: str | None = None) -> str:
    """Write a weights file: fp16 parameters, exact tables rebuilt from them. Returns its sha256.

    `modules`: {"base": codec} for a single-layer model, {"base", "residual", "liff"} for a scalable one.
    `configs`: {"codec": CodecConfig dict, "liff": LiffConfig dict (scalable only)}.
    `frozen`: modules loaded unchanged from shipped weights, stored as they are: fitting the quantiles again
    would move them (the fit is an optimization, not idempotent) and change the tables the shipped file codes with.
    `base_ref`: a registered single-layer model whose codec is this model's base, bit for bit (checked): the
    file refers to it instead of holding a copy.
    """
    for key, m in modules.items():
        if key in frozen:
            continue
        if isinstance(m, MeanScaleHyperprior):
            m.entropy_bottleneck.fit_quantiles()  # before rounding: the tables come from the stored quantiles
        round_to_half(m)
        if isinstance(m, MeanScaleHyperprior):
            m.update()
    obj = {"format": WEIGHTS_FORMAT, "name": name, "config": configs, "info": info or {},
           "state": {k: half_state(m) for k, m in modules.items()}}
    if base_ref is not None:
        ref, _ = load_weights(base_ref)
        if not _same_state(ref["state"]["base"], obj["state"]["base"]):
            raise WeightsError(f"the base of {name!r} is not the codec of {base_ref!r}: it cannot refer to it")
        del obj["state"]["base"]
        obj["base_from"] = {"model": base_ref, "sha256": _file_sha(base_ref)}
    atomic_write(path, lambda f: torch.save(obj, f))
    return sha256_file(path)


def safe_load(path: str | Path, map_location="cpu"):
    """torch.load of a weights file or a training checkpoint, restricted to tensors and plain data (weights_only):
    a forged file cannot run code when loaded. Anything else is a WeightsError naming the file."""
    with open_input(path, WeightsError) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on foreign files: what is wrong is said below, in one line
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" not in str(e):
                raise WeightsError(f"cannot read {path}: damaged ({' '.join(str(e).split())[:200]})") from None
            raise WeightsError(f"{path} holds Python objects other than tensors and plain data, which loading "
                               f"could run as code: refused (compass weights and checkpoints hold none)") from None
        except Exception as e:  # a damaged or foreign file fails in many ways inside torch
            raise WeightsError(f"cannot read {path}: damaged or not a torch file ({type(e).__name__})") from None


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _file_sha(model: str) -> str:
    return manifest()["models"][model]["sha256"]


def _attach_base(obj: dict, path: Path) -> None:
    """Put the base a file refers to (`base_from`: a registered model and its file's sha256) into its state. The
    referenced file must have that sha256 and hold a base of its own (references do not chain)."""
    if "base_from" not in obj:
        return
    ref = obj.pop("base_from")
    name, sha = (ref.get("model"), ref.get("sha256")) if isinstance(ref, dict) else (None, None)
    if not (isinstance(name, str) and isinstance(sha, str)):
        raise WeightsError(f"weights file {path}: base_from must name a registered model and its sha256")
    entry = manifest()["models"].get(name)
    if entry is None:
        raise WeightsError(f"{path} refers to base model {name!r}, which is not installed")
    if entry["sha256"] != sha:
        raise WeightsError(f"{path} refers to base model {name!r} with sha256 {sha[:16]}..., but the installed one "
                           f"has {entry['sha256'][:16]}...: reinstall compass")
    base, _ = _read(PRETRAINED_DIR / entry["file"], sha)
    state = base.get("state")
    if "base_from" in base or not (isinstance(state, dict) and "base" in state):
        raise WeightsError(f"{path} refers to base model {name!r}, which holds no base of its own")
    if not isinstance(obj.get("state"), dict):
        raise WeightsError(f"weights file {path}: its state must map module names to tensors")
    obj["state"]["base"] = state["base"]


def resolve(model: str | Path) -> tuple[Path, str | None]:
    """(file, expected sha256) of a registered name, or (path, None) for a file given by path."""
    entry = manifest()["models"].get(str(model))
    if entry is not None:
        return PRETRAINED_DIR / entry["file"], entry["sha256"]
    path = Path(model)
    if path.suffix == ".pt" or path.exists():
        return path, None
    known = ", ".join(registered()) or "none shipped"
    raise WeightsError(f"unknown model {model!r} (registered: {known}); pass a weights file path instead")


def load_weights(model: str | Path) -> tuple[dict, str]:
    """Load a weights object (its base attached when it refers to one), verifying a registered file's sha256.
    Returns (object, the model's id): the sha256 of its file, or for a registered file that was repackaged
    without changing its weights (the base moved out to a reference) the manifest's `id`, the sha256 it first
    shipped with, which the files it wrote carry."""
    path, expected = resolve(model)
    obj, digest = _read(path, expected)
    _attach_base(obj, path)
    try:
        _check_weights(obj)
    except ValueError as e:
        raise WeightsError(f"weights file {path}: {e}") from None
    entry = manifest()["models"].get(str(model)) if expected is not None else None
    return {**obj, "source": str(path)}, (entry or {}).get("id", digest)


def _read(path: Path, expected: str | None) -> tuple[dict, str]:
    """The weights object of a file and the file's sha256, after the sha256 check (`expected`, for a registered
    file) and the format check."""
    if not path.exists():
        raise WeightsError(f"weights file {path} is missing; restore it with `git checkout -- {path.name}` "
                           f"in {path.parent} (or reinstall compass)")
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        raise WeightsError(f"weights file {path} fails its sha256 check (damaged or modified); restore it with "
                           f"`git checkout -- {path}` or reinstall compass")
    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path} is not a compass weights file (format {WEIGHTS_FORMAT})")
    return obj, digest


def _check_weights(obj: dict) -> None:
    """Raise ValueError saying what is wrong unless `obj` has a name a file header can hold, modules of tensors,
    and configs within `limits.MODEL_CONFIG_MAX` for every model it holds (a forged config could otherwise make
    the model builder allocate without bound)."""
    if not (isinstance(obj.get("name"), str) and valid_model_name(obj["name"])):
        raise ValueError(f"its name must be 1-255 printable ASCII characters, got {obj.get('name')!r:.60}")
    state = obj.get("state")
    if not (isinstance(state, dict) and "base" in state and all(
            isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in m.items())
            for m in state.values())):
        raise ValueError("its state must hold module 'base' and map each module's names to tensors")
    configs = obj.get("config")
    if not isinstance(configs, dict):
        raise ValueError("it holds no config")
    codec_config(configs.get("codec"))
    if "liff" in state:
        liff_config(configs.get("liff"))


def codec_config(d) -> CodecConfig:
    """The CodecConfig of a weights file's config["codec"]; ValueError unless every field is within bounds."""
    cfg = _config(CodecConfig, d, "codec")
    lambdas = (cfg.lambda_min, cfg.lambda_max)
    if not (all(type(v) in (int, float) and math.isfinite(v) for v in lambdas) and 0 < lambdas[0] < lambdas[1]):
        raise ValueError(f"config 'codec' needs 0 < lambda_min < lambda_max, got {lambdas!r:.80}")
    return cfg


def liff_config(d) -> LiffConfig:
    """The LiffConfig of a weights file's config["liff"]; ValueError unless every field is within bounds."""
    cfg = _config(LiffConfig, d, "liff")
    if not 1 <= len(cfg.hidden) <= MAX_HIDDEN_LAYERS or not isinstance(cfg.skip, bool):
        raise ValueError(f"config 'liff' needs 1 to {MAX_HIDDEN_LAYERS} hidden widths and skip true or false")
    return cfg


def _config(cls, d, key: str):
    """`cls` built from the dict `d`, each integer field named in `MODEL_CONFIG_MAX` (each entry of a tuple)
    checked, so that nothing is allocated for a forged size."""
    if not isinstance(d, dict):
        raise ValueError(f"config {key!r} is missing or not a table")
    try:
        cfg = LiffConfig.from_dict(d) if cls is LiffConfig else cls(**d)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"config {key!r}: {' '.join(str(e).split())[:120]}") from None
    for f in dataclasses.fields(cfg):
        value, top = getattr(cfg, f.name), MODEL_CONFIG_MAX.get(f.name)
        if top is not None and not all(type(v) is int and 1 <= v <= top
                                       for v in (value if isinstance(value, tuple) else (value,))):
            raise ValueError(f"config {key!r}: {f.name} must be whole numbers from 1 to {top}, got {value!r:.60}")
    return cfg
