"""compass: a neural spatially scalable image codec (COMPASS, Park, Lee, Kim, ICCV 2023).

One file holds an image at several resolutions; a reader decodes only the layers it needs.
`compass.encode`, `compass.decode` and `compass.Compass` load torch on first use, so importing the package
(or `compass.bitstream`, which is pure Python) stays cheap.
"""
__all__ = ["Compass", "decode", "encode", "extract", "info"]
__version__ = "0.1.0"

DEFAULT_MODEL = "compass-cpu-mini"  # the shipped models used when none is named (constants here: no torch import)
DEFAULT_SINGLE = "compass-cpu-single"
DEFAULT_QUALITY = 0.5  # q of every layer when none is given
DEFAULT_LAYER_MODE = "auto"  # one of limits.LAYER_MODES

_LAZY = {"Compass": "api", "decode": "api", "encode": "api", "extract": "bitstream", "info": "bitstream"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'compass' has no attribute {name!r}")
