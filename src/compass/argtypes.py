"""Argument types of the command line: each parses one option's text or raises argparse.ArgumentTypeError."""
from __future__ import annotations

import argparse


def floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def count(low: int, what: str):
    """An argument type: an integer of at least `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what} >= {low}, got {text!r}")
        return value

    return parse


steps = count(0, "a step count")
positive = count(1, "a whole number")


def sizes(text: str) -> list[tuple[int, int]]:
    """'192x128,384x256' (width x height, as image sizes are usually written) -> [(h, w), ...]."""
    out = []
    for t in text.split(","):
        try:
            w, h = (int(v) for v in t.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes are WIDTHxHEIGHT, got {t!r}") from None
        out.append((h, w))
    return out


def scales(text: str) -> list[float | tuple[float, float]]:
    """'1.6,2.4' or '1.5x2.0' (horizontal x vertical) per step between layers -> factors (vertical, horizontal)."""
    out = []
    for t in text.split(","):
        try:
            parts = [float(v) for v in t.lower().split("x")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"scales are F or FxxFy, got {t!r}") from None
        if len(parts) == 1:
            out.append(parts[0])
        elif len(parts) == 2:
            out.append((parts[1], parts[0]))
        else:
            raise argparse.ArgumentTypeError(f"scales are F or FxxFy, got {t!r}")
    return out


def byte_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a byte count, not {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"a byte count must be positive, not {n}")
    return n


def byte_counts(text: str) -> list[int]:
    return [byte_count(t) for t in text.split(",")]


def shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/2, not {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, not {text!r}")
    return i, n


def widths(text: str) -> list[int]:
    try:
        widths = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths in pixels, e.g. 480,960, got {text!r}")
    return widths


def size_or_none(text: str) -> tuple[int, int] | None:
    """'3840x2160' (width x height) -> (2160, 3840); 'none' -> None."""
    if text.lower() == "none":
        return None
    found = sizes(text)
    if len(found) != 1:
        raise argparse.ArgumentTypeError(f"expected one WIDTHxHEIGHT, got {text!r}")
    return found[0]
