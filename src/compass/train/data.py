"""Training data: photos from a folder (never Kodak), held-out validation split, random crops and flips."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images in {root}")
    return files


def split(files: list[Path], val_count: int) -> tuple[list[Path], list[Path]]:
    """A fixed validation split: the `val_count` files with the smallest name hash (stable across machines)."""
    ranked = sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    val = set(ranked[:val_count])
    return [f for f in files if f not in val], [f for f in files if f in val]


def _load(path: Path, min_side: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if min(im.size) < min_side:
            s = min_side / min(im.size)
            im = im.resize((max(min_side, round(im.width * s)), max(min_side, round(im.height * s))), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


class CropSampler:
    """Random crops with flips from images held in memory as uint8 (decoded once)."""

    def __init__(self, files: list[Path], crop: int, seed: int):
        self.images = [_load(f, crop) for f in files]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def batch(self, size: int, crop: tuple[int, int] | None = None) -> torch.Tensor:
        """(size, 3, ch, cw) float in [0, 1]; crop (ch, cw) defaults to the sampler's square crop."""
        ch, cw = crop or (self.crop, self.crop)
        out = np.empty((size, ch, cw, 3), np.uint8)
        for i in range(size):
            img = self.images[self.rng.integers(len(self.images))]
            h, w = img.shape[:2]
            y, x = self.rng.integers(h - ch + 1), self.rng.integers(w - cw + 1)
            patch = img[y:y + ch, x:x + cw]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            out[i] = patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)


def validation_crops(files: list[Path], crop: int) -> torch.Tensor:
    """Centre crops of the validation images: a fixed batch, the same in every run."""
    out = []
    for f in files:
        img = _load(f, crop)
        h, w = img.shape[:2]
        y, x = (h - crop) // 2, (w - crop) // 2
        out.append(torch.from_numpy(img[y:y + crop, x:x + crop].copy()).permute(2, 0, 1))
    return torch.stack(out).float().div_(255)
