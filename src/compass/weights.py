"""The weights registry: shipped files in `compass/pretrained/`, a manifest, sha256 checks, models rebuilt from config.

A weights file is self-describing: it carries the config that rebuilds its model, so nothing here keeps a
parallel table of architectures. A scalable model whose base is a shipped single-layer codec refers to it
(`base_from`: name and sha256) instead of holding a copy: the five shipped models hold one base, not five. Floating-point parameters are stored in fp16 (half the size); the integer
probability tables are stored exactly and are rebuilt at export time from the fp16-rounded parameters, so the
tables and the network that uses them always agree.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection
from pathlib import Path

import torch
from torch import nn

from .codec import CodecConfig, MeanScaleHyperprior
from .errors import CompassError
from .liff import LIFF, LiffConfig
from .scalable import ScalableCodec

WEIGHTS_FORMAT = "compass-weights/1"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MANIFEST = PRETRAINED_DIR / "manifest.json"


class WeightsError(CompassError):
    """A weights file is missing, damaged, of an unknown format, or fails its sha256 check."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(path: Path | None = None) -> dict:
    """The manifest of shipped weights (or of the folder `path` names): {"models": {name: entry}}."""
    path = MANIFEST if path is None else path
    if not path.exists():
        return {"models": {}}
    with open(path) as f:
        return json.load(f)


def registered() -> list[str]:
    return sorted(manifest()["models"])


def _half_state(module: nn.Module) -> dict:
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
           "state": {k: _half_state(m) for k, m in modules.items()}}
    if base_ref is not None:
        ref, _ = load_weights(base_ref)
        if not _same_state(ref["state"]["base"], obj["state"]["base"]):
            raise WeightsError(f"the base of {name!r} is not the codec of {base_ref!r}: it cannot refer to it")
        del obj["state"]["base"]
        obj["base_from"] = {"model": base_ref, "sha256": _file_sha(base_ref)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return sha256_file(path)


def state_from_weights(obj: dict, module: str) -> dict:
    """fp32 state dict of one module of a loaded weights object."""
    alias = {"codec": "base"}
    try:
        state = obj["state"][module if module in obj["state"] else alias.get(module, module)]
    except KeyError:
        raise WeightsError(f"weights {obj.get('name')!r} have no module {module!r}") from None
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _file_sha(model: str) -> str:
    return manifest()["models"][model]["sha256"]


def _attach_base(obj: dict, path: Path) -> None:
    """Put the base a file refers to (`base_from`) into its state, checking the referenced file's sha256."""
    ref = obj.pop("base_from", None)
    if ref is None:
        return
    try:
        base_path, expected = resolve(ref["model"])
    except WeightsError:
        raise WeightsError(f"{path} refers to base model {ref['model']!r}, which is not installed") from None
    if expected != ref["sha256"]:
        raise WeightsError(f"{path} refers to base model {ref['model']!r} with sha256 {ref['sha256'][:16]}..., but "
                           f"the installed one has {str(expected)[:16]}...: reinstall compass")
    obj["state"]["base"] = load_weights(ref["model"])[0]["state"]["base"]


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
    if not path.exists():
        raise WeightsError(f"weights file {path} is missing; restore it with `git checkout -- {path.name}` "
                           f"in {path.parent} (or reinstall compass)")
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        raise WeightsError(f"weights file {path} fails its sha256 check (damaged or modified); restore it with "
                           f"`git checkout -- {path}` or reinstall compass")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means the same thing to the user
        raise WeightsError(f"cannot read weights file {path}: {e.__class__.__name__}") from None
    if not isinstance(obj, dict) or obj.get("format") != WEIGHTS_FORMAT:
        raise WeightsError(f"{path} is not a compass weights file (format {WEIGHTS_FORMAT})")
    _attach_base(obj, path)
    entry = manifest()["models"].get(str(model)) if expected is not None else None
    return obj, (entry or {}).get("id", digest)


def build_codec(obj: dict, module: str = "base") -> MeanScaleHyperprior:
    codec = MeanScaleHyperprior(CodecConfig(**obj["config"]["codec"]))
    codec.load_state_dict(state_from_weights(obj, module))
    return codec.eval()


def build_scalable(obj: dict, predictor: str = "liff") -> ScalableCodec:
    """The model of a weights object, as a ScalableCodec: a scalable model (predictor "bicubic" swaps LIFF for
    bicubic, the ablation), or a single-layer codec (no residual codec: it codes one layer)."""
    if "liff" not in obj["state"]:
        if predictor != "liff":
            raise ValueError(f"weights {obj.get('name')!r} hold a single-layer codec: it has no predictor to swap")
        return ScalableCodec(build_codec(obj, "base"), None, None).eval()
    liff = None
    if predictor == "liff":
        liff = LIFF(LiffConfig.from_dict(obj["config"]["liff"]))
        liff.load_state_dict(state_from_weights(obj, "liff"))
    elif predictor != "bicubic":
        raise ValueError(f"predictor must be 'liff' or 'bicubic', not {predictor!r}")
    return ScalableCodec(build_codec(obj, "base"), build_codec(obj, "residual"), liff).eval()
