"""Memory figures of the running process, for the fuzzer's and the benchmark's per-case budgets (Linux /proc;
getrusage where it is missing)."""
from __future__ import annotations

import resource
import sys
from pathlib import Path


def status_mb(field: str, default: float | None = None) -> float | None:
    """A figure of /proc/self/status in MiB: VmRSS (resident), VmHWM (its peak), VmSize (address space);
    `default` where there is no /proc."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return default
    return next((int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith(field + ":")), default)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM; getrusage where /proc is missing)."""
    peak = status_mb("VmHWM")
    if peak is None:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return peak


def reset_peak() -> None:
    """Set VmHWM back to the current resident size, so that it measures what comes next alone (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
