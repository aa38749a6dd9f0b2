"""The CLI: every command, exit codes, one-line errors, atomic outputs."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, fifo, run_python
from PIL import Image

from compass import bitstream, limits
from compass.cli import main
from compass.fuzz.format import raw_header


@pytest.fixture()
def png(tmp_path, photo_pixels):
    path = tmp_path / "in.png"
    Image.fromarray(photo_pixels).save(path)
    return path


def run(*argv):
    return main([str(a) for a in argv])


def exit_code(*argv):
    """`run`, with a usage error's SystemExit taken as its exit code."""
    try:
        return run(*argv)
    except SystemExit as e:
        return e.code


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("compass") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture()
def three(png, tmp_path, tiny_weights):
    """A file of three layers (17x11, 34x22, 67x45) and its header."""
    path = tmp_path / "three.cmp"
    assert run("encode", png, path, "--layers", "0.25,0.5,1", "--weights", tiny_weights, "--quiet") == 0
    return path, *bitstream.read_header(path.read_bytes())


def test_encode_info_decode_extract(png, tmp_path, tiny_weights, capsys, tiny_codec):
    out = tmp_path / "x.cmp"
    assert run("encode", png, out, "--layers", "0.25,0.5,1", "--quality", "0.6", "--weights", tiny_weights) == 0
    printed = capsys.readouterr().out
    assert "layer 2: 67x45" in printed and "bpp" in printed
    data = out.read_bytes()

    assert run("info", out, "--json") == 0
    meta = json.loads(capsys.readouterr().out)
    assert [(l["width"], l["height"]) for l in meta["layers"]] == [(17, 11), (34, 22), (67, 45)]
    assert meta["file_bytes"] == len(data)

    assert run("decode", out, "-o", tmp_path / "top.png", "--weights", tiny_weights) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "top.png")), tiny_codec.decode(data))
    assert run("decode", out, "-o", tmp_path / "all.png", "--all", "--weights", tiny_weights) == 0
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"all_L{k}.png")), tiny_codec.decode(data, k))

    assert run("extract", out, "--layer", "1", "-o", tmp_path / "sub.cmp") == 0
    assert run("decode", tmp_path / "sub.cmp", "-o", tmp_path / "sub.png", "--weights", tiny_weights) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub.png")), tiny_codec.decode(data, 1))


@pytest.mark.parametrize("mode", ["predicted", "intra"])
def test_layer_mode_is_written_and_shown_by_info(mode, png, tmp_path, tiny_weights, capsys, tiny_codec):
    out = tmp_path / "x.cmp"
    assert run("encode", png, out, "--layer-mode", mode, "--weights", tiny_weights) == 0
    printed = [line.split()[4] for line in capsys.readouterr().out.splitlines() if line.startswith("  layer ")]
    assert printed == ["base", mode, mode]
    assert run("info", out, "--json") == 0
    meta = json.loads(capsys.readouterr().out)
    assert [l["mode"] for l in meta["layers"]] == printed and meta["format_version"] == (2 if mode == "intra" else 1)
    assert out.read_bytes() == tiny_codec.encode(png, layer_mode=mode)
    assert exit_code("encode", png, out, "--layer-mode", "never", "--weights", tiny_weights) == 2


def test_sizes_and_unequal_scales(png, tmp_path, tiny_weights):
    out = tmp_path / "x.cmp"
    assert run("encode", png, out, "--sizes", "20x9,67x45", "--weights", tiny_weights, "--quiet") == 0
    assert [(l.width, l.height) for l in bitstream.read_header(out.read_bytes())[0].layers] == [(20, 9), (67, 45)]
    assert run("encode", png, out, "--scales", "1.5x2.0", "--weights", tiny_weights, "--quiet") == 0
    assert [(l.width, l.height) for l in bitstream.read_header(out.read_bytes())[0].layers] == [(45, 22), (67, 45)]


def test_encode_refine_writes_what_the_api_writes(png, tmp_path, tiny_weights, tiny_codec, photo_pixels, capsys):
    out = tmp_path / "r.cmp"
    assert run("encode", png, out, "--refine", "3", "--weights", tiny_weights, "--quiet") == 0
    data = out.read_bytes()
    assert data == tiny_codec.encode(photo_pixels, refine=3) != tiny_codec.encode(photo_pixels)
    assert tiny_codec.decode(data).shape == photo_pixels.shape
    with pytest.raises(SystemExit) as e:
        run("encode", png, out, "--refine", "-1", "--weights", tiny_weights)
    assert e.value.code == 2 and "step count" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing input", "not an image", "bad quality", "missing folder", "same path",
                                  "damaged file", "bad layer", "unknown model"])
def test_errors_exit_2_with_one_line(case, png, tmp_path, tiny_weights, capsys):
    cmp_file = tmp_path / "x.cmp"
    run("encode", png, cmp_file, "--layers", "0.5,1", "--weights", tiny_weights, "--quiet")
    capsys.readouterr()
    damaged = tmp_path / "damaged.cmp"
    damaged.write_bytes(cmp_file.read_bytes()[:-5])
    text = tmp_path / "t.png"
    text.write_text("hello")
    w = ["--weights", tiny_weights]
    argv = {
        "missing input": ["encode", tmp_path / "nope.png", tmp_path / "o.cmp", *w],
        "not an image": ["encode", text, tmp_path / "o.cmp", *w],
        "bad quality": ["encode", png, tmp_path / "o.cmp", "--quality", "2", *w],
        "missing folder": ["encode", png, tmp_path / "no" / "dir" / "o.cmp", *w],
        "same path": ["decode", cmp_file, "-o", cmp_file, *w],
        "damaged file": ["decode", damaged, "-o", tmp_path / "o.png", *w],
        "bad layer": ["decode", cmp_file, "-o", tmp_path / "o.png", "--layer", "5", *w],
        "unknown model": ["encode", png, tmp_path / "o.cmp", "--model", "no-such-model"],
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert run(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compass ") and "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no partial or stray output
    assert cmp_file.stat().st_size > 0


def test_damaged_top_layer_still_decodes_lower(png, tmp_path, tiny_weights, capsys):
    cmp_file = tmp_path / "x.cmp"
    run("encode", png, cmp_file, "--layers", "0.5,1", "--weights", tiny_weights, "--quiet")
    damaged = tmp_path / "d.cmp"
    damaged.write_bytes(cmp_file.read_bytes()[:-5])
    assert run("decode", damaged, "-o", tmp_path / "o.png", "--weights", tiny_weights) == 2
    assert "layer 1" in capsys.readouterr().err
    assert run("decode", damaged, "-o", tmp_path / "o.png", "--layer", "0", "--weights", tiny_weights) == 0


def test_entry_point_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "compass", "--help"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0
    for cmd in ("encode", "decode", "info", "extract", "train"):
        assert cmd in out.stdout


def test_debug_shows_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "compass", "--debug", "info", str(tmp_path / "missing.cmp")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.parametrize("damage", ["cut inside layer 1", "a 4 GiB chunk length", "16 layers, 3 chunks"])
def test_info_of_a_damaged_file_lists_every_layer(damage, three, tmp_path, capsys):
    """Issue 22, row 2: `info` prints one line per declared layer, with what is wrong with its chunk, and exits 0."""
    path, header, offset = three
    data = path.read_bytes()
    layers = [(l.height, l.width, 0) for l in header.layers]
    name, model_id = header.model_name.encode(), header.model_id
    data, statuses = {
        "cut inside layer 1": (data[:bitstream.info(data)["layers"][0]["total_bytes"] + 5],
                               ["bpp", "[chunk truncated (5 of its 8 framing bytes", "[chunk missing"]),
        "a 4 GiB chunk length": (data[:offset] + struct.pack(">II", 2**32 - 1, 0) + data[offset + 8:],
                                 ["[chunk declares 4294967295 payload bytes, over the limit"]
                                 + ["[chunk not located (layer 0's chunk length is impossible)]"] * 2),
        "16 layers, 3 chunks": (raw_header(name, model_id, layers + layers[-1:] * 13) + data[offset:],
                                ["bpp"] * 3 + ["[chunk missing (the file ends before it)]"] * 13),
    }[damage]
    (tmp_path / "d.cmp").write_bytes(data)
    capsys.readouterr()
    assert run("info", tmp_path / "d.cmp") == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  layer ")]
    assert len(printed) == len(statuses) and all(status in line for status, line in zip(statuses, printed)), printed


_BOUNDED = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31)); "
            "from compass.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom", "an 8 GiB sparse file"])
@pytest.mark.parametrize("command", ["info", "decode", "extract"])
def test_endless_and_huge_inputs_exit_2_at_once(command, source, tmp_path):
    """Issue 22, row 3: a device is refused unread, a huge file read no further than its header allows (here: its
    first bytes), under a 2 GiB address-space limit."""
    path = tmp_path / "in.cmp"
    if source.startswith("/dev"):
        path.symlink_to(source)
    else:
        with open(path, "wb") as f:
            f.truncate(8 << 30)
    argv = {"info": [], "decode": ["-o", tmp_path / "o.png"], "extract": ["--layer", "0", "-o", tmp_path / "o.cmp"]}
    proc = run_python(_BOUNDED, command, str(path), *map(str, argv[command]), timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"compass {command}: ")
    assert sorted(os.listdir(tmp_path)) == ["in.cmp"]


def test_replaced_outputs_keep_their_mode(three, tmp_path):
    """Issue 22, row 5."""
    out = tmp_path / "sub.cmp"
    out.write_bytes(b"old")
    os.chmod(out, 0o600)
    assert run("extract", three[0], "--layer", "1", "-o", out) == 0
    assert out.stat().st_mode & 0o777 == 0o600 and out.read_bytes() == bitstream.extract(three[0].read_bytes(), 1)


@pytest.mark.parametrize("option", [["--layers", ""], ["--sizes", "0x0,67x45"], ["--layers", "nan,1"],
                                    ["--layers=-0.5,1"], ["--layers", "0,1"], ["--scales", "inf"],
                                    ["--scales", "1e6"], ["--sizes", "4x4,67x45"], ["--refine", "1.5"],
                                    ["--max-pixels", "0"]])
def test_options_that_make_no_plan_exit_2_with_one_line(option, png, tmp_path, tiny_weights, capsys):
    """Issue 22, rows 7 and 8: no layers, empty or non-finite sizes, fractions outside (0, 1], factors that leave
    a layer under `MIN_LAYER_SIDE` pixels a side, and malformed counts are refused, with nothing written."""
    assert exit_code("encode", png, tmp_path / "o.cmp", *option, "--weights", tiny_weights) == 2
    one_line(capsys)
    assert not (tmp_path / "o.cmp").exists()


def test_a_thread_count_under_1_exits_2_with_one_line(three, capsys):
    """Issue 22, row 7."""
    assert exit_code("--threads", "-1", "info", three[0]) == 2
    assert "--threads" in one_line(capsys)


def test_inputs_from_pipes(png, tmp_path, tiny_weights, tiny_codec, photo_pixels):
    """Issue 22, row 10: an image or a compass file read through a pipe (`<(cat x.png)`) codes as from a file."""
    assert run("encode", fifo(tmp_path / "pipe.png", png.read_bytes()), tmp_path / "o.cmp", "--weights", tiny_weights,
               "--quiet") == 0
    data = (tmp_path / "o.cmp").read_bytes()
    assert data == tiny_codec.encode(photo_pixels)
    assert run("decode", fifo(tmp_path / "pipe.cmp", data), "-o", tmp_path / "o.png", "--weights", tiny_weights) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), tiny_codec.decode(data))


def test_max_pixels_bounds_encode_and_decode(three, png, tmp_path, tiny_weights, capsys):
    """Issue 22, row 12: encode and decode refuse images and layers over --max-pixels, by default
    `limits.CLI_MAX_PIXELS`; info and extract, which decode nothing, take up to `limits.MAX_PIXELS`."""
    path, header, offset = three
    layers = [(l.height, l.width, 0) for l in header.layers]
    big = tmp_path / "big.cmp"
    big.write_bytes(raw_header(header.model_name.encode(), header.model_id, layers[:2] + [(8192, 8192, 0)])
                    + path.read_bytes()[offset:])
    w = ["--weights", tiny_weights]
    assert run("decode", big, "-o", tmp_path / "o.png", *w) == 2
    assert f"layer 2: 8192x8192 is 67108864 pixels, over the limit of {limits.CLI_MAX_PIXELS}" in one_line(capsys)
    assert run("info", big) == 0 and run("extract", big, "--layer", "1", "-o", tmp_path / "x.cmp") == 0
    assert run("decode", path, "-o", tmp_path / "o.png", "--max-pixels", 67 * 45 - 1, *w) == 2
    assert "over the limit of 3014" in one_line(capsys)
    assert run("encode", png, tmp_path / "o.cmp", "--max-pixels", 67 * 45 - 1, *w) == 2
    assert "above the limit of 3014" in one_line(capsys)
    assert run("encode", png, tmp_path / "o.cmp", "--max-pixels", 67 * 45, "--quiet", *w) == 0
    assert not (tmp_path / "o.png").exists()


def test_long_decodes_report_progress(three, tmp_path, tiny_weights, capsys, monkeypatch):
    """Issue 22, row 12: a decode declaring over `limits.PROGRESS_PIXELS` pixels says which layer it decodes."""
    w = ["--weights", tiny_weights]
    assert run("decode", three[0], "-o", tmp_path / "o.png", *w) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(limits, "PROGRESS_PIXELS", 17 * 11 + 34 * 22 + 67 * 45 - 1)
    assert run("decode", three[0], "-o", tmp_path / "o.png", *w) == 0
    assert [line.split(" after ")[0] for line in capsys.readouterr().err.splitlines()] == [
        "compass decode: decoding layer 0 (17x11)", "compass decode: decoding layer 1 (34x22)",
        "compass decode: decoding layer 2 (67x45)"]
    assert run("decode", three[0], "-o", tmp_path / "o.png", "--quiet", *w) == 0
    assert capsys.readouterr().err == ""


_CTRL_C = r"""
import os, signal, sys, time
from compass.api import Compass

def interrupted(self, *args, **kwargs):  # Ctrl-C while the encoder works
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)

Compass.encode = interrupted
from compass.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(png, tmp_path, tiny_weights):
    """Issue 22, row 14."""
    proc = run_python(_CTRL_C, "encode", str(png), str(tmp_path / "o.cmp"), "--weights", str(tiny_weights))
    assert (proc.returncode, proc.stderr) == (130, "compass encode: interrupted\n")
    assert sorted(os.listdir(tmp_path)) == ["in.png"]


def test_a_reader_that_goes_away_ends_info_quietly(three):
    """Issue 22, row 15: `compass info x.cmp | head -1` exits quietly, as tools that SIGPIPE kills (128 + 13)."""
    proc = subprocess.Popen([sys.executable, "-m", "compass", "info", str(three[0])], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes anything: every write fails
    assert proc.wait(timeout=60) == 141 and proc.stderr.read() == b""
    proc.stderr.close()


def test_decode_all_removes_older_outputs_it_could_not_replace(three, tmp_path, tiny_weights, capsys):
    """Issue 22, row 16: `decode --all` of a file whose layer 2 is damaged, over an older set of outputs, writes
    layers 0 and 1, removes the older _L2 (it belongs with other images) and says so."""
    damaged = tmp_path / "d.cmp"
    damaged.write_bytes(three[0].read_bytes()[:-1])
    for k in range(3):
        (tmp_path / f"o_L{k}.png").write_bytes(b"older")
    assert run("decode", damaged, "--all", "-o", tmp_path / "o.png", "--weights", tiny_weights) == 2
    assert one_line(capsys).endswith(f"removed the older {tmp_path / 'o_L2.png'}")
    assert not (tmp_path / "o_L2.png").exists()
    assert [Image.open(tmp_path / f"o_L{k}.png").size for k in range(2)] == [(17, 11), (34, 22)]
