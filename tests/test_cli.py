"""The CLI: every command, exit codes, one-line errors, atomic outputs."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from compass import bitstream
from compass.cli import main


@pytest.fixture()
def png(tmp_path, photo_pixels):
    path = tmp_path / "in.png"
    Image.fromarray(photo_pixels).save(path)
    return path


def run(*argv):
    return main([str(a) for a in argv])


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
