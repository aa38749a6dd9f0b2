"""The fuzz worker: a child process (`procs.Child`) that encodes the corpus, then decodes or loads each case sent
to it and judges the outcome, under a memory limit; `Worker` drives it from the fuzzing process."""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from .. import bitstream
from ..errors import CompassError
from ..procs import Child, Died, Hung
from ..procstat import reset_peak, status_mb
from .cases import LOADERS
from .format import CORPUS, FAILURES, Case, flip, image
from .hostile import EVIL, Evil

TINY = "tiny"  # a model spec "tiny:SEED": a tiny random-weight model built on the fly


def _tiny_weights(path: Path, seed: int) -> Path:
    """A tiny random-weight scalable model whose latents use many values, tables and escapes (as the tests')."""
    from ..models import random_model, save

    save(random_model("tiny", seed, spread=True), "compass-fuzz-tiny", path)
    return path


def weights_for(spec: str, workdir: str):
    """A model spec as `Compass` takes it; "tiny:SEED" is built (once) into `workdir`."""
    if not spec.startswith(TINY + ":"):
        return spec
    seed = int(spec[len(TINY) + 1:])
    path = Path(workdir) / f"tiny-{seed}.pt"
    return path if path.exists() else _tiny_weights(path, seed)


def encode_corpus(codecs: list) -> list[tuple[int, bytes]]:
    """(model index, file) for every `CORPUS` entry encoded by every codec (`Compass`), in that order."""
    return [(m, c.encode(image(h, w, seed), **opts)) for m, c in enumerate(codecs) for h, w, seed, opts in CORPUS]


def _forge(codec, data: bytes) -> bytes:
    """`data` with each chunk's decoder check set to what `codec` decodes from it (and chunk CRCs recomputed), up
    to the first chunk that does not decode: that one and those above keep their checks, for `layers` to refuse."""
    from ..entropy import CodingError
    from ..scalable import LayerCode

    header, offset = bitstream.read_header(data, codec.max_pixels)
    chunks = bitstream.read_chunks(data, header, offset, len(header.layers) - 1)
    codes = [LayerCode(list(c.strings), c.check, l.intra) for c, l in zip(chunks, header.layers)]
    sizes, qs = [(l.height, l.width) for l in header.layers], [l.quality for l in header.layers]
    checks = [c.check for c in chunks]
    try:
        for k, (_, check) in enumerate(codec.model.decompress_iter(codes, sizes, qs)):
            checks[k] = check
    except CodingError:
        pass
    return bitstream.write(header, [bitstream.Chunk(c.strings, k) for c, k in zip(chunks, checks)], codec.max_pixels)


def decode_case(case: Case, codecs: list, refs: list) -> dict:
    """Decode one case (the API path, then `info`) and judge it; never raises."""
    import tracemalloc

    import numpy as np

    codec = codecs[case.model]
    codec.max_pixels = case.max_pixels
    got = []
    data = case.data
    reset_peak()
    rss0 = status_mb("VmRSS", 0.0)
    if case.traced:
        tracemalloc.start()
    start = time.process_time()

    def decode():
        nonlocal data
        data = _forge(codec, data) if case.forge else data
        for img in codec.decode_iter(data):
            got.append(img)

    outcome, message, problems = _attempt(decode)
    outcome = "decoded" if outcome == "ok" else outcome
    if outcome in _LAYER_ERRORS and not message.startswith("layer "):
        problems.append("the message does not name the damaged layer")
    seconds = time.process_time() - start
    if case.traced:
        allocated = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if outcome == "LimitExceeded" and allocated > 1 << 20:
            problems.append(f"{allocated} bytes allocated before the refusal")
    try:
        bitstream.info(case.data, case.max_pixels)
    except CompassError:
        pass
    except Exception as e:
        problems.append(f"info raised {type(e).__name__}: {e}")
    if got:
        header = bitstream.read_header(data, case.max_pixels)[0]
        for k, img in enumerate(got):
            want = (header.layers[k].height, header.layers[k].width, 3)
            if img.dtype != np.uint8 or img.shape != want:
                problems.append(f"layer {k} is {img.dtype} {img.shape}, the header says uint8 {want}")
    ref = refs[case.base] if case.base is not None else None
    equal = ref is not None and all(k < len(ref) and np.array_equal(a, ref[k]) for k, a in enumerate(got))
    if case.same and got and not equal:
        problems.append("a decoded layer differs from the original file's decode")
    if outcome == "decoded":
        outcome = "identical" if equal else "differs"
    if case.expect and outcome not in FAILURES and not (
            outcome in case.expect or ("error" in case.expect and outcome not in ("identical", "differs"))):
        problems.append(f"expected {' or '.join(case.expect)}")
    peak = status_mb("VmHWM", 0.0)
    return {"outcome": outcome, "message": " ".join(message.split())[:300], "layers": len(got),
            "seconds": seconds, "rss_growth_mb": peak - rss0, "peak_mb": peak, "problems": problems}


_LAYER_ERRORS = ("ChunkError", "ChunkCRCMismatch", "TruncatedChunk", "CodingError", "DecodeMismatch")


def _attempt(call) -> tuple[str, str, list[str]]:
    """Run `call()`: ("ok", "", []), or what it raised: a CompassError's class name, "memory" or "crash"; the
    message; and a problem when a CompassError's message is not one line."""
    from ..api import OutOfMemory

    try:
        call()
        return "ok", "", []
    except OutOfMemory as e:  # a CompassError, but over the worker's memory budget
        return "memory", str(e), []
    except CompassError as e:
        message = str(e)
        return type(e).__name__, message, [] if message and "\n" not in message else [f"message is not one line: "
                                                                                       f"{message!r}"]
    except MemoryError as e:
        return "memory", f"MemoryError: {e}", []
    except BaseException as e:  # a Rust panic is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        message = f"{type(e).__name__}: {e}"
        return "memory" if "allocate" in message or "out of memory" in message else "crash", message, []


def serve(channel, specs: list[str], workdir: str, memory_mb: int) -> None:
    """Load the models, encode the corpus, decode it for reference, then judge the cases sent until None."""
    import resource

    import torch

    from ..api import Compass
    from ..weights import load_weights, resolve

    torch.set_num_threads(1)
    models = [weights_for(spec, workdir) for spec in specs]
    codecs = [Compass(m) for m in models]
    corpus = encode_corpus(codecs)
    refs = [codecs[m].decode_all(data) for m, data in corpus]
    objects = [{k: v for k, v in load_weights(m)[0].items() if k != "source"} for m in models]
    files = [resolve(m)[0] for m in models]
    vm = status_mb("VmSize", 0.0)
    if vm:
        resource.setrlimit(resource.RLIMIT_AS, (int((vm + memory_mb) * 2**20), resource.RLIM_INFINITY))
    channel.send({"corpus": corpus, "models": [f"{c.name} ({c.model_id.hex()})" for c in codecs],
                  "rss_mb": status_mb("VmRSS", 0.0)})
    while (case := channel.recv()) is not None:
        if case.category in LOADERS:
            with tempfile.TemporaryDirectory(dir=workdir) as folder:
                channel.send(load_case(case, objects[case.model], files[case.model], Path(folder)))
        else:
            channel.send(decode_case(case, codecs, refs))


def _edited(obj, edit: tuple, marker: str):
    """A copy of `obj` (a weights object or checkpoint) changed by the ("set" | "add" | "del" | "whole", path,
    value) steps of `edit`; "*" in a path is the first key there, `EVIL` an `Evil`, "<tensor>" a small tensor."""
    import copy

    import torch

    def value_of(v):
        if isinstance(v, list):
            return [value_of(x) for x in v]
        return Evil(marker) if v == EVIL else torch.zeros(3) if v == "<tensor>" else v

    obj = copy.deepcopy(obj)
    for op, path, value in edit:
        if op not in ("set", "add", "del", "whole"):
            continue  # byte damage, after saving
        if op == "whole" or not path:
            obj = value_of(value)
            continue
        node = obj
        for key in path[:-1]:
            node = node[sorted(node)[0] if key == "*" else key]
        key = sorted(node)[0] if path[-1] == "*" else path[-1]
        if op == "del":
            del node[key]
        else:
            node[key] = node[key] + value if op == "add" else value_of(value)
    return obj


def _saved(obj, edit: tuple, path: Path) -> None:
    """torch.save `obj` to `path`, then apply the byte damage of `edit` ("cut" at a fraction, "flip" 8 bits,
    "junk": as many random bytes, each seeded by its value)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    for op, _, value in edit:
        if op == "cut":
            data = data[:int(len(data) * value)]
        elif op == "flip":
            data = flip(random.Random(value), data, 8)
        elif op == "junk":
            data = random.Random(value).randbytes(len(data))
    path.write_bytes(data)


def _checkpoint_of(weights: dict) -> dict:
    """A training checkpoint as `compass.train.loop` saves it, holding `weights`' base codec."""
    import numpy as np
    import torch

    return {"format": "compass-checkpoint/1", "recipe": {"name": "fuzz"}, "stage": "base", "step": 7,
            "elapsed_s": 1.5, "modules": {"base": weights["state"]["base"]},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}, "aux_optimizer": None,
            "sampler": [np.random.default_rng(7).bit_generator.state], "generator": torch.Generator().get_state(),
            "torch_rng": torch.get_rng_state(), "init_from": None, "sources": {}, "history": [], "device": "cpu"}


def load_case(case: Case, base: dict, weights_file: Path, folder: Path) -> dict:
    """Judge one loader case in `folder`: `Compass` on an edited weights file or through a manifest, or the
    checkpoint loaders on an edited checkpoint. Never raises."""
    from .. import weights
    from ..api import Compass
    from ..train.loop import history_of
    from ..models import module_state

    marker = folder / "code-ran"
    path = folder / ("manifest.json" if case.category == "manifest" else "w.pt")
    if case.category == "manifest":
        digest = weights.sha256_file(weights_file)
        path.write_bytes(case.data.replace(b"<sha256>", digest.encode()).replace(b"<SHA256>", digest.upper().encode()))
        (folder / "w.pt").symlink_to(weights_file)
        saved = weights.PRETRAINED_DIR, weights.MANIFEST
        weights.PRETRAINED_DIR, weights.MANIFEST = folder, path

        def load():
            try:
                Compass("fuzz")
            finally:
                weights.PRETRAINED_DIR, weights.MANIFEST = saved
    else:
        obj = _checkpoint_of(base) if case.category == "checkpoint" else base
        _saved(_edited(obj, case.edit, str(marker)), case.edit, path)

        def load():
            if case.category == "checkpoint":
                history_of(path)
                module_state(path, "base")
            else:
                Compass(path)

    reset_peak()
    rss0 = status_mb("VmRSS", 0.0)
    start = time.process_time()
    outcome, message, problems = _attempt(load)
    seconds = time.process_time() - start
    outcome = "loaded" if outcome == "ok" else outcome
    if marker.exists():
        problems.append("loading ran code from the file")
    if outcome == "WeightsError" and str(folder) not in message:
        problems.append("the message does not name the file")
    if case.expect and outcome not in FAILURES and outcome not in case.expect:
        problems.append(f"expected {' or '.join(case.expect)}")
    peak = status_mb("VmHWM", 0.0)
    return {"outcome": outcome, "message": " ".join(message.split())[:300], "layers": 0, "seconds": seconds,
            "rss_growth_mb": peak - rss0, "peak_mb": peak, "problems": problems}


class Worker:
    """The worker process (`serve`), restarted after a hang or a death."""

    def __init__(self, specs, workdir, memory_mb):
        self.args = (specs, workdir, memory_mb)
        self.child = None
        self.info = None

    def start(self) -> dict:
        """Start the worker; its models, corpus and memory after loading."""
        self.child = Child("compass.fuzz.worker:serve", *self.args)
        try:
            info = self.child.receive()
        except Died as e:
            self.stop()
            raise CompassError(f"fuzz worker: {e}" if e.error else
                               f"the fuzz worker died while starting (exit code {e.code})") from None
        if self.info is not None and info["corpus"] != self.info["corpus"]:
            raise CompassError("a restarted fuzz worker encoded another corpus: encoding is not deterministic")
        self.info = info
        return info

    def run(self, case: Case, timeout: float) -> dict:
        """The worker's verdict on `case`, or a hang after `timeout` CPU seconds (`procs.Hung`); the worker is
        then killed and restarted at the next case."""
        if self.child is None:
            self.start()
        try:
            return self.child.ask(case, timeout)
        except Hung as e:
            outcome, message, cpu = "hang", str(e), e.cpu
        except Died as e:
            outcome, message, cpu = "died", f"worker exited with code {e.code}", 0.0
        self.stop()
        return {"outcome": outcome, "message": message, "layers": 0, "seconds": cpu, "rss_growth_mb": 0.0,
                "peak_mb": 0.0, "problems": []}

    def stop(self) -> None:
        if self.child is not None:
            self.child.close()
            self.child = None
