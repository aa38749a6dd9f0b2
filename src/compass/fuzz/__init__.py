"""Fuzzing compass with hostile input: every case must end in a decode, a load or a one-line `CompassError`.

    nice -n 19 compass fuzz --cases 10000 --seed 0          # docs/reliability.md has the results

Valid files are encoded by every model under test (default: two tiny random-weight models built on the fly,
plus the shipped compass-cpu when the manifest registers it), then damaged in the seeded ways of `cases.CATEGORIES`.
A worker process decodes each case with `Compass.layers` (the API path) and `bitstream.info` (the header path),
one at a time, under a per-case deadline (a hang kills and restarts the worker) and an address-space limit
(RLIMIT_AS); it reports the outcome, the time and how much the case raised its peak RSS. The same worker loads
edited weights files, manifests and training checkpoints (the "weights", "manifest" and "checkpoint" cases),
and the "cli" cases run `compass encode|decode|info|extract|train` as subprocesses, each in a fresh folder.

The first cases cut the first file at every byte; then come the seeds, the hostile inputs of issue 22 (the
command line and the loaders); the others draw a category, a file and a damage at random.
A case fails when decoding raises anything but a `CompassError` with a one-line message (one naming the layer,
for a damaged layer), hangs, runs out of memory or kills the worker; when it yields a layer of another shape
than the header declares; when it yields a layer that differs from the original file's decode although the
damage cannot legitimately change it (the decoder check must catch any change of the decoded symbols; only
forged checks, edited header fields and chunks that another layer of the same latent shape could hold may
change the image); or when it ends otherwise than its category requires (e.g. a declared size over
`max_pixels` must be a `LimitExceeded`, raised before anything is allocated). A loader case fails when loading
runs code from the file or raises anything but a WeightsError naming the file; a command-line case, by the
rules of `commands.run_command`. Case i of seed s depends only on (s, i, the models): `--only i` reproduces it.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report

CASES, TIMEOUT, MEMORY_MB = 2000, 10.0, 2048  # `run`'s defaults, and `compass fuzz`'s


def add_arguments(p) -> None:
    """`compass fuzz`'s options (an argparse parser)."""
    p.add_argument("--cases", type=int, default=CASES, help=f"number of cases (default {CASES})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", "--weights", dest="models", action="append",
                   help="model under test, repeatable (default: two tiny random-weight models, and compass-cpu "
                        "when it is registered)")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds a case may take before it is a hang")
    p.add_argument("--memory-mb", type=int, default=MEMORY_MB, help="address space a case may add (MiB)")
    p.add_argument("--only", type=int, nargs="+", metavar="CASE", help="run only these cases, with details")


def main(args) -> int:
    """`compass fuzz`: run, print the report; exit code 1 when a case failed."""
    report = run(args.cases, args.seed, args.models, args.timeout, args.memory_mb, args.only, progress=500)
    print(report.text())
    return 1 if report.failures else 0


def run(cases: int = CASES, seed: int = 0, models: list[str] | None = None, timeout: float = TIMEOUT,
        memory_mb: int = MEMORY_MB, only: list[int] | None = None, progress: int = 0) -> Report:
    """Run cases 0..cases-1 of `seed` (or just `only`) and return the report.

    `models`: weights paths or registered names, each decoding its own files; default two tiny random-weight
    models ("tiny:0", "tiny:1") and compass-cpu when registered. `timeout`: seconds per case before it counts as
    a hang. `memory_mb`: address space the worker may add to what it holds after loading. `progress`: print a
    line to stderr every that many cases.
    """
    from .cases import make_case
    from .commands import run_command
    from .format import split
    from .report import Report
    from .worker import TINY, Worker, weights_for

    if models is None:
        models = [f"{TINY}:0", f"{TINY}:1"] + (["compass-cpu"] if _registered("compass-cpu") else [])
    if len(models) < 2:
        raise ValueError("fuzzing needs at least two models (files of one are foreign to the other)")
    with tempfile.TemporaryDirectory(prefix="compass-fuzz-") as workdir:
        pool = Worker(models, workdir, memory_mb)
        try:
            info = pool.start()
            corpus = [split(m, data) for m, data in info["corpus"]]
            report = Report(seed, info["models"], baseline_mb=info["rss_mb"])
            start = time.perf_counter()
            with ThreadPoolExecutor(1) as cli:  # command lines run beside the worker: they wait on subprocesses
                pending = []
                for i in (only if only is not None else range(cases)):
                    case = make_case(seed, i, corpus)
                    if case.category == "cli":
                        weights = weights_for(models[case.model], workdir)
                        pending.append((case, cli.submit(run_command, case, workdir, weights, timeout, memory_mb)))
                    else:
                        report.add(case, pool.run(case, timeout), only is not None)
                    if progress and (i + 1) % progress == 0:
                        print(f"compass fuzz: {i + 1} cases, {len(report.failures)} failing, "
                              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                for case, verdict in pending:
                    report.add(case, verdict.result(), only is not None)
            report.seconds = time.perf_counter() - start
        finally:
            pool.stop()
    return report


def _registered(name: str) -> bool:
    """Whether the shipped manifest registers `name` (read here: `weights` needs torch; a manifest it cannot
    read registers nothing, and `Compass` says what is wrong with it)."""
    manifest = Path(__file__).resolve().parent.parent / "pretrained" / "manifest.json"
    try:
        return name in json.loads(manifest.read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
