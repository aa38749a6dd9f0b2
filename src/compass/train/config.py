"""Training recipes: TOML files; a name ("cpu", "paper") resolves to the recipes shipped in the package."""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parents[1] / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def load_recipe(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict:
    """Load a recipe by name (shipped) or by path to a TOML file.

    `extends = "other"` (a name or path) starts from that recipe: tables merge key by key, the extending file's
    values win, and the result no longer has `extends`.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise FileNotFoundError(f"unknown recipe {name_or_path!r}; known: {', '.join(recipe_names())}")
    if str(path) in _seen:
        raise ValueError(f"recipe {name_or_path!r} extends itself: {' -> '.join(_seen)}")
    with open(path, "rb") as f:
        recipe = tomllib.load(f)
    parent = recipe.pop("extends", None)
    if parent is None:
        return recipe
    return _merge(load_recipe(parent, (*_seen, str(path))), recipe)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def stage_config(recipe: dict, stage: str) -> dict:
    try:
        return copy.deepcopy(recipe["stages"][stage])
    except KeyError:
        raise KeyError(f"recipe {recipe.get('name')!r} has no stage {stage!r}; it has {list(recipe.get('stages', {}))}") from None
