"""Reliability: bad input never crashes or hangs compass, and decodes do not depend on the thread count.

The bounded fuzz run here is the full one of docs/reliability.md on a few hundred cases; the harness itself is
checked too (a crash, a hang, a dead worker and a wrong image must be reported, not missed).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import stat
import time

import numpy as np
import pytest
from conftest import REPO, run_python, synthetic_image, tiny_scalable_weights
from PIL import Image

from compass import bitstream, fuzz, weights
from compass.cli import main
from compass.entropy import CodingError
from compass.errors import CompassError
from compass.fuzz.cases import CATEGORIES, make_case
from compass.fuzz.commands import judge_command, snapshot
from compass.fuzz.format import FUZZ_MAX_PIXELS, Case, raw_chunk, raw_header, split
from compass.fuzz.hostile import EVIL
from compass.fuzz.worker import Worker, decode_case, encode_corpus, load_case
from compass.pixels import to_pixels


@pytest.fixture(scope="module")
def fuzz_models(tiny_weights, tmp_path_factory):
    """The tiny test model and another one (same architecture and name, other weights)."""
    return [str(tiny_weights), str(tiny_scalable_weights(tmp_path_factory.mktemp("other") / "other.pt", seed=5))]


# ---------------------------------------------------------------- the fuzz run, bounded

@pytest.fixture(scope="module")
def report(fuzz_models):
    return fuzz.run(cases=700, seed=0, models=fuzz_models)


def test_bounded_fuzz_run_has_no_failing_case(report):
    assert report.failures == [], report.text()
    assert report.cases == 700


def test_every_category_is_reached_with_the_outcomes_it_must_have(report):
    counts = report.counts
    assert set(counts) == set(CATEGORIES), report.text()
    assert set(counts["limits"]) == {"LimitExceeded"}
    assert set(counts["trailing"]) == {"identical"}
    assert not {"identical", "differs"} & (set(counts["truncate"]) | set(counts["bitflip"]))
    assert counts["truncate"]["TruncatedChunk"] and counts["truncate"]["HeaderError"]
    # damage behind a valid chunk CRC reaches the entropy decoder and the symbol check
    assert counts["payload"]["CodingError"] and counts["payload"]["DecodeMismatch"]
    assert counts["model"]["ModelMismatch"]
    # the seeds of issue 22 on the command line, and loaders refusing what they must
    assert {"exit 0", "exit 2", "exit 130", "exit 141"} <= set(counts["cli"])
    assert all(counts[c]["WeightsError"] for c in ("weights", "manifest", "checkpoint"))


def test_report_table_lists_every_category(report):
    table = report.table()
    for name in report.counts:
        assert f"| {name} |" in table
    assert "| **all** | 700 |" in table


def test_cases_are_reproducible(fuzz_models):
    from compass.api import Compass

    corpus = [split(m, data) for m, data in encode_corpus([Compass(m) for m in fuzz_models])]
    assert corpus == [split(m, data) for m, data in encode_corpus([Compass(m) for m in fuzz_models])]
    cases = range(len(corpus[0].data) - 5, len(corpus[0].data) + 500)
    a = [pickle.dumps(make_case(3, i, corpus)) for i in cases]
    assert a == [pickle.dumps(make_case(3, i, corpus)) for i in cases]
    assert a[:5] == [pickle.dumps(make_case(4, i, corpus)) for i in cases[:5]]  # every cut: no randomness
    assert a[5:] != [pickle.dumps(make_case(4, i, corpus)) for i in cases[5:]]


# ---------------------------------------------------------------- the harness catches what it must

class _FakeCodec:
    """Stands in for `Compass` in `decode_case`: `layers` runs `body`."""

    max_pixels = FUZZ_MAX_PIXELS

    def __init__(self, body):
        self.body = body

    def decode_iter(self, data):
        yield from self.body()


def _judge(body, same=True):
    data = raw_header(b"m", bytes(8), [(2, 3, 0)]) + raw_chunk(0, [b"", b""])
    case = Case(0, "test", "test", data, 0, 0, same=same, expect=("error",))
    return decode_case(case, [_FakeCodec(body)], [[np.zeros((2, 3, 3), np.uint8)]])


def _raise(e):
    def body():
        raise e
        yield
    return body


def test_harness_reports_foreign_exceptions_and_multiline_messages():
    assert _judge(_raise(IndexError("list index out of range")))["outcome"] == "crash"
    assert _judge(_raise(CodingError("damaged entropy-coded string")))["problems"] == [
        "the message does not name the damaged layer"]
    assert _judge(_raise(RuntimeError("DefaultCPUAllocator: can't allocate memory")))["outcome"] == "memory"
    res = _judge(_raise(CompassError("two\nlines")))
    assert res["outcome"] == "CompassError" and "not one line" in res["problems"][0]
    assert _judge(_raise(CompassError("fine")))["problems"] == []


def test_harness_reports_wrong_shapes_and_wrong_images():
    res = _judge(lambda: iter([np.zeros((3, 3, 3), np.uint8)]))
    assert any("the header says" in p for p in res["problems"])
    res = _judge(lambda: iter([np.ones((2, 3, 3), np.uint8)]))
    assert any("differs from the original" in p for p in res["problems"])
    assert "expected error" in res["problems"][-1]
    res = _judge(lambda: iter([np.ones((2, 3, 3), np.uint8)]), same=False)
    assert res["outcome"] == "differs" and res["problems"] == ["expected error"]


class _Payload(bytes):
    """Case data whose unpickling, in the worker, runs `call(*args)`: a stand-in for a decoder that dies or hangs."""

    def __new__(cls, call, args):
        obj = super().__new__(cls, b"")
        obj.call = (call, args)
        return obj

    def __reduce__(self):
        return self.call


def test_harness_survives_a_dead_or_hung_worker(fuzz_models, tmp_path):
    pool = Worker(fuzz_models, str(tmp_path), 2048)
    try:
        corpus = [split(m, data) for m, data in pool.start()["corpus"]]
        good = Case(0, "trailing", "test", corpus[0].data, 0, 0, expect=("identical",))

        def judged(data, timeout=5.0):
            return pool.run(Case(1, "test", "test", data, 0, 0), timeout)

        died = judged(_Payload(os._exit, (3,)))
        assert (died["outcome"], died["message"]) == ("died", "worker exited with code 3")
        assert pool.run(good, 10)["outcome"] == "identical"  # restarted, same corpus
        assert judged(_Payload(exec, ("while True: pass",)), timeout=0.5)["outcome"] == "hang"  # spins
        assert judged(_Payload(time.sleep, (600,)), timeout=0.1)["outcome"] == "hang"  # blocks: 30x in wall time
        assert pool.run(good, 10)["outcome"] == "identical"
    finally:
        pool.stop()


def test_harness_reports_code_run_by_a_loader(tiny_weights, tmp_path, monkeypatch):
    """The checkpoint loaders as they were (torch.load with weights_only=False) let a forged file run code: the
    loader cases must say so."""
    import torch

    from compass.train import loop

    unsafe = lambda path, map_location="cpu": torch.load(path, weights_only=False)  # noqa: E731
    monkeypatch.setattr(weights, "safe_load", unsafe)
    monkeypatch.setattr(loop, "safe_load", unsafe)
    case = Case(0, "checkpoint", "test", b"", 0, None, expect=("WeightsError",),
                     edit=(("set", ("history",), [EVIL]),))
    obj = {k: v for k, v in weights.load_weights(tiny_weights)[0].items() if k != "source"}
    res = load_case(case, obj, tiny_weights, tmp_path)
    assert "loading ran code from the file" in res["problems"]


def test_harness_judges_the_command_line(tmp_path):
    spec = {"argv": [], "expect": (2,), "checks": [("absent", "gone")]}
    (tmp_path / "kept").write_bytes(b"x")
    (tmp_path / "gone").write_bytes(b"x")
    before = snapshot(tmp_path)
    judge = lambda code, stderr="compass info: damaged\n": judge_command(spec, tmp_path, before, code, "", stderr)
    assert judge(2) == ["gone is there"]
    (tmp_path / "gone").unlink()
    assert judge(2) == []
    assert judge(1, "Traceback (most recent call last):\n") == [
        "exit code 1, expected 2", "stderr is not compass's one-line messages: 'Traceback (most recent call last):\\n'"]
    assert judge(2, "compass info: one\ncompass info: two\n") == ["2 error lines on exit 2"]
    (tmp_path / ".compass-0123456789ab.tmp").write_bytes(b"x")
    (tmp_path / "kept").write_bytes(b"changed")
    assert judge(2) == ["temporary file left: .compass-0123456789ab.tmp", "a failed command changed files"]


def test_cli_fuzz_reproduces_one_case(fuzz_models, capsys):
    assert main(["fuzz", "--seed", "0", "--only", "5", "400", *sum((["--model", m] for m in fuzz_models), [])]) == 0
    out = capsys.readouterr().out
    assert "case 5 [truncate: every cut (5 of" in out and "case 400 [" in out and "no failing case" in out


def test_refusals_of_huge_declarations_come_before_any_allocation(tiny_codec, photo_pixels):
    """The header path and the API path refuse sizes over their limits, one default for both (limits.MAX_PIXELS)."""
    data = tiny_codec.encode(photo_pixels, layers=[0.5, 1])
    header, offset = bitstream.read_header(data)
    body = data[offset:]
    name, mid = header.model_name.encode(), header.model_id
    layers = [(l.height, l.width, 0) for l in header.layers]
    between = raw_header(name, mid, layers[:1] + [(9000, 9000, 0)]) + body  # 81 MP: over 2^26, under 2^28
    assert bitstream.read_header(between, max_pixels=1 << 28)[0].layers[1].pixels == 81_000_000
    for read in (tiny_codec.decode, bitstream.read_header, bitstream.info):
        with pytest.raises(bitstream.LimitExceeded, match="over the limit of 67108864"):
            read(between)
    with pytest.raises(bitstream.LimitExceeded, match="67108864"):
        bitstream.read_header(raw_header(name, mid, layers[:1] + [(2**32 - 1, 2**32 - 1, 0)]) + body)
    with pytest.raises(bitstream.LimitExceeded, match="17 layers"):
        tiny_codec.decode(raw_header(name, mid, layers + layers[-1:] * 15) + body)


_OOM_SCRIPT = r"""
import resource, sys, numpy as np
from compass.procstat import status_mb
from compass.api import Compass, OutOfMemory
from compass.cli import main
weights, cmp_path, png_path = sys.argv[1:]
codec = Compass(weights)
data = codec.encode(np.full((1024, 1024, 3), 128, np.uint8), layers=(1, 1))
open(cmp_path, "wb").write(data)
resource.setrlimit(resource.RLIMIT_AS, (int((status_mb("VmSize") + 40) * 2**20), resource.RLIM_INFINITY))
try:
    codec.decode(data)
except OutOfMemory as e:
    print(f"OutOfMemory: {e}")
print("exit", main(["decode", cmp_path, "-o", png_path, "--weights", weights]))
"""


def test_running_out_of_memory_is_a_compass_error(tiny_weights, tmp_path):
    """Under an address-space limit a decode that cannot allocate ends in OutOfMemory (CLI: exit 2, one line)."""
    proc = run_python(_OOM_SCRIPT, str(tiny_weights), str(tmp_path / "x.cmp"), str(tmp_path / "x.png"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    # which layer fails first depends on the limit: LIFF at full size needs more than the base decoder. 1024x1024
    # needs far more than the 40 MB left, so the CLI's second attempt fails too whatever the first one freed
    assert re.match(r"OutOfMemory: layer [01] \(1024x1024\): not enough memory to decode it", lines[0]), lines
    assert lines[-1] == "exit 2" and "not enough memory" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- determinism across processes and threads

_DET_SCRIPT = r"""
import hashlib, json, sys, numpy as np, torch
from compass.api import Compass
from compass.pixels import to_tensor
from compass.resample import pyramid
threads, model, predictor, pixels, out, other = int(sys.argv[1]), *sys.argv[2:]
torch.set_num_threads(threads)
codec = Compass(model, predictor)
px = np.load(pixels)
data = codec.encode(px, layers=(0.25, 0.5, 1), quality=0.6)
open(out + ".cmp", "wb").write(data)
np.savez(out + ".npz", *codec.decode_all(data))
if other != "-":
    np.savez(out + "_other.npz", *codec.decode_all(open(other + ".cmp", "rb").read()))
plan = codec.plan(*px.shape[:2], layers=(0.25, 0.5, 1))  # the floats behind the 8-bit layers, both sides
codes, recons = codec.model.compress(pyramid(to_tensor(px), plan), [0.6] * 3)
decoded = [x for x, _ in codec.model.decompress_iter(codes, plan, [0.6] * 3)]
floats = hashlib.sha256(b"".join(t.numpy().tobytes() for t in recons + decoded)).hexdigest()
print(json.dumps({"threads": torch.get_num_threads(), "sha": hashlib.sha256(data).hexdigest(), "floats": floats}))
"""


def _model_or_skip(name, tiny_weights):
    if name == "tiny":
        return str(tiny_weights)
    if name not in weights.registered():
        pytest.skip(f"{name} is not registered")
    return name


@pytest.mark.parametrize("name,predictor", [("tiny", "liff"), ("tiny", "bicubic"), ("compass-cpu", "liff"),
                                            ("compass-cpu-lite", "liff"), ("compass-cpu-fast", "liff"),
                                            ("compass-cpu-mini", "liff")])
def test_scalable_files_and_decodes_identical_with_1_and_2_threads(name, predictor, tiny_weights, tmp_path):
    """Process A encodes with 1 thread, B with 2, C with 1 again; each decodes its own file and B, C the other's.

    Files are byte-identical, and so are the decoded layers and the float reconstructions behind them (encoder
    and decoder side) whatever the thread count: convolutions run on one thread (layers.one_thread).
    """
    model = _model_or_skip(name, tiny_weights)
    np.save(tmp_path / "px.npy", to_pixels(synthetic_image(120, 152, seed=21)))
    runs = {}
    for run, threads, other in (("a", 1, "-"), ("b", 2, "a"), ("c", 1, "b")):
        proc = run_python(_DET_SCRIPT, str(threads), model, predictor, str(tmp_path / "px.npy"), str(tmp_path / run),
                          str(tmp_path / other) if other != "-" else "-", threads=threads, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[run] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert runs[run]["threads"] == threads
    assert runs["a"]["sha"] == runs["b"]["sha"] == runs["c"]["sha"]
    assert runs["a"]["floats"] == runs["b"]["floats"] == runs["c"]["floats"]
    layers = {k: list(np.load(tmp_path / f"{k}.npz").values()) for k in ("a", "b", "c", "b_other", "c_other")}
    assert len(layers["a"]) == 3
    for k in ("b", "c", "b_other", "c_other"):
        for x, y in zip(layers["a"], layers[k]):
            np.testing.assert_array_equal(x, y, err_msg=k)


def test_shipped_model_codes_the_bundled_image_as_recorded():
    """Across installs: compass-cpu codes examples/kingfisher.png (layers 0.25, 0.5, 1, q = 0.5, every layer
    predicted) into the bytes recorded in tests/data/reference_coding.json and decodes the recorded pixels (the
    record predates layer modes: a predicted file is what compass wrote before them, byte for byte). oneDNN rounds differently on
    another instruction set or CPU vendor (docs/reliability.md), so a machine of a kind not recorded there, or
    another torch version, skips."""
    import hashlib

    import torch

    from compass.api import Compass

    records = json.loads((REPO / "tests" / "data" / "reference_coding.json").read_text())["records"]
    model = _model_or_skip("compass-cpu", None)
    env = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu_vendor": _cpu_vendor()}
    ref = next((r for r in records if r["environment"] == env), None)
    if ref is None:
        pytest.skip(f"recorded with {[r['environment'] for r in records]}, this is {env}")
    sha = lambda b: hashlib.sha256(b).hexdigest()
    codec = Compass(model)
    data = codec.encode(REPO / "examples" / "kingfisher.png", layers=(0.25, 0.5, 1), quality=0.5,
                        layer_mode="predicted")
    got = {"model_id": codec.model_id.hex(), "bytes": len(data), "file_sha256": sha(data),
           "layers_sha256": [sha(x.tobytes()) for x in codec.decode_all(data)]}
    assert got == ref["coding"], f"coded otherwise than recorded; if intended (new weights or format): {got}"


def _cpu_vendor() -> str:
    """The CPU's vendor as Linux names it (GenuineIntel, AuthenticAMD), or the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return platform.processor()


# ---------------------------------------------------------------- hostile paths on the command line

@pytest.fixture()
def files(tmp_path, photo_pixels, tiny_weights):
    png = tmp_path / "in.png"
    Image.fromarray(photo_pixels).save(png)
    cmp_file = tmp_path / "x.cmp"
    assert main(["encode", str(png), str(cmp_file), "--layers", "0.5,1", "--weights", str(tiny_weights),
                 "--quiet"]) == 0
    return png, cmp_file


def _snapshot(folder):
    """Every path under `folder` with its inode, size and modification time: any write or replacement shows."""
    return {p.relative_to(folder): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", ["encode onto its input", "extract onto its input", "decode onto its input",
                                  "output via a symlink to the input", "--all onto its input",
                                  "output under a regular file", "output is a folder", "input is a folder",
                                  "missing input to info", "missing input to extract", "missing input to decode",
                                  "unwritable folder", "unreadable input", "damaged input over an old output",
                                  "output is a device node", "output is a FIFO"])
def test_hostile_paths_exit_2_and_leave_files_alone(case, files, tmp_path, tiny_weights, capsys):
    png, cmp_file = files
    w = ["--weights", str(tiny_weights)]
    (tmp_path / "old.png").write_bytes(b"an old output")
    (tmp_path / "plain.txt").write_text("a regular file")
    (tmp_path / "folder").mkdir()
    damaged = tmp_path / "damaged.cmp"
    damaged.write_bytes(cmp_file.read_bytes()[:-3])
    if case in ("unwritable folder", "unreadable input"):
        if os.geteuid() == 0:
            pytest.skip("root ignores file permissions (the 'output under a regular file' case covers writes)")
        (tmp_path / "locked").mkdir(mode=0o500)
        if case == "unreadable input":
            os.chmod(png, 0o000)
    if case == "output is a device node":  # issue 22, row 4: here a copy of /dev/null
        if os.geteuid() != 0:
            pytest.skip("only root may create a device node (the FIFO covers the rule)")
        os.mknod(tmp_path / "node", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    if case == "output is a FIFO":
        os.mkfifo(tmp_path / "fifo")
    if case == "output via a symlink to the input":
        (tmp_path / "link.cmp").symlink_to(cmp_file)
    if case == "--all onto its input":  # decode --all -o o.png writes o_L0.png, o_L1.png: the input is o_L1.png
        (tmp_path / "o_L1.png").write_bytes(cmp_file.read_bytes())
    argv = {
        "encode onto its input": ["encode", png, png, *w],
        "extract onto its input": ["extract", cmp_file, "--layer", "0", "-o", cmp_file],
        "decode onto its input": ["decode", cmp_file, "-o", cmp_file, *w],
        "output via a symlink to the input": ["extract", cmp_file, "--layer", "0", "-o", tmp_path / "link.cmp"],
        "--all onto its input": ["decode", tmp_path / "o_L1.png", "--all", "-o", tmp_path / "o.png", *w],
        "output under a regular file": ["encode", png, tmp_path / "plain.txt" / "o.cmp", *w],
        "output is a folder": ["decode", cmp_file, "-o", tmp_path / "folder", *w],
        "input is a folder": ["decode", tmp_path / "folder", "-o", tmp_path / "o.png", *w],
        "missing input to info": ["info", tmp_path / "nope.cmp"],
        "missing input to extract": ["extract", tmp_path / "nope.cmp", "--layer", "0", "-o", tmp_path / "o.cmp"],
        "missing input to decode": ["decode", tmp_path / "nope.cmp", "-o", tmp_path / "o.png", *w],
        "unwritable folder": ["encode", png, tmp_path / "locked" / "o.cmp", *w],
        "unreadable input": ["encode", png, tmp_path / "o.cmp", *w],
        "damaged input over an old output": ["decode", damaged, "-o", tmp_path / "old.png", *w],
        "output is a device node": ["encode", png, tmp_path / "node", *w],
        "output is a FIFO": ["extract", cmp_file, "--layer", "0", "-o", tmp_path / "fifo"],
    }[case]
    before = _snapshot(tmp_path)
    try:
        assert main([str(a) for a in argv]) == 2
    finally:
        os.chmod(png, 0o644)
    err = capsys.readouterr().err.strip()
    assert err.startswith("compass ") and "\n" not in err and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before  # nothing written, nothing clobbered, no temporary file left


# ---------------------------------------------------------------- damaged shipped weights

@pytest.fixture()
def registry(tmp_path, tiny_weights, monkeypatch):
    """A registry like the shipped one, in a temporary folder: one tiny model with its sha256 in the manifest."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    path = folder / "compass-tiny.pt"
    path.write_bytes(tiny_weights.read_bytes())
    entry = {"file": path.name, "sha256": weights.sha256_file(path), "kind": "scalable"}
    (folder / "manifest.json").write_text(json.dumps({"models": {"compass-tiny": entry}}))
    monkeypatch.setattr(weights, "PRETRAINED_DIR", folder)
    monkeypatch.setattr(weights, "MANIFEST", folder / "manifest.json")
    return path


def test_damaged_weights_fail_their_sha256_with_a_way_to_restore(registry, tmp_path, files, capsys):
    from compass.api import Compass

    assert Compass("compass-tiny").name == "compass-test-tiny"
    data = bytearray(registry.read_bytes())
    data[len(data) // 2] ^= 0x01
    registry.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match=r"fails its sha256 check .*restore it with .*reinstall compass"):
        Compass("compass-tiny")
    _, cmp_file = files
    assert main(["decode", str(cmp_file), "-o", str(tmp_path / "o.png"), "--model", "compass-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256" in err and "restore" in err and "\n" not in err
    registry.unlink()
    with pytest.raises(weights.WeightsError, match=r"is missing; restore it"):
        Compass("compass-tiny")


@pytest.mark.parametrize("edit, message", [
    (lambda o: o.pop("config"), "holds no config"),
    (lambda o: o["config"]["codec"].update(N=10**12), "N must be whole numbers from 1 to 512, got 1000000000000"),
    (lambda o: o["config"]["liff"].update(hidden=[10**9, 16]), "hidden must be whole numbers from 1 to 1024"),
    (lambda o: o["config"]["codec"].update(lambda_max=float("nan")), "0 < lambda_min < lambda_max"),
    (lambda o: o["config"]["codec"].update(N=9), "module 'base' does not fit its config .*size mismatch"),
    (lambda o: o["state"]["liff"].popitem(), "module 'liff' does not fit its config .*Missing key"),
    (lambda o: o["state"].pop("residual"), "has no module 'residual'"),
    (lambda o: o["state"]["base"].update(extra="not a tensor"), "map each module's names to tensors"),
    (lambda o: o.update(name="caf\u00e9"), "name must be 1-255 printable ASCII"),
])
def test_malformed_weights_are_refused_in_one_line_naming_the_file(edit, message, tiny_weights, tmp_path):
    """Issue 22, row 6: a weights file whose format tag is right but whose config or modules are missing, out of
    bounds or inconsistent is a WeightsError naming the file; a huge config is refused before anything is built."""
    import torch

    from compass.api import Compass

    obj = torch.load(tiny_weights, weights_only=True)
    edit(obj)
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    with pytest.raises(weights.WeightsError, match=f"^weights file {re.escape(str(path))}.*{message}") as e:
        Compass(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ('{"models": {"compass-tiny": {"file": "compass-tiny.pt"}}}', "needs a 'sha256' of 64 hex digits, got None"),
    ('{"compass-tiny": {}}', "not a manifest"),
    ('{"models": {"compass-tiny": {"file": null, "sha256": "SHA"}}}', "needs a 'file' naming a file beside"),
    ('{"models": {"compass-tiny": {"file": "../compass-tiny.pt", "sha256": "SHA"}}}', "needs a 'file' .* got '../"),
    ('[{"file": "compass-tiny.pt"}]', "not a manifest"),
    ('{"models": {compass-tiny: {}}}', r"not valid JSON \(Expecting property name enclosed in double quotes"),
])
def test_malformed_manifests_are_refused_in_one_line_naming_the_file(text, message, registry):
    """Issue 22, row 6."""
    from compass.api import Compass

    manifest = registry.parent / "manifest.json"
    manifest.write_text(text.replace("SHA", weights.sha256_file(registry)))
    with pytest.raises(weights.WeightsError, match=f"^{re.escape(str(manifest))}: (model 'compass-tiny' )?{message}"):
        Compass("compass-tiny")


class _RunsCode:
    """Unpickling this creates the file `marker`: any code could run in its place."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoints_and_weights_that_run_code_are_refused(tiny_weights, tmp_path):
    """Issue 22, row 1: every loader of weights or training checkpoints (`train --init`, `--resume`,
    `history_of`, `models.module_state`, the GPU window's import, the export) reads tensors and plain data only:
    a file whose unpickling would run code is refused with one line, and the code never runs."""
    import torch

    from compass.api import Compass
    from compass.train import train
    from compass.train.export import export_checkpoints
    from compass.train.loop import history_of
    from compass.models import module_state
    from compass.train.window import import_window
    from test_train import RECIPE

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "compass-checkpoint/1", "step": 1, "payload": _RunsCode(str(marker))}, evil)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(to_pixels(synthetic_image(40, 48, seed=i))).save(photos / f"{i}.png")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(evil.read_bytes())
    (tmp_path / "window").mkdir()
    (tmp_path / "window" / "base.pt").write_bytes(evil.read_bytes())
    (tmp_path / "window" / "window.json").write_text('{"stage": "base"}')
    loaders = [lambda: Compass(evil), lambda: history_of(evil), lambda: module_state(evil, "base"),
               lambda: train(RECIPE, "base", tmp_path / "new", init=str(evil), data=str(photos), progress=False),
               lambda: train(RECIPE, "base", tmp_path / "run", resume=True, data=str(photos), progress=False),
               lambda: import_window(tmp_path / "window", checkpoints=tmp_path / "checkpoints"),
               lambda: export_checkpoints(evil, None, tmp_path / "export")]
    for load in loaders:
        with pytest.raises(weights.WeightsError, match=r"\.pt holds Python objects other than tensors and plain "
                                                       "data, which loading could run as code: refused"):
            load()
    assert not marker.exists()


def test_no_loader_unpickles_code():
    """Every torch.load in the repository is `weights.safe_load`'s (weights_only=True)."""
    offenders = [str(p.relative_to(REPO)) for folder in ("src", "tools", "scripts") for p in (REPO / folder).rglob("*")
                 if p.suffix in (".py", ".sh") and "torch.load(" in p.read_text()]
    assert offenders == ["src/compass/weights.py"]
