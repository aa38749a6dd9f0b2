"""A ScalableCodec from a fine-tune's checkpoint (finetune.py), for the measurements of evaluate.py."""
from __future__ import annotations

import torch

from compass.codec import CodecConfig, MeanScaleHyperprior
from compass.liff import LIFF, LiffConfig
from compass.scalable import ScalableCodec
from compass.weights import safe_load


def load_checkpoint_model(path) -> ScalableCodec:
    ck = safe_load(path)
    recipe = ck["recipe"]
    cfg = CodecConfig(**recipe["codec"])
    m = ScalableCodec(MeanScaleHyperprior(cfg), MeanScaleHyperprior(cfg), LIFF(LiffConfig.from_dict(recipe["liff"])))
    m.base.load_state_dict(ck["modules"]["base"])
    m.residual.load_state_dict(ck["modules"]["residual"])
    m.liff.load_state_dict(ck["modules"]["liff"])
    m.eval()
    m.update()  # entropy tables from the trained quantiles and scales
    return m
