"""`compass eval`: the quick evaluation end to end with tiny models, its cache, its byte accounting, its tables."""
import json
import re

import numpy as np
import pytest
from conftest import REPO, synthetic_image, tiny_scalable_weights
from PIL import Image

from compass import bitstream
from compass.api import Compass
from compass.cli import main
from compass.evaluate import run
from compass.evaluate.report import load_results
from compass.evaluate.baselines import hevc444
from compass.evaluate.report import Footnotes, bd_table
from compass.models import load
from compass.paths import data_dir
from compass.pixels import to_tensor
from compass.resample import plan_from_scales


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """A folder with two 64x48 crops of Kodak images (synthetic images where Kodak is missing)."""
    folder = tmp_path_factory.mktemp("images")
    for i, (name, seed) in enumerate([("kodim05.png", 1), ("kodim23.png", 2)]):
        path = data_dir("kodak") / name
        if path.is_file():
            img = np.asarray(Image.open(path).convert("RGB"))[200:248, 300:364]
        else:
            img = (synthetic_image(48, 64, seed)[0].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def quick(crops, tiny_weights, tiny_single_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    results = run.evaluate(crops, out, quick=True, model=tiny_weights, single=tiny_single_weights, progress=False)
    return results, out


def _point(results, method, config, image="img0.png", index=1):
    pts = [p for p in results["points"] if (p["method"], p["config"], p["image"]) == (method, config, image)]
    return pts[index]


def test_configs_and_plans():
    sizes = {c.name: plan_from_scales(512, 768, c.scales) for c in run.CONFIGS}
    assert sizes["2L-2.0x"] == [(256, 384), (512, 768)]
    assert sizes["3L-4.0x"] == [(128, 192), (256, 384), (512, 768)]  # middle at the geometric middle
    assert sizes["3L-2.8x"][0] == (183, 274)  # 512 / 2.8, 768 / 2.8 rounded
    assert [c.name for c in run.CONFIGS if c.dyadic] == ["2L-2.0x", "3L-4.0x"]


def test_quick_run_fills_every_cell(quick):
    results, out = quick
    setup = results["setup"]
    assert [im["name"] for im in setup["images"]] == ["img0.png", "img1.png"]
    assert set(setup["methods"]) == set(run.METHODS)
    for m in run.METHODS.values():
        for c in run.CONFIGS:
            pts = [p for p in results["points"] if p["method"] == m.name and p["config"] == c.name]
            assert len(pts) == (6 if run.applies(m, c) else 0)  # 2 images x 3 rate points
            for p in pts:
                layers = p["layers"]
                assert [l["layer"] for l in layers] == ([c.layers - 1] if m.kind == "single" else
                                                        list(range(c.layers)))
                assert all(l["bytes"] >= l["bytes_noheader"] > 0 and np.isfinite(l["psnr"]) for l in layers)
                assert [l["bytes"] for l in layers] == sorted(l["bytes"] for l in layers)  # accumulated
                assert (layers[-1]["height"], layers[-1]["width"]) == (48, 64)

    bd = results["summary"]["bd"]
    for value in ("bd_rate", "bd_psnr", "bd_rate_noheader", "bd_rate_msssim"):
        notes = Footnotes()
        rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:]
                for line in bd_table(results, value, paper=False, notes=notes).splitlines()[2:]}
        for name, m in run.METHODS.items():
            if name == "compass":
                continue
            for c, cell in zip(run.CONFIGS, rows[m.label]):
                if not run.applies(m, c):
                    assert cell == "—" and c.name not in bd[name]
                    continue
                entry = bd[name][c.name]
                if entry[value] is None:  # NaN only with its reason, printed as a footnote
                    assert entry[f"{value}_reason"]
                    number = int(re.fullmatch(r"n/a\[\^(\d+)\]", cell).group(1))
                    assert notes.reasons[number - 1] == f"{name}, {c.name}: {entry[f'{value}_reason']}"
                else:
                    assert cell == f"{entry[value]:+.2f}"
    # random tiny models reach ~7 dB, so BD-rates mostly have no PSNR overlap, but BD-PSNR overlaps in rate
    assert sum(e["bd_psnr"] is not None for per in bd.values() for e in per.values()) >= 40
    report = (out / "report.md").read_text()
    assert "*paper: SHVC*" in report and "-53.88" in report
    assert "2 images from" in report and "subset" not in report
    cited = set(re.findall(r"n/a\[\^(\d+)\]", report))
    assert cited == set(re.findall(r"^\[\^(\d+)\]: .+$", report, re.M))  # every footnote cited and defined

    back = load_results(out)
    assert back["points"] == json.loads(json.dumps(results["points"])) and "points" not in json.loads(
        (out / "results.json").read_text())
    assert back["summary"] == json.loads(json.dumps(results["summary"]))
    for c in run.CONFIGS:
        assert (out / f"rd_{c.name}.png").stat().st_size > 10_000
    assert (out / "visual.png").stat().st_size > 10_000


def test_bytes_accounting(quick, crops, tiny_weights, tiny_single_weights):
    results, _ = quick
    image = run.EvalImage(crops / "img0.png")
    plan = plan_from_scales(48, 64, (2.0, 2.0))

    p = _point(results, "compass", "3L-4.0x")
    data = Compass(tiny_weights).encode(image.pixels, sizes=plan, quality=p["param"])
    meta = bitstream.info(data)
    assert [l["bytes"] for l in p["layers"]] == [l["total_bytes"] for l in meta["layers"]]
    assert p["layers"][-1]["bytes"] == len(data)
    assert [l["bytes_noheader"] for l in p["layers"]] == [l["total_bytes"] - meta["header_bytes"]
                                                          for l in meta["layers"]]
    assert [l["layer_bytes"] for l in p["layers"]] == [meta["header_bytes"] + meta["layers"][0]["chunk_bytes"]] + [
        l["chunk_bytes"] for l in meta["layers"][1:]]
    assert p["layers"][0]["bpp"] == 8 * p["layers"][0]["bytes"] / (12 * 16)

    # simulcast: one 1-layer compass file per layer, sizes added
    loaded = load(tiny_single_weights)
    codec = loaded.model.base
    s = _point(results, "simulcast", "3L-4.0x")
    files = []
    for h, w in plan:
        out = codec.compress(to_tensor(image.target((h, w))), bitstream.quantize_quality(s["param"]))
        header = bitstream.Header(loaded.name, bytes.fromhex(loaded.id)[:8], (bitstream.LayerInfo(h, w, s["param"]),))
        files.append(bitstream.write(header, [bitstream.Chunk(tuple(out["strings"]), out["check"])]))
    assert [l["layer_bytes"] for l in s["layers"]] == [len(f) for f in files]
    assert [l["bytes"] for l in s["layers"]] == list(np.cumsum([len(f) for f in files]))
    header_bytes = bitstream.info(files[0])["header_bytes"]
    assert s["layers"][-1]["bytes_noheader"] == sum(len(f) for f in files) - 3 * header_bytes
    single = _point(results, "single", "3L-4.0x")
    assert single["layers"][0]["bytes"] == len(files[-1])

    h = _point(results, "hevc-simulcast", "2L-2.0x", index=0)
    targets = [image.target(size) for size in plan_from_scales(48, 64, (2.0,))]
    assert h["layers"][-1]["bytes"] == sum(hevc444(t, h["param"]).num_bytes for t in targets)


def test_cache_skips_work_and_tracks_weights(quick, crops, tiny_weights, tiny_single_weights, tmp_path,
                                             monkeypatch):
    results, out = quick

    def refuse(*args, **kwargs):
        raise AssertionError("a cached job was coded again")

    with monkeypatch.context() as m:
        m.setattr(Compass, "encode", refuse)
        m.setattr(run, "classical_layer_job", refuse)
        again = run.evaluate(crops, quick=True, model=tiny_weights, single=tiny_single_weights,
                             cache=out / "cache", progress=False)
    assert again["stats"]["run"] == 0 and again["stats"]["cached"] == results["stats"]["jobs"]
    assert again["points"] == results["points"] and again["summary"] == results["summary"]

    # other weights: the compass (layer mode auto), predicted and ablation jobs run again, the baselines come from
    # the cache
    other = tiny_scalable_weights(tmp_path / "other.pt", seed=5)
    configs = ["2L-1.6x", "3L-4.0x"]
    new = run.evaluate(crops, quick=True, model=other, single=tiny_single_weights, configs=configs,
                       cache=out / "cache", progress=False)
    assert new["stats"]["run"] == 3 * 2 * 2 * 3  # (compass, predicted, ablation) x configs x images x q


def test_shards_split_the_jobs_and_a_plain_run_assembles_them(quick, crops, tiny_weights, tiny_single_weights,
                                                              tmp_path, monkeypatch):
    results, _ = quick
    cache, cfg = tmp_path / "cache", ["2L-2.0x"]
    stats = [run.evaluate(crops, quick=True, model=tiny_weights, single=tiny_single_weights, cache=cache,
                          configs=cfg, progress=False, shard=(i, 2))["stats"] for i in range(2)]
    assert all(s["run"] > 0 for s in stats)

    def refuse(*args, **kwargs):
        raise AssertionError("a job the shards ran was coded again")

    with monkeypatch.context() as m:
        m.setattr(Compass, "encode", refuse)
        m.setattr(run, "classical_layer_job", refuse)
        whole = run.evaluate(crops, quick=True, model=tiny_weights, single=tiny_single_weights, cache=cache,
                             configs=cfg, progress=False)
    assert whole["stats"]["run"] == 0 and sum(s["run"] for s in stats) == whole["stats"]["jobs"]  # disjoint shares
    assert whole["points"] == [p for p in results["points"] if p["config"] in cfg]
    with pytest.raises(ValueError, match="cache"):
        run.evaluate(crops, quick=True, model=tiny_weights, single=tiny_single_weights, progress=False, shard=(0, 2))


def test_training_history_follows_checkpoints_and_shipped_sources():
    """The report counts the steps of the runs a stage continued: a checkpoint (init_from with a stage record)
    and shipped weights (init_from / shipped_sources with a training record holding a stage of that name), read
    from older nested records through `provenance.flatten`."""
    from compass.provenance import flatten, history

    def steps(stage: dict) -> list[int]:
        flat = flatten({"recipe": "r", "stages": [stage]})
        return history(flat, flat["model_stages"][-1])

    cpu_base = {"stage": "base", "steps": 40000, "init_from": None}
    call1 = {"stage": "base", "steps": 4915,
             "init_from": {"source": "compass-cpu-single", "training": {"stages": [cpu_base]}}}
    call2 = {"stage": "base", "steps": 4565, "init_from": {"source": "runs/x/checkpoint.pt", "stage": call1}}
    assert steps(call2) == [40000, 4915, 4565]
    joint = {"stage": "joint", "steps": 443, "init_from": None,
             "shipped_sources": {"base_from": {"training": {"stages": [cpu_base]}},
                                 "residual_from": {"training": {"stages": [cpu_base, {"stage": "joint", "steps": 7000}]}}}}
    assert steps(joint) == [7000, 443]
    assert steps({"stage": "liff", "steps": 5}) == [5]


@pytest.mark.parametrize("folder", ["kodak-compass-cpu-mini", "kodak"])
def test_report_is_the_same_from_nested_and_flat_training_records(folder):
    """The committed report regenerates byte for byte from its results.json, whose model records are nested (as
    evaluations before flat provenance wrote them), and from the same records laid out flat."""
    from compass.evaluate.report import report_markdown
    from compass.provenance import flatten

    path = REPO / "results" / folder
    results = load_results(path)
    want = (path / "report.md").read_text()
    assert report_markdown(results, visual=True) == want
    for m in results["setup"]["models"].values():
        m["info"] = flatten(m["info"])
        ids = [s["id"] for s in m["info"]["stages"]]
        assert flatten(m["info"]) is m["info"] and len(set(ids)) == len(ids)
    assert report_markdown(results, visual=True) == want


def test_shipped_manifest_holds_flat_training_records():
    """Each shipped model's training is a flat list of stages, each once, each parent named by an id in the list;
    the steps of compass-cpu-mini's joint stage follow its chain of runs back to compass-cpu's."""
    from compass.provenance import history
    from compass.weights import manifest

    for entry in manifest()["models"].values():
        training = entry["training"]
        ids = [s["id"] for s in training["stages"]]
        assert len(set(ids)) == len(ids) and set(training["model_stages"]) <= set(ids)
        for i, stage in enumerate(training["stages"]):
            assert all(p["stage"] in ids[:i] for p in stage["from"].values() if p["stage"] is not None)
    mini = manifest()["models"]["compass-cpu-mini"]["training"]
    assert history(mini, mini["model_stages"][-1]) == [7000, 3000, 551, 3000, 2226, 8130, 3000]


def test_known_bd_and_reasons(quick):
    """Anchors at twice compass's bytes for the same PSNR give -50 %; curves without overlap give a reason."""
    results, _ = quick
    points = []
    for method, factor, shift in (("compass", 1, 0), ("simulcast", 2, 0), ("hevc-simulcast", 1, 100)):
        for q, (bpp, db) in enumerate([(0.2, 28.0), (0.5, 32.0), (1.0, 36.0), (2.0, 40.0)]):
            layer = {"layer": 1, "bpp": bpp * factor, "bpp_noheader": bpp * factor, "psnr": db + shift,
                     "ms_ssim": 1 - 10 ** (-db / 20)}
            points.append({"method": method, "config": "2L-2.0x", "image": "a", "param": q, "layers": [layer]})
    fake = {"setup": {"configs": {"2L-2.0x": results["setup"]["configs"]["2L-2.0x"]},
                      "methods": {m: results["setup"]["methods"][m] for m in ("compass", "simulcast",
                                                                               "hevc-simulcast")}},
            "points": points}
    fake["summary"] = run.summarize(fake)
    bd = fake["summary"]["bd"]
    assert bd["simulcast"]["2L-2.0x"]["bd_rate"] == pytest.approx(-50.0, abs=1e-6)
    assert bd["simulcast"]["2L-2.0x"]["bd_rate_msssim"] == pytest.approx(-50.0, abs=1e-6)
    assert bd["hevc-simulcast"]["2L-2.0x"]["bd_rate"] is None
    assert "do not overlap" in bd["hevc-simulcast"]["2L-2.0x"]["bd_rate_reason"]
    table = bd_table(fake)
    assert "| Simulcast (single-layer codec) | -50.00 |" in table
    assert "| *paper: Simulcast (Mean-Scale)* | *-16.29* |" in table
    assert "| HEVC-444 simulcast (x265) | n/a[^1] |" in table


def test_cli_eval(crops, tiny_weights, tiny_single_weights, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["eval", "--data", str(crops), "--out", str(out), "--quick", "--model", str(tiny_weights),
                 "--single", str(tiny_single_weights), "--methods", "simulcast", "--images", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Simulcast (single-layer codec)" in printed and "HEVC" not in printed
    assert (out / "report.md").is_file() and (out / "cache").is_dir()
    assert len(json.loads((out / "results.json").read_text())["setup"]["images"]) == 1
    assert "(img0.png .. img0.png; the first 1 of its 2, a subset)" in (out / "report.md").read_text()

    assert main(["eval", "--data", str(crops), "--out", str(out), "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'no-such-model'" in err and "not available" in err

    alone = tmp_path / "alone"  # compass only, what compass.evaluate.compare needs
    assert main(["eval", "--data", str(crops), "--out", str(alone), "--quick", "--model", str(tiny_weights),
                 "--methods", "none", "--images", "1", "--quiet"]) == 0
    assert list(json.loads((alone / "results.json").read_text())["setup"]["methods"]) == ["compass"]
    capsys.readouterr()
    assert main(["eval", "--data", str(crops), "--out", str(alone), "--methods", "none", "simulcast"]) == 2
    assert "takes no other method" in capsys.readouterr().err


def test_committed_results_name_no_machine_path(monkeypatch, tmp_path):
    from compass.paths import REPO_ROOT, portable

    monkeypatch.setenv("COMPASS_SHARED", str(tmp_path / "shared"))
    assert portable(tmp_path / "shared" / "data" / "kodak") == "<shared>/data/kodak"
    assert portable(REPO_ROOT / "examples" / "kingfisher.png") == "./examples/kingfisher.png"
    assert portable(REPO_ROOT) == "."
    assert portable(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")  # the user's own path, as given


def test_compare_reports_bd_rate_per_configuration_and_layer():
    """compass.evaluate.compare: the same curves give 0%, 10% more bits at every point give +10%, and results
    from other images are refused."""
    from compass.evaluate.compare import compare

    curve = {"bpp": [0.2, 0.4, 0.7, 1.0], "psnr": [27.0, 29.0, 30.5, 31.5]}
    anchor = {"setup": {"images": [{"name": "a.png"}]},
              "summary": {"curves": {"compass": {"2L-2.0x": {"0": curve, "1": curve}}}}}
    more = {"bpp": [b * 1.1 for b in curve["bpp"]], "psnr": curve["psnr"]}
    test = {"setup": anchor["setup"], "summary": {"curves": {"compass": {"2L-2.0x": {"0": curve, "1": more}}}}}
    rows = compare(test, anchor)
    assert [(r["config"], r["layer"]) for r in rows] == [("2L-2.0x", 0), ("2L-2.0x", 1)]
    assert rows[0]["bd_rate"] == pytest.approx(0, abs=1e-9) and rows[1]["bd_rate"] == pytest.approx(10, abs=1e-6)
    with pytest.raises(ValueError, match="different images"):
        compare({**test, "setup": {"images": [{"name": "b.png"}]}}, anchor)
