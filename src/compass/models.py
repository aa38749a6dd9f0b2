"""The one place that builds models: from configs, from a weights file or a training checkpoint, or at random of a
named size for tests and benchmarks.

Every model is a `ScalableCodec`: a base codec, then a residual codec and a predictor (LIFF, or None for bicubic
upsampling); the single-layer codec is one without a residual codec. Its modules are named "base", "residual"
and "liff" in weights files and training checkpoints alike; `load_checkpoint` is the one place that reads the
older name of the base ("codec", in checkpoints written before 2026-12). Sizes live in the TOML recipes only
(`sizes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .codec import CodecConfig, MeanScaleHyperprior
from .liff import LIFF, LiffConfig
from .provenance import flatten
from .scalable import ScalableCodec
from .weights import WeightsError, codec_config, export, liff_config, load_weights, safe_load

OLD_NAMES = {"codec": "base"}  # a module's name in older checkpoints -> its name now


def sizes(name: str) -> tuple[CodecConfig, LiffConfig]:
    """The codec and LIFF configs of a recipe ("tiny", "cpu", "paper", a TOML path...)."""
    from .train.config import load_recipe  # here: compass.train imports this module

    recipe = load_recipe(name)
    return codec_config(recipe["codec"]), liff_config(recipe["liff"])


def build_codec(config: CodecConfig | dict) -> MeanScaleHyperprior:
    """A codec of `config` (a CodecConfig, or the dict a recipe or weights file holds, checked), untrained."""
    return MeanScaleHyperprior(config if isinstance(config, CodecConfig) else codec_config(config))


def build_liff(config: LiffConfig | dict) -> LIFF:
    """A LIFF of `config` (a LiffConfig, or the dict a recipe or weights file holds, checked), untrained."""
    return LIFF(config if isinstance(config, LiffConfig) else liff_config(config))


def build(configs: dict) -> ScalableCodec:
    """An untrained model of `configs` ({"codec": ..., "liff": ...}, as recipes and weights files hold them): the
    single-layer codec without a "liff" config, else base + residual codec + LIFF."""
    if "liff" not in configs:
        return ScalableCodec(build_codec(configs["codec"]), None, None)
    return ScalableCodec(build_codec(configs["codec"]), build_codec(configs["codec"]), build_liff(configs["liff"]))


def with_predictor(model: ScalableCodec, predictor: str) -> ScalableCodec:
    """`model` predicting with `predictor`: "liff" (as built) or "bicubic", bicubic upsampling in place of LIFF
    (the ablation: no LIFF module, in weights loaded for it and in a joint stage trained with it)."""
    if predictor not in ("liff", "bicubic"):
        raise ValueError(f"predictor must be 'liff' or 'bicubic', not {predictor!r}")
    if predictor == "bicubic":
        model.liff = None
    return model


def configs_of(model: ScalableCodec) -> dict:
    """The configs that rebuild `model` (`build(configs_of(m))`), as weights files store them."""
    configs = {"codec": model.base.config.to_dict()}
    if model.liff is not None:
        configs["liff"] = model.liff.config.to_dict()
    return configs


def modules_of(model: ScalableCodec) -> dict[str, nn.Module]:
    """`model`'s modules by the names weights files and checkpoints give them."""
    named = {"base": model.base, "residual": model.residual, "liff": model.liff}
    return {name: m for name, m in named.items() if m is not None}


def save(model: ScalableCodec, name: str, path: str | Path) -> str:
    """Write `model` as a weights file named `name` (`weights.export`); returns its sha256."""
    return export(modules_of(model), configs_of(model), name, path)


@dataclass
class Loaded:
    """A model loaded from weights: the model (eval mode), its name, its id (sha256 hex, which files name) and its
    info (training record, flat: `compass.provenance`)."""

    model: ScalableCodec
    name: str
    id: str
    info: dict


def load(model: str | Path, predictor: str = "liff") -> Loaded:
    """The model of shipped weights (a registered name) or of a weights file (a path), sha256 and configs checked.

    `predictor` "bicubic" swaps LIFF for bicubic upsampling (the ablation); a single-layer codec has no
    predictor to swap."""
    obj, digest = load_weights(model)
    configs = obj["config"]
    if "liff" not in obj["state"]:
        if predictor != "liff":
            raise ValueError(f"weights {obj['name']!r} hold a single-layer codec: it has no predictor to swap")
        configs = {"codec": configs["codec"]}
    m = build(configs)
    if "liff" in configs:
        with_predictor(m, predictor)
    for name, module in modules_of(m).items():
        _load_state(module, weights_state(obj, name), f"weights file {obj['source']}", name)
    return Loaded(m.eval(), obj["name"], digest, flatten(obj.get("info", {})))


def weights_state(obj: dict, name: str) -> dict:
    """fp32 state dict of module `name` of a loaded weights object."""
    try:
        state = obj["state"][name]
    except KeyError:
        raise WeightsError(f"weights file {obj.get('source', obj.get('name'))} has no module {name!r}") from None
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def _load_state(module: nn.Module, state: dict, where: str, name: str) -> None:
    """Load `state` into `module`; WeightsError naming `where` when it does not fit the module's config."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:  # "Error(s) in loading state_dict ...:" then one line per kind of misfit
        detail = " ".join(str(e).splitlines()[1:2]).strip()[:200]
        raise WeightsError(f"{where}: module {name!r} does not fit its config ({detail})") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A training checkpoint (tensors and plain data only, `weights.safe_load`), its modules under today's names:
    the one read of older checkpoints, which call the base codec "codec"."""
    ck = safe_load(path, map_location)
    if isinstance(ck, dict) and isinstance(ck.get("modules"), dict):
        ck["modules"] = {OLD_NAMES.get(k, k): v for k, v in ck["modules"].items()}
    return ck


def from_checkpoint(ck: dict, single: bool = False) -> ScalableCodec:
    """The model a training checkpoint (`load_checkpoint`) holds, in eval mode: its recipe's single-layer codec
    (`single`, a base stage's) or its scalable model (a joint stage's)."""
    recipe = ck["recipe"]
    model = build({"codec": recipe["codec"]} if single else recipe)
    if not single:
        with_predictor(model, ck.get("stage_config", {}).get("predictor", "liff"))
    for name, module in modules_of(model).items():
        module.load_state_dict(ck["modules"][name])
    return model.eval()


def module_state(source: str | Path, *names: str) -> dict:
    """State dict of the first of modules `names` that `source` holds: a training checkpoint, or weights (a
    registered name or a weights file). What `train --init` and a joint stage's `*_from` read."""
    if Path(source).exists():
        ck = load_checkpoint(source)
        if "modules" in ck:
            held = ck["modules"]
            for name in names:
                if name in held:
                    return held[name]
            raise KeyError(f"{source} has none of {names}; it has {sorted(held)}")
    obj = load_weights(source)[0]
    for name in names:
        if name in obj["state"]:
            return weights_state(obj, name)
    raise KeyError(f"{source} has none of {names}; it has {sorted(obj['state'])}")


def random_model(size: str = "tiny", seed: int = 0, single: bool = False, spread: bool = False) -> ScalableCodec:
    """A model of the recipe `size`'s widths with random weights (eval mode; entropy tables not yet built).

    Each module starts from its own seed (base `seed`, residual `seed + 1`, LIFF `seed`). `spread` scales the
    last layers of g_a (x60), h_a (x100) and h_s (x30): a random codec's latents are otherwise near zero (every
    symbol 0, every scale in the smallest table), which would let most coding bugs pass; spread, they take many
    values and table levels, and some symbols the escape path."""
    codec_cfg, liff_cfg = sizes(size)

    def codec(s: int) -> MeanScaleHyperprior:
        torch.manual_seed(s)
        m = build_codec(codec_cfg).eval()
        if spread:
            with torch.no_grad():
                for part, gain in ((m.g_a, 60), (m.h_a, 100), (m.h_s, 30)):
                    part.convs[-1].weight.mul_(gain)
        return m

    base = codec(seed)
    if single:
        return ScalableCodec(base, None, None).eval()
    residual = codec(seed + 1)
    torch.manual_seed(seed)
    return ScalableCodec(base, residual, build_liff(liff_cfg)).eval()
