"""`compass encode-dir`: a folder of images to a folder of compass files, in worker processes, resumable, going
on past a failing image; and the layer plan from widths it uses."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from compass import bitstream
from compass.encodedir import encode_dir
from compass.resample import plan_from_widths

from conftest import REPO, synthetic_image

MODEL = "compass-cpu-mini"


def test_plan_from_widths_keeps_the_aspect_and_ends_with_the_image():
    assert plan_from_widths(512, 768, [192, 384]) == [(128, 192), (256, 384), (512, 768)]
    assert plan_from_widths(100, 300, [1000, 200, 50, 200, 0]) == [(17, 50), (67, 200), (100, 300)]
    assert plan_from_widths(100, 300, [300, 600]) == [(100, 300)]


def _widths(path) -> list[int]:
    return [layer.width for layer in bitstream.read_header(path.read_bytes())[0].layers]


def test_encode_dir_encodes_in_workers_resumes_and_goes_on_past_failures(tmp_path):
    from compass.pixels import to_pixels

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / ".git").mkdir()
    for name, (h, w), seed in (("a.png", (48, 64), 0), ("sub/b.jpg", (60, 80), 1), ("c.png", (40, 40), 2),
                               ("c.webp", (40, 40), 3), (".hidden.png", (40, 40), 4), (".git/d.png", (40, 40), 5)):
        Image.fromarray(to_pixels(synthetic_image(h, w, seed))).save(src / name, quality=95)
    (src / "bad.png").write_bytes(b"\x89PNG not really")
    (src / "notes.txt").write_text("not an image")
    out = subprocess.run([sys.executable, "-m", "compass", "encode-dir", str(src), str(dst), "--model", MODEL,
                          "--sizes", "20,40", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "3 encoded, 0 up to date, 2 failed"
    assert f"{src / 'bad.png'}: not a PNG" in out.stderr
    assert f"{src / 'c.webp'}: {dst / 'c.cmp'} is already" in out.stderr
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == ["a.cmp", "c.cmp", "sub", "sub/b.cmp"]
    assert _widths(dst / "a.cmp") == [20, 40, 64] and _widths(dst / "sub" / "b.cmp") == [20, 40, 80]
    assert _widths(dst / "c.cmp") == [20, 40]

    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.cmp")}
    newer = before[dst / "a.cmp"] + 10**9
    os.utime(src / "a.png", ns=(newer, newer))
    failures = []
    done = encode_dir(src, dst, widths=[20, 40], model=MODEL, jobs=1, progress=False, report=failures.append)
    assert done.encoded == [src / "a.png"] and sorted(done.skipped) == [src / "c.png", src / "sub" / "b.jpg"]
    assert [s for s, _ in done.failed] == [src / "c.webp", src / "bad.png"] and len(failures) == 2
    assert (dst / "a.cmp").stat().st_mtime_ns > before[dst / "a.cmp"]
    assert all(p.stat().st_mtime_ns == before[p] for p in before if p.name != "a.cmp")
    from compass.api import Compass

    decoded = Compass(MODEL).decode((dst / "a.cmp").read_bytes(), 0)
    assert decoded.shape == (15, 20, 3) and decoded.dtype == np.uint8


def test_encode_dir_refuses_an_unknown_model_before_starting_workers(tmp_path):
    (tmp_path / "src").mkdir()
    from compass.weights import WeightsError

    with pytest.raises(WeightsError, match="unknown model"):
        encode_dir(tmp_path / "src", tmp_path / "dst", model="no-such-model")
