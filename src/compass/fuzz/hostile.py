"""Hostile input beyond damaged files: edited weights files, manifests and checkpoints for the loaders, and
command lines (`compass info|extract|encode|decode|train`) with their files; then the seeds, the hostile inputs
of issue 22, one case each."""
from __future__ import annotations

import functools
import json
import struct

from .. import bitstream, limits
from ..errors import CompassError
from .damage import DAMAGES
from .format import Sample, image, parse_chunk, png, raw_chunk, raw_header, split

# ---------------------------------------------------------------- loaders: weights, manifests, checkpoints

EVIL = "<code>"  # in an edit: an object whose unpickling runs code (`Evil`)
_INT_FIELDS = [("config", "codec", f) for f in ("N", "M", "levels")] + [
    ("config", "liff", f) for f in ("feat", "blocks", "convs", "growth")]
_BAD_INTS = [0, -1, 10**12, 2**63, limits.MODEL_CONFIG_MAX["blocks"] + 10**6, 1.5, "64", None, True, [8]]
_BAD_LAMBDAS = {"lambda_min": [0, -1.0, float("nan"), float("inf"), "0.01", None, 1.0],
                "lambda_max": [0, float("nan"), float("inf"), None, 1e-9]}


def _weights_file(rng, s: Sample, corpus):
    """The case model's weights object edited, saved and loaded by `Compass`: a config missing, out of bounds or
    of the wrong type, a module or tensor missing or replaced, a bad name or format tag, another object, one that
    runs code when unpickled, damaged bytes. It must load or be refused by a WeightsError naming the file."""
    kind = rng.choice(["config", "config", "lambda", "off by one", "missing", "state", "name", "whole", "code",
                       "bytes"])
    expect = ("WeightsError",)
    if kind == "config":
        path = rng.choice(_INT_FIELDS + [("config", "liff", "hidden")])
        value = rng.choice(_BAD_INTS if path[-1] != "hidden" else [[], [16] * 100, [10**9, 16], "16", None, 16])
        edit = (("set", path, value),)
    elif kind == "lambda":
        name = rng.choice(list(_BAD_LAMBDAS))
        edit = (("set", ("config", "codec", name), rng.choice(_BAD_LAMBDAS[name])),)
    elif kind == "off by one":  # within bounds, but not the shape of the stored tensors
        edit = (("add", rng.choice(_INT_FIELDS), rng.choice([-1, 1])),)
    elif kind == "missing":
        edit = (("del", rng.choice([("config",), ("config", "codec"), ("config", "liff"), ("config", "liff", "hidden"),
                                     ("state",), ("state", "base"), ("state", "residual"), ("state", "liff"),
                                     ("state", "base", "*"), ("name",), ("format",)]), None),)
    elif kind == "state":
        edit = (("set", rng.choice([("state", "base", "*"), ("state", "liff"), ("state", "residual", "extra"),
                                     ("state",)]), rng.choice([None, "x", 5, [1.0, 2.0], "<tensor>"])),)
    elif kind == "name":
        edit = (("set", ("name",), rng.choice(["", "\u00e9t\u00e9", "x" * 300, "two\nlines", 5, None])),)
    elif kind == "whole":
        edit = (("whole", (), rng.choice([[], "text", 5, None, {}, {"format": "compass-weights/1"}])),)
    elif kind == "code":
        edit = (("set", rng.choice([(), ("info",), ("config", "codec"), ("state", "base", "*"), ("extra",)]), EVIL),)
    else:
        edit, expect = (rng.choice([("cut", (), rng.random()), ("flip", (), rng.getrandbits(32)),
                                    ("junk", (), rng.getrandbits(32))]),), ("loaded", "WeightsError")
    return dict(variant=f"{kind}: {_describe(edit)}", data=b"", base=None, edit=edit, expect=expect)


def _manifest(rng, s: Sample, corpus):
    """A registry whose manifest.json names the case model's weights file as "fuzz": valid, or not JSON, or of
    another structure, an entry's "file" or "sha256" missing, null or wrong, a file outside its folder or missing.
    `Compass("fuzz")` must load, or be refused by a WeightsError naming the manifest or the weights."""
    entry = {"file": "w.pt", "sha256": "<sha256>", "kind": "scalable"}
    kind = rng.choice(["valid", "json", "structure", "file", "sha256"])
    doc, expect = {"models": {"fuzz": entry}}, ("WeightsError",)
    if kind == "valid":
        expect = ("loaded",)
    elif kind == "structure":
        doc = rng.choice([[], "models", 5, None, {}, {"models": []}, {"models": {"fuzz": []}},
                          {"models": {"fuzz": None}}, {"models": 5}])
    elif kind == "file":
        doc = {"models": {"fuzz": {**entry, "file": rng.choice([None, "", ".", "..", "../w.pt", "/etc/passwd",
                                                                 "sub/w.pt", 5, ["w.pt"], "missing.pt"])}}}
    elif kind == "sha256":
        value = rng.choice([None, "", "abc", "<SHA256>", "0" * 64, 5, "<drop>"])
        doc = {"models": {"fuzz": {**{k: v for k, v in entry.items() if k != "sha256"},
                                   **({} if value == "<drop>" else {"sha256": value})}}}
    text = json.dumps(doc)
    if kind == "json":
        text = rng.choice([text[:rng.randrange(1, len(text))], text.replace('"', "'"), text + "}", "{models: {}}"])
    data = text.encode() if rng.random() < 0.9 or kind == "valid" else b"\xff\xfe" + text.encode()
    return dict(variant=f"{kind}: {data[:70]!r}", data=data, base=None, expect=expect)


def _checkpoint(rng, s: Sample, corpus):
    """A training checkpoint (its types: tensors, numpy RNG state, plain data) for `history_of` and
    `module_state`, the loaders of `compass train --init` and `--resume`: valid, with an object that runs
    code when unpickled somewhere in it, or damaged. It must load, or be refused by a WeightsError; no code runs."""
    kind = rng.choice(["valid", "code", "code", "bytes"])
    if kind == "valid":
        edit, expect = (), ("loaded",)
    elif kind == "code":
        path = rng.choice([(), ("history",), ("sampler",), ("modules", "base", "*"), ("recipe", "name"), ("extra",)])
        edit, expect = (("set", path, EVIL if path != ("history",) else [{"steps": 1}, EVIL]),), ("WeightsError",)
    else:
        edit, expect = (rng.choice([("cut", (), rng.random()), ("flip", (), rng.getrandbits(32))]),), ("loaded",
                                                                                                     "WeightsError")
    return dict(variant=f"{kind}: {_describe(edit) or 'as saved'}", data=b"", base=None, edit=edit, expect=expect)


def _describe(edit: tuple) -> str:
    """`edit` in words, for the report."""
    saved = {"cut": "cut at {:.3f} of the saved bytes", "flip": "8 bits of the saved bytes flipped (seed {})",
             "junk": "random bytes as long as the saved ones (seed {})"}
    return "; ".join(saved[op].format(value) if op in saved else f"{op} {'.'.join(map(str, path)) or 'the object'}"
                     + ("" if value is None else f" = {value!r:.40}") for op, path, value in edit)


# ---------------------------------------------------------------- the command line

_DECODER = ("truncate", "bitflip", "header-bytes", "header-fields", "limits", "layer-count", "chunks", "payload",
            "garbage", "trailing")  # the categories whose files `_cli` hands to the command line


def _cli(rng, s: Sample, corpus):
    """A damaged file of another category given to `compass info` or `extract` (commands that need no torch, so
    cheap), from a file or through a pipe. Exit code and output must be what the API says of the same bytes."""
    category = rng.choice(_DECODER)
    data = bytes(DAMAGES[category][0](rng, s, corpus)["data"])
    fifo = rng.random() < 0.1
    if rng.random() < 0.5:
        try:
            bitstream.read_header(data)
            expect = (0,)
        except CompassError:
            expect = (2,)
        return _command(f"info of {category}{' via a pipe' if fifo else ''}", ["info", "{in}"], data, expect,
                        input="fifo" if fifo else "file")
    layer = rng.randrange(3)
    try:
        out = bitstream.extract(data, layer)
    except CompassError:
        out = None
    return _command(f"extract --layer {layer} of {category}{' via a pipe' if fifo else ''}",
                    ["extract", "{in}", "--layer", str(layer), "-o", "out.cmp"], data, (2,) if out is None else (0,),
                    input="fifo" if fifo else "file", checks=[("equals", "out.cmp", out)])


def _command(variant: str, argv: list[str], data: bytes = b"", expect=(2,), **spec) -> dict:
    """The fields of a "cli" case: `compass ARGV` run by `commands.run_command` in a fresh folder, "{in}" the input
    written there from `data` (as spec["input"] says: "file", "fifo", "none", "link:TARGET" or "sparse"), "{w}" the
    weights of the case's model; `expect`: the exit codes allowed. Other keys: "name" (the input's file name),
    "files" ({name: bytes} written first), "setup" ([(step, name)]: "mode600", "node", "fifo", "stale"),
    "writes" (files a failing command may still write), "sigint" (seconds after torch is loaded), "closed"
    (stdout's reader gone), "checks" (see `commands.run_command`)."""
    return dict(category="cli", variant=variant, data=data, base=None, cli={"argv": argv, "expect": expect, **spec})




_RECIPE = """name = "fuzz"
seed = 1
[codec]
N = 8
M = 12
levels = 3
[liff]
feat = 8
blocks = 1
convs = 2
growth = 4
hidden = [16, 16]
[data]
train = "photos"
val_count = 1
val_crop = 16
[train]
checkpoint_minutes = 0
log_every = 1
val_every = 1
clip = 1.0
aux_lr = 1e-3
[stages.base]
steps = 1
batch = 1
crop = 16
lr = 1e-3
"""


def seeds(corpus: list[Sample]) -> tuple[dict, ...]:
    """The hostile inputs of issue 22, one case each (cases n .. n + len - 1 after the n cuts of the first file):
    the command line and the loaders, where `make_case`'s random draws reach them rarely or not at all."""
    return _seeds_of(corpus[0].model, corpus[0].data, corpus[2].data)


@functools.lru_cache(maxsize=4)
def _seeds_of(model: int, small_data: bytes, three_data: bytes) -> tuple[dict, ...]:
    import pickle

    small, three = split(model, small_data), split(model, three_data)  # a 32x24 file in 2 layers, 56x40 in 3
    evil = pickle.dumps(Evil("code-ran"))  # a plain pickle, which torch's full unpickler reads as a checkpoint
    photos = {f"photos/{i}.png": png(image(24, 32, i + 10)) for i in range(3)}
    photo = png(image(40, 56, 3))
    encode = ["encode", "{in}", "out.cmp", "--weights", "{w}", "--quiet"]
    nothing = [("equals", "out.cmp", None)]
    rest = b"".join(three.chunks)
    head, check = small.data[:len(small.head) + len(small.chunks[0])], parse_chunk(small.chunks[1])[0]
    random_layer1 = head + raw_chunk(check, [bytes(range(37, 137)), bytes(range(200, 7, -3))])
    damaged_top = three.data[:-1]
    return (
        # 1: code in a checkpoint left as RUN_DIR/checkpoint.pt for `train --resume`, in weights, and in a checkpoint
        # for `train --init` (`history_of` and `module_state`, the "checkpoint" cases)
        _command("train --resume, evil checkpoint.pt", ["train", "recipe.toml", "--run-dir", "run", "--resume"],
                 input="none", files={"recipe.toml": _RECIPE.encode(), **photos, "run/checkpoint.pt": evil},
                 checks=[("absent", "code-ran"), ("stderr", "refused")]),
        dict(category="weights", variant="code: the whole object", data=b"", base=None, expect=("WeightsError",),
             edit=(("set", (), EVIL),)),
        dict(category="checkpoint", variant="code: in its history", data=b"", base=None, expect=("WeightsError",),
             edit=(("set", ("history",), [EVIL]),)),
        # 2: info of a truncated file, of a 4 GiB chunk length, of 16 layers declared with 3 chunks
        _command("info of a file cut inside layer 1", ["info", "{in}"], three.data[:len(three.head) + len(
            three.chunks[0]) + 5], (0,), checks=[("lines", 3)]),
        _command("info of a 4 GiB chunk length", ["info", "{in}"], small.head + struct.pack(">II", 2**32 - 1, 0)
                 + bytes(20), (0,), checks=[("lines", 2)]),
        _command("info of 16 layers with 3 chunks", ["info", "{in}"],
                 raw_header(three.name, three.model_id, three.layers + three.layers[-1:] * 13, intra=three.intra) + rest, (0,),
                 checks=[("lines", 16)]),
        # 3: endless or huge inputs
        _command("info of /dev/zero", ["info", "{in}"], input="link:/dev/zero"),
        _command("decode of /dev/zero", ["decode", "{in}", "-o", "out.png", "--weights", "{w}"],
                 input="link:/dev/zero"),
        _command("extract of /dev/urandom", ["extract", "{in}", "--layer", "0", "-o", "out.cmp"],
                 input="link:/dev/urandom", checks=nothing),
        _command("info of an 8 GiB sparse file", ["info", "{in}"], input="sparse"),
        # 4, 5: outputs that are not regular files, or of mode 600
        _command("extract onto a device node", ["extract", "{in}", "--layer", "0", "-o", "node"], small.data,
                 setup=[("node", "node")], checks=[("special", "node")]),
        _command("extract onto a FIFO", ["extract", "{in}", "--layer", "0", "-o", "fifo"], small.data,
                 setup=[("fifo", "fifo")], checks=[("special", "fifo")]),
        _command("extract over a file of mode 600", ["extract", "{in}", "--layer", "0", "-o", "out.cmp"], small.data,
                 (0,), files={"out.cmp": b"old"}, setup=[("mode600", "out.cmp")],
                 checks=[("mode", "out.cmp", 0o600), ("equals", "out.cmp", bitstream.extract(small.data, 0))]),
        # 6: malformed weights and manifests
        dict(category="weights", variant="missing: config", data=b"", base=None, expect=("WeightsError",),
             edit=(("del", ("config",), None),)),
        dict(category="weights", variant="config: N = 10**12", data=b"", base=None, expect=("WeightsError",),
             edit=(("set", ("config", "codec", "N"), 10**12),)),
        *[dict(category="manifest", variant=variant, data=data, base=None, expect=("WeightsError",))
          for variant, data in (("no sha256", b'{"models": {"fuzz": {"file": "w.pt"}}}'),
                                ("no models", b'{"fuzz": {}}'),
                                ("file: null", b'{"models": {"fuzz": {"file": null, "sha256": "<sha256>"}}}'),
                                ("a list", b'[{"file": "w.pt"}]'), ("invalid JSON", b'{"models": {fuzz: 1}}'))],
        # 7, 8: layer plans and options that are no plan
        _command("encode --layers ''", [*encode, "--layers", ""], photo, name="in.png", checks=nothing),
        _command("encode --layers=-0.5,1", [*encode, "--layers=-0.5,1"], photo, name="in.png", checks=nothing),
        _command("--threads -1", ["--threads", "-1", "info", "{in}"], small.data),
        _command("encode --refine 1.5", [*encode, "--refine", "1.5"], photo, name="in.png", checks=nothing),
        # 9: an output name of 246 characters
        _command("extract to a 246-character name", ["extract", "{in}", "--layer", "0", "-o", "n" * 242 + ".cmp"],
                 small.data, (0,), checks=[("equals", "n" * 242 + ".cmp", bitstream.extract(small.data, 0))]),
        # 10: input through a pipe
        _command("encode from a pipe", encode, photo, (0,), input="fifo", name="in.png",
                 checks=[("compass", "out.cmp")]),
        _command("info from a pipe", ["info", "{in}"], three.data, (0,), input="fifo", checks=[("lines", 3)]),
        # 11: random bytes behind a valid chunk CRC
        _command("decode of a random layer 1", ["decode", "{in}", "-o", "out.png", "--weights", "{w}"], random_layer1,
                 checks=[("stderr", "layer 1: "), ("equals", "out.png", None)]),
        # 12: a small file declaring 8192x8192 (a PNG declaring it: tests/test_cli.py)
        _command("decode of a file declaring 8192x8192", ["decode", "{in}", "-o", "out.png", "--weights", "{w}"],
                 raw_header(small.name, small.model_id, small.layers[:1] + [(8192, 8192, 0)], intra=small.intra) + b"".join(small.chunks),
                 checks=[("stderr", "over the limit"), ("equals", "out.png", None)]),
        # 13: a temporary file left by a killed writer
        _command("extract beside stale temporary files", ["extract", "{in}", "--layer", "1", "-o", "out.cmp"],
                 small.data, (0,), setup=[("stale", ".compass-000000000000.tmp")],
                 checks=[("absent", ".compass-000000000000.tmp"), ("exists", ".compass-111111111111.tmp")]),
        # 14, 15: Ctrl-C; the reader of the output gone
        _command("Ctrl-C during encode", [*encode, "--refine", "100000"], photo, (130,), name="in.png", sigint=0.5,
                 checks=[("stderr", "interrupted"), *nothing]),
        _command("info | head -0", ["info", "{in}"], small.data, (141,), closed=True),
        # 16: decode --all of a file whose layer 2 is damaged, over older outputs
        _command("decode --all over older outputs", ["decode", "{in}", "--all", "-o", "o.png", "--weights", "{w}"],
                 damaged_top, files={f"o_L{k}.png": b"older" for k in range(3)}, writes=["o_L0.png", "o_L1.png"],
                 checks=[("absent", "o_L2.png"), ("stderr", "removed the older o_L2.png")]),
    )


class Evil:
    """Unpickling this runs code: it creates the file `marker` (what a hostile weights file or checkpoint does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")



HOSTILE = {"weights": (_weights_file, 0.15), "manifest": (_manifest, 0.1), "checkpoint": (_checkpoint, 0.1),
           "cli": (_cli, 0.2)}  # name: (generator, weight in a random draw)
