"""A ScalableCodec from a fine-tune's checkpoint (finetune.py), for the measurements of evaluate.py."""
from __future__ import annotations

from compass.models import from_checkpoint, load_checkpoint
from compass.scalable import ScalableCodec


def load_checkpoint_model(path) -> ScalableCodec:
    m = from_checkpoint(load_checkpoint(path))
    m.update()  # entropy tables from the trained quantiles and scales
    return m
