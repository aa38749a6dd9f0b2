"""Training recipes: TOML files; a name ("cpu", "paper") resolves to the recipes shipped in the package."""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parents[1] / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def load_recipe(name_or_path: str) -> dict:
    """Load a recipe by name (shipped) or by path to a TOML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise FileNotFoundError(f"unknown recipe {name_or_path!r}; known: {', '.join(recipe_names())}")
    with open(path, "rb") as f:
        return tomllib.load(f)


def stage_config(recipe: dict, stage: str) -> dict:
    try:
        return copy.deepcopy(recipe["stages"][stage])
    except KeyError:
        raise KeyError(f"recipe {recipe.get('name')!r} has no stage {stage!r}; it has {list(recipe.get('stages', {}))}") from None
