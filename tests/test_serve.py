"""`compass serve` through a real HTTP client against a real server process on 127.0.0.1: layer choice, formats,
caching headers, Range, names outside the folder, errors, one decode for concurrent requests, and the bytes of
each file the server reads (its own count, X-Compass-Bytes-Read)."""
import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="compass serve needs the serve extra (pip install -e '.[serve]')")

from compass import bitstream  # noqa: E402
from compass.serve.app import negotiate  # noqa: E402
from compass.serve.cache import DiskCache  # noqa: E402

from conftest import REPO, compass_server  # noqa: E402

MODEL = "compass-cpu-mini"
SIZES = [(32, 48), (64, 96), (128, 192)]  # (height, width) of the three layers


@pytest.fixture(scope="module")
def codec():
    from compass.api import Compass

    return Compass(MODEL)


@pytest.fixture(scope="module")
def photo(codec) -> bytes:
    with Image.open(REPO / "examples" / "kingfisher.png") as im:
        pixels = np.asarray(im.convert("RGB").resize((192, 128), Image.LANCZOS))
    return codec.encode(pixels, layers=(0.25, 0.5, 1))


def _ends(data: bytes) -> list[int]:
    return [layer["total_bytes"] for layer in bitstream.info(data)["layers"]]


def _flip(data: bytes, layer: int) -> bytes:
    """`data` with one payload byte of `layer`'s chunk changed (its CRC then fails)."""
    at = _ends(data)[layer] - 3
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo) -> dict:
    root = tmp_path_factory.mktemp("serve")
    served, outside = root / "served", root / "outside"
    (served / "sub").mkdir(parents=True)
    outside.mkdir()
    files = {"photo": photo, "sub/photo2": photo, "damaged": _flip(photo, 2), "broken": _flip(photo, 0),
             "truncated": photo[:_ends(photo)[1] + 40], "notes": b"not a compass file\n",
             "fresh": photo, "fresh2": photo, "burst": photo, "log": photo}
    for name, data in files.items():
        (served / f"{name}.cmp").write_bytes(data)
    (outside / "secret.cmp").write_bytes(photo)
    (served / ".hidden.cmp").write_bytes(photo)
    os.symlink(outside / "secret.cmp", served / "escape.cmp")
    os.symlink(served / "photo.cmp", served / "inlink.cmp")
    return {"root": root, "served": served}


@pytest.fixture(scope="module")
def server(folder):
    with compass_server(folder["served"], folder["root"] / "cache", "--workers", "1", "--cache-mb", "64") as s:
        yield s


def _image(body: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(body))
    im.load()
    return im


CHROME_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


@pytest.mark.parametrize("width, layer", [(1, 0), (48, 0), (49, 1), (96, 1), (97, 2), (192, 2), (5000, 2)])
def test_width_gets_the_smallest_layer_at_least_that_wide(server, width, layer):
    status, headers, body = server.get(f"/img/photo?w={width}")
    assert status == 200, body
    assert headers["content-type"] == "image/png" and headers["x-compass-layer"] == str(layer)
    assert _image(body).size == SIZES[layer][::-1]


def test_accept_header_chooses_webp_or_png(server):
    status, headers, body = server.get("/img/photo?layer=1", {"Accept": CHROME_ACCEPT})
    assert status == 200 and headers["content-type"] == "image/webp"
    assert _image(body).format == "WEBP" and _image(body).size == (96, 64)
    assert server.get("/img/photo?layer=1", {"Accept": "*/*"})[1]["content-type"] == "image/png"


@pytest.mark.parametrize("accept, fmt", [(CHROME_ACCEPT, "webp"), (None, "png"), ("*/*", "png"),
                                         ("image/webp;q=0", "png"), ("image/png, image/webp;q=0.5", "png"),
                                         ("image/webp, image/png;q=0.9", "webp"), ("image/webp;q=abc", "webp")])
def test_negotiate(accept, fmt):
    assert negotiate(accept) == fmt


def test_png_holds_the_decoded_layer_exactly(server, codec, photo):
    for k in range(3):
        status, _, body = server.get(f"/img/photo?layer={k}")
        assert status == 200
        assert np.array_equal(np.asarray(_image(body).convert("RGB")), codec.decode(photo, k))


def test_server_reads_only_the_prefix_of_the_layer_it_decodes(server, folder, photo):
    ends, header_bytes = _ends(photo), bitstream.info(photo)["header_bytes"]
    layout = header_bytes + 8 * len(ends)  # the header and each chunk's framing, read once per file version
    for version in (1, 2):  # a new version of the file is located and read again
        os.utime(folder["served"] / "fresh.cmp", ns=(version, version))
        status, headers, _ = server.get("/img/fresh?layer=0")
        assert status == 200 and headers["x-compass-cache"] == "miss"
        assert int(headers["x-compass-bytes-read"]) == layout + ends[0]
        assert ends[0] < len(photo) / 5
        _, headers, _ = server.get("/img/fresh?w=60")
        assert (headers["x-compass-layer"], int(headers["x-compass-bytes-read"])) == ("1", ends[1])
        _, headers, _ = server.get("/img/fresh?layer=0")
        assert (headers["x-compass-cache"], headers["x-compass-bytes-read"]) == ("hit", "0")


def test_etag_names_the_layer_and_format_and_revalidates(server):
    _, png, _ = server.get("/img/photo?layer=1")
    _, webp, _ = server.get("/img/photo?layer=1", {"Accept": "image/webp"})
    _, top, _ = server.get("/img/photo?layer=2")
    assert re.fullmatch(r'"[0-9a-f]{20}-L1"', png["etag"]) and webp["etag"] == png["etag"][:-1] + '.webp"'
    assert top["etag"] != png["etag"]
    assert png["cache-control"] == "public, max-age=3600" and png["vary"] == "Accept"
    status, headers, body = server.get("/img/photo?layer=1", {"If-None-Match": png["etag"]})
    assert (status, body, headers["etag"]) == (304, b"", png["etag"])
    assert server.get("/img/photo?layer=1", {"If-None-Match": top["etag"]})[0] == 200


def test_raw_file_with_range_gives_a_decodable_layer_prefix(server, codec, photo):
    status, headers, _ = server.get("/cmp/photo", method="HEAD")
    ends = [int(v) for v in headers["x-compass-layer-ends"].split(",")]
    assert status == 200 and ends == _ends(photo) and headers["accept-ranges"] == "bytes"
    status, headers, body = server.get("/cmp/photo", {"Range": f"bytes=0-{ends[1] - 1}"})
    assert status == 206 and headers["content-range"] == f"bytes 0-{ends[1] - 1}/{len(photo)}"
    assert body == photo[:ends[1]]
    assert np.array_equal(codec.decode(body, 1), codec.decode(photo, 1))
    status, _, body = server.get("/cmp/photo", {"Range": "bytes=-10"})
    assert (status, body) == (206, photo[-10:])
    assert server.get("/cmp/photo", {"Range": f"bytes={len(photo) + 5}-"})[0] == 416
    status, _, body = server.get("/cmp/photo")
    assert (status, body) == (200, photo)


@pytest.mark.parametrize("path", ["/img/../outside/secret", "/img/%2e%2e/outside/secret", "/img//etc/passwd",
                                  "/img/escape", "/cmp/escape", "/cmp/../outside/secret", "/img/sub/../photo",
                                  "/img/.hidden", "/cmp/%2E%2E/outside/secret", "/img/sub%2F..%2F..%2Foutside/secret"])
def test_names_outside_the_folder_are_not_served(server, path):
    status, _, body = server.get(path)
    assert status == 404, body


def test_subfolders_and_links_inside_the_folder_are_served(server):
    assert server.get("/img/sub/photo2?layer=0")[0] == 200
    assert server.get("/img/inlink?layer=0")[0] == 200


def test_errors(server, photo):
    assert server.get("/img/nothere")[0] == 404
    assert server.get("/img/notes")[:1] == (404,)
    status, headers, body = server.get("/img/broken?layer=0")
    assert (status, body) == (422, b"layer 0: chunk CRC mismatch (file damaged)\n")
    assert server.get("/img/photo?w=abc")[0] == 400
    assert server.get("/img/photo?w=0")[0] == 400
    assert server.get("/img/photo?w=10&layer=1")[0] == 400
    assert server.get("/img/photo?layer=3")[0] == 404


@pytest.mark.parametrize("name, why", [("damaged", "layer 2: chunk CRC mismatch"),
                                       ("truncated", "layer 2: chunk truncated")])
def test_damaged_upper_layer_serves_the_highest_intact_one(server, name, why):
    status, headers, body = server.get(f"/img/{name}?w=150")
    assert status == 200 and headers["x-compass-layer"] == "1" and _image(body).size == (96, 64)
    assert headers["x-compass-warning"].startswith(why) and headers["x-compass-warning"].endswith("served layer 1")
    _, headers, _ = server.get(f"/img/{name}?w=150")  # from the cache, still with the warning
    assert headers["x-compass-cache"] == "hit" and "x-compass-warning" in headers
    status, headers, _ = server.get(f"/img/{name}?layer=0")
    assert status == 200 and "x-compass-warning" not in headers


def test_concurrent_requests_for_a_layer_share_one_decode(server, photo):
    server.get("/cmp/burst", method="HEAD")  # the layout first, so that every count below is a decode's
    start = threading.Barrier(8)

    def fetch(_):
        start.wait()
        return server.get("/img/burst?layer=2", {"Accept": "image/webp"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(fetch, range(8)))
    assert all(status == 200 for status, _, _ in answers)
    assert len({body for _, _, body in answers}) == 1
    caches = sorted(headers["x-compass-cache"] for _, headers, _ in answers)
    assert caches.count("miss") == 1 and set(caches) <= {"miss", "shared", "hit"}, caches
    assert sum(int(headers["x-compass-bytes-read"]) for _, headers, _ in answers) == len(photo)


def test_gallery_offers_each_file_s_layers_in_srcset(server):
    status, headers, body = server.get("/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    srcset = re.search(r'<img src="[^"]*" srcset="([^"]*)" sizes="([^"]*)"', page)
    assert srcset.group(1) == "/img/broken?layer=0 48w, /img/broken?layer=1 96w, /img/broken?layer=2 192w"
    assert "100vw" in srcset.group(2)
    assert 'srcset="/img/truncated?layer=0 48w, /img/truncated?layer=1 96w" ' in page  # what the file holds
    assert "/img/sub/photo2?layer=2 192w" in page and "not a compass file" in page
    assert "secret" not in page and "escape" not in page and "hidden" not in page


def test_access_log_follows_uvicorn(server):
    server.get("/img/log?w=49")
    server.get("/img/damaged?w=150")
    log = server.log.read_text()
    assert re.search(r'INFO: +127\.0\.0\.1:\d+ - "GET /img/log\?w=49 HTTP/1\.1" 200', log)
    assert "WARNING:  damaged: layer 2: chunk CRC mismatch (file damaged); served layer 1" in log


def test_disk_cache_evicts_least_recently_used_over_its_cap(tmp_path):
    cache = DiskCache(tmp_path, 3000)
    for key in "abc":
        cache.put(key, {"k": key}, bytes(900))
    assert cache.get("a") == ({"k": "a"}, bytes(900))  # a is now the most recent
    cache.put("d", {}, bytes(900))
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.total_bytes <= 3000 and len(list(tmp_path.glob("*.entry"))) == 3
    cache.put("huge", {}, bytes(5000))  # above the cap: not stored, nothing evicted for it
    assert cache.get("huge") is None and cache.get("c") is not None
    again = DiskCache(tmp_path, 2000)  # a restart with a smaller cap keeps the most recently used
    assert again.get("c") is not None and again.get("a") is not None and again.get("d") is None
    assert DiskCache(tmp_path / "off", 0).get("a") is None and not (tmp_path / "off").exists()


def test_library_refuses_every_name_that_leads_out_of_the_folder(folder):
    from compass.serve.library import Library, NotFound

    library = Library(folder["served"])
    assert library.path("sub/photo2") == str(folder["served"] / "sub" / "photo2.cmp")
    assert library.path("inlink") == str(folder["served"] / "photo.cmp")
    outside = folder["root"] / "outside" / "secret"
    for name in ("../outside/secret", str(outside), "escape", "sub/../photo", ".hidden", "sub\\..\\photo", "a\0b",
                 "", "sub/", "nothere"):
        with pytest.raises(NotFound):
            library.path(name)
    assert "escape" not in library.names(100) and "sub/photo2" in library.names(100)
    assert library.names(2) == ["broken", "burst"]


def test_serve_refuses_bad_options_in_one_line(tmp_path, capsys):
    from compass.cli import main

    assert main(["serve", str(tmp_path), "--workers", "0"]) == 2
    assert main(["serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["compass serve: workers, max_pending, layouts and max_width must be at least 1",
                   f"compass serve: {tmp_path / 'nope'}: not a folder"]
