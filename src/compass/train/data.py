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


class TensorCropSampler:
    """Random crops with flips cut on the training device from photos held there as uint8.

    The same interface as CropSampler (`rng` for host-side decisions, `batch`, `state`), but the crop positions,
    picks and flips are drawn by a generator on the device and gathered in one indexing op, so a GPU step makes
    no host copy and never waits for the host. Images of any size are kept in one flat HWC buffer.
    """

    def __init__(self, files: list[Path], crop: int, seed: int, device: torch.device):
        images = [_load(f, crop) for f in files]
        self.device = torch.device(device)
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        shapes = np.array([im.shape[:2] for im in images], np.int64)
        offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1] * 3)[:-1]])
        self.pixels = torch.from_numpy(np.concatenate([im.reshape(-1) for im in images])).to(self.device)
        self.heights = torch.from_numpy(shapes[:, 0]).to(self.device)
        self.widths = torch.from_numpy(shapes[:, 1]).to(self.device)
        self.offsets = torch.from_numpy(offsets).to(self.device)

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "gen": self.gen.get_state()}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"].cpu())  # a checkpoint loaded onto the GPU holds it there

    def batch(self, size: int, crop: tuple[int, int] | None = None) -> torch.Tensor:
        """(size, 3, ch, cw) float in [0, 1] on the device."""
        ch, cw = crop or (self.crop, self.crop)
        dev, g = self.device, self.gen
        pick = torch.randint(len(self.heights), (size,), generator=g, device=dev)
        h, w, off = self.heights[pick], self.widths[pick], self.offsets[pick]
        u = torch.rand(size, 4, generator=g, device=dev)
        y0 = (u[:, 0] * (h - ch + 1)).long().clamp_max(h - ch)
        x0 = (u[:, 1] * (w - cw + 1)).long().clamp_max(w - cw)
        rows, cols = torch.arange(ch, device=dev), torch.arange(cw, device=dev)
        rows = torch.where(u[:, 2:3] < 0.5, rows, ch - 1 - rows) + y0[:, None]  # (size, ch), vertical flips
        cols = torch.where(u[:, 3:4] < 0.5, cols, cw - 1 - cols) + x0[:, None]  # horizontal flips
        index = (off[:, None, None] + (rows[:, :, None] * w[:, None, None] + cols[:, None, :]) * 3)[:, None]
        index = index + torch.arange(3, device=dev)[None, :, None, None]  # (size, 3, ch, cw)
        return self.pixels[index].float().div_(255)


def make_sampler(files: list[Path], crop: int, seed: int, device: torch.device, on_device: bool):
    """The training crop sampler: on the training device (`data.on_device`), or on the host."""
    return TensorCropSampler(files, crop, seed, device) if on_device else CropSampler(files, crop, seed)
