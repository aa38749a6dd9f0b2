"""Training: recipes, data, stages and the resumable loop (`python -m compass.train`, `compass train`)."""
from .config import load_recipe, recipe_names
from .loop import train

__all__ = ["load_recipe", "recipe_names", "train"]
