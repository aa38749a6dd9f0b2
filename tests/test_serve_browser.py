"""The gallery in a real browser: headless Chromium (Debian's package, installed by scripts/install_chromium.sh
when missing) driven by Playwright loads the page at a 400 px and a 1600 px wide viewport. The small viewport
must fetch the small layers, and the server must read only those layers' prefixes for them."""
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="compass serve needs the serve extra (pip install -e '.[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra (pip install -e "
                                                              "'.[test]')")

from compass import bitstream  # noqa: E402

from conftest import REPO, compass_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def chromium() -> str:
    if not shutil.which(CHROMIUM):
        out = subprocess.run(["bash", str(REPO / "scripts" / "install_chromium.sh")], capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            pytest.skip(f"Chromium cannot be installed here: {(out.stderr or out.stdout).strip()[-500:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Two 768x512 photos in three layers (192, 384 and 768 wide) behind a running server."""
    from compass.api import Compass

    root = tmp_path_factory.mktemp("gallery")
    (root / "served").mkdir()
    with Image.open(REPO / "examples" / "kingfisher.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    codec = Compass("compass-cpu-mini")
    ends = {}
    for name, image in (("kingfisher", pixels), ("mirrored", np.ascontiguousarray(pixels[:, ::-1]))):
        data = codec.encode(image, layers=(0.25, 0.5, 1))
        (root / "served" / f"{name}.cmp").write_bytes(data)
        ends[name] = [layer["total_bytes"] for layer in bitstream.info(data)["layers"]]
    with compass_server(root / "served", root / "cache", "--workers", "2") as server:
        yield server, ends


def _load(browser, url: str, width: int, screenshot) -> dict:
    """Open the page at `width` x 900 CSS px (pixel ratio 1): which images the browser took, what it fetched,
    and the server's byte counts for those fetches."""
    context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
    try:
        page = context.new_page()
        fetched = []
        page.on("response", lambda r: fetched.append((r.url, r.status, r.all_headers())) if "/img/" in r.url else None)
        page.goto(url)
        page.wait_for_load_state("networkidle")
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.wait_for_function("[...document.querySelectorAll('.read')].every(c => c.textContent !== 'loading')")
        chosen = page.evaluate("[...document.images].map(i => [i.alt, i.currentSrc])")
        captions = page.evaluate("[...document.querySelectorAll('.read')].map(c => c.textContent)")
        page.screenshot(path=str(screenshot))
        return {"chosen": chosen, "captions": captions, "fetched": fetched}
    finally:
        context.close()


def test_small_viewport_fetches_small_layers_read_from_a_prefix(chromium, gallery, tmp_path):
    server, ends = gallery
    url = f"http://127.0.0.1:{server.port}/"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            small = _load(browser, url, 400, tmp_path / "gallery-400.png")
            large = _load(browser, url, 1600, tmp_path / "gallery-1600.png")
        finally:
            browser.close()
    # 400 px: one column 368 px wide -> the 384 px layer; 1600 px: two columns of 768 px -> the 768 px layer
    for seen, layer, width in ((small, 1, 384), (large, 2, 768)):
        assert sorted(seen["chosen"]) == [["kingfisher", f"{url}img/kingfisher?layer={layer}"],
                                          ["mirrored", f"{url}img/mirrored?layer={layer}"]]
        assert sorted(u for u, _, _ in seen["fetched"]) == [f"{url}img/kingfisher?layer={layer}",
                                                            f"{url}img/mirrored?layer={layer}"]
        for fetched_url, status, headers in seen["fetched"]:
            name = fetched_url.split("/img/")[1].split("?")[0]
            assert status == 200 and headers["content-type"] == "image/webp"
            assert (headers["x-compass-layer"], headers["x-compass-cache"]) == (str(layer), "miss")
            assert int(headers["x-compass-bytes-read"]) == ends[name][layer]  # the prefix through that layer
        assert sorted(seen["captions"]) == sorted(f"layer {layer}, {width}\u00d7{width * 2 // 3}: reads "
                                                  f"{e[layer]:,} of {e[-1]:,} bytes ({round(100 * e[layer] / e[-1])}%)"
                                                  for e in ends.values())
    read = {size: sum(int(h["x-compass-bytes-read"]) for _, _, h in seen["fetched"])
            for size, seen in ((400, small), (1600, large))}
    assert read[400] < read[1600] / 2, read
    for width in (400, 1600):
        with Image.open(tmp_path / f"gallery-{width}.png") as shot:
            assert shot.size == (width, 900)
            assert len(shot.convert("L").getcolors(1 << 16)) > 100  # photos on the page, not a blank one
