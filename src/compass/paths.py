"""Where the shared data lives: `$COMPASS_SHARED`, else `../shared` beside the repository (or the cwd)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    env = os.environ.get("COMPASS_SHARED")
    if env:
        return Path(env)
    for base in (REPO_ROOT, Path.cwd()):
        cand = (base / ".." / "shared").resolve()
        if cand.is_dir():
            return cand
    return (Path.cwd() / ".." / "shared").resolve()


def data_dir(name: str) -> Path:
    """A data set folder under the shared data root, e.g. data_dir("kodak")."""
    return shared_dir() / "data" / name


def portable(path: str | Path) -> str:
    """`path` as it may be written into committed results: under the shared root as `<shared>/...`, under the
    repository relative to it, anything else as given (a machine's absolute path must not end up in docs)."""
    p = Path(path).resolve()
    for root, shown in ((shared_dir().resolve(), "<shared>"), (REPO_ROOT, ".")):
        if p == root or root in p.parents:
            rel = p.relative_to(root).as_posix()
            return shown if rel == "." else f"{shown}/{rel}"
    return str(path)
