"""The training pipeline on a tiny recipe: stages run, resume is exact, NaN stops cleanly, DDP replicas agree."""
import copy
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from compass.train import train
from compass.train.config import load_recipe
from compass.train.loop import NonFiniteLoss, plot_log
from compass.train.stages import sample_sizes

from conftest import REPO, synthetic_image

RECIPE = {
    "name": "tiny", "seed": 3,
    "codec": load_recipe("tiny")["codec"],
    "liff": load_recipe("tiny")["liff"],
    "data": {"train": "unused", "val_count": 2, "val_crop": 32},
    "train": {"checkpoint_minutes": 0, "log_every": 1, "val_every": 2, "clip": 1.0, "aux_lr": 1e-3},
    "stages": {
        "base": {"steps": 4, "batch": 2, "crop": 32, "odd_fraction": 0.5, "lr": 1e-3, "lr_final": 1e-4,
                 "final_fraction": 0.25},
        "liff": {"steps": 2, "batch": 2, "crop": 32, "lr": 1e-3},
        "joint": {"steps": 2, "batch": 2, "crop": 48, "lr": 1e-3, "max_el_pixels": 1.7},
    },
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for i in range(6):
        px = (synthetic_image(60 + i, 70, seed=i)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(px).save(d / f"img{i}.png")
    return d


def params(ck, module):
    return {k: v.clone() for k, v in ck["modules"][module].items()}


def test_base_stage_logs_checkpoints_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
    straight = train(RECIPE, "base", tmp_path / "a", data=str(data_dir), threads=1, progress=False)
    assert straight["step"] == 4
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert {r["kind"] for r in rows} == {"train", "val"} and (tmp_path / "a" / "curves.png").stat().st_size > 0

    from compass.train import stages

    real, calls = stages.BaseStage.train_step, {"n": 0}

    def killed(self, sampler, gen):  # the process dies during step 3, after step 2's checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, sampler, gen)

    monkeypatch.setattr(stages.BaseStage, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(RECIPE, "base", tmp_path / "b", data=str(data_dir), threads=1, progress=False)
    monkeypatch.setattr(stages.BaseStage, "train_step", real)
    resumed = train(RECIPE, "base", tmp_path / "b", data=str(data_dir), threads=1, progress=False, resume=True)
    assert resumed["step"] == 4
    for k, v in params(straight, "base").items():
        assert torch.equal(v, resumed["modules"]["base"][k]), k
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "b" / "log.csv")) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # no duplicated rows after the resume


class _Clock:
    """A fake monotonic clock that training steps advance by `duration(step)` seconds."""

    def __init__(self, duration):
        self.now, self.steps, self.duration = 0.0, 0, duration

    def monotonic(self):
        return self.now


@pytest.mark.parametrize("case", ["steady", "faster after the probe", "slower after the lr switch"])
def test_time_budget_fits_the_steps_and_stops_at_the_deadline(case, tmp_path, data_dir, monkeypatch):
    from compass.train import loop, stages

    duration = {"steady": lambda k: 1.0, "faster after the probe": lambda k: 1.0 if k <= 6 else 0.25,
                "slower after the lr switch": lambda k: 1.0 if k <= 14 else 10.0}[case]
    clock = _Clock(duration)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(loop.Budget, "WARMUP", 2)
    monkeypatch.setattr(loop.Budget, "PROBE", 4)
    monkeypatch.setattr(loop.Budget, "REFIT", 0.05)  # every 1 s of the 20
    real = stages.BaseStage.train_step

    def timed(self, sampler, gen):
        clock.steps += 1
        clock.now += clock.duration(clock.steps)
        return real(self, sampler, gen)

    monkeypatch.setattr(stages.BaseStage, "train_step", timed)
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["base"]["steps"] = 1000
    recipe["train"].update(val_every=1000, checkpoint_minutes=1000)
    ck = train(recipe, "base", tmp_path, data=str(data_dir), threads=1, progress=False, time_budget=20)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == ck["step"]
    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "log.csv")) if r["kind"] == "train"]
    if case == "slower after the lr switch":  # stopped at the deadline, checkpointed, the stage unfinished
        assert (ck["step"], ck["stage_config"]["steps"], clock.now) == (15, 19, 24.0)
        return
    assert ck["step"] == ck["stage_config"]["steps"] and 16 <= clock.now <= 20  # most of the budget, not more
    assert lrs[0] == 1e-3 and lrs[-1] == 1e-4  # the schedule's final phase ran
    if case == "faster after the probe":  # the probe alone would have fitted 18 steps
        assert ck["step"] > 40


def test_pack_crops_leaves_the_validation_photos_out(tmp_path, data_dir):
    """compass.train.pack: the requested number of crops, from training photos only, at the crop size."""
    from compass.train.data import list_images, split
    from compass.train.pack import pack

    assert pack(data_dir, tmp_path / "p", count=12, crop=40, val_count=2) > 0
    crops = sorted((tmp_path / "p").iterdir())
    _, val = split(list_images(data_dir), 2)
    assert len(crops) == 12 and all(Image.open(c).size == (40, 40) for c in crops)
    assert not {c.name.rsplit("_", 1)[0] for c in crops} & {v.stem for v in val}


def test_checkpoints_keep_the_records_of_the_shipped_weights_they_start_from():
    """A stage keeps the training records of its shipped sources as they were when it started, and export
    uses those: exporting again after the sources were replaced (by this run's own export) changes nothing."""
    from compass.train.export import source_record
    from compass.train.loop import shipped_sources
    from compass.weights import manifest

    models = manifest()["models"]
    kept = shipped_sources({"residual_from": "compass-cpu", "liff_from": "runs/x/checkpoint.pt"}, "compass-cpu-single")
    assert set(kept) == {"init_from", "residual_from"}
    assert kept["residual_from"] == {"source": "compass-cpu", "training": models["compass-cpu"]["training"]}
    ck = {"sources": {"init_from": {"source": "compass-cpu-single", "training": {"recipe": "older"}}}}
    assert source_record("compass-cpu-single", ck)["training"] == {"recipe": "older"}
    assert source_record("compass-cpu-single", {})["training"] == models["compass-cpu-single"]["training"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, data_dir, monkeypatch):
    from compass.train import stages

    real = stages.BaseStage.train_step
    calls = {"n": 0}

    def poisoned(self, sampler, gen):
        loss, aux, m = real(self, sampler, gen)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), aux, m

    monkeypatch.setattr(stages.BaseStage, "train_step", poisoned)
    with pytest.raises(NonFiniteLoss, match="step 2"):
        train(RECIPE, "base", tmp_path, data=str(data_dir), threads=1, progress=False)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["modules"]["base"].values()
                                   if v.is_floating_point())
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_joint_stage_with_the_bicubic_predictor_trains_the_residual_codec_alone(tmp_path, data_dir):
    """The paper's ablation: `predictor = "bicubic"` trains a residual codec behind bicubic upsampling; the
    checkpoint holds no LIFF, the residual codec moves from where it started, the base stays frozen, and a
    predictor other than liff/bicubic is refused."""
    from compass.models import from_checkpoint, module_state, random_model, save
    from compass.resample import pyramid

    start = tmp_path / "start.pt"
    save(random_model("tiny", seed=5, single=True), "start", start)
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["joint"].update(predictor="bicubic", base_from=str(start), residual_from=str(start))
    ck = train(recipe, "joint", tmp_path / "j", data=str(data_dir), threads=1, progress=False)
    assert set(ck["modules"]) == {"base", "residual"} and ck["step"] == 2
    begin = module_state(start, "base")
    assert all(torch.equal(v, ck["modules"]["base"][k]) for k, v in begin.items())
    assert any(not torch.equal(v, ck["modules"]["residual"][k]) for k, v in begin.items() if "log_" in k or "g_s" in k)
    model = from_checkpoint(ck)  # the checkpoint rebuilds as the bicubic-predictor model, and codes
    assert model.liff is None
    model.update()
    x = synthetic_image(24, 20, seed=2)
    codes, recons = model.compress(pyramid(x, [(12, 10), (24, 20)]), [0.5, 0.5])
    decoded = [r for r, _ in model.decompress_iter(codes, [(12, 10), (24, 20)], [0.5, 0.5])]
    assert torch.equal(decoded[-1], recons[-1])
    from compass.train.export import export_checkpoints

    with pytest.raises(ValueError, match="bicubic predictor"):  # weights without LIFF would read as single-layer
        export_checkpoints(None, tmp_path / "j" / "checkpoint.pt", tmp_path / "out")
    assert not list((tmp_path / "out").glob("*"))  # nothing written
    recipe["stages"]["joint"]["predictor"] = "nearest"
    with pytest.raises(ValueError, match="predictor"):
        train(recipe, "joint", tmp_path / "k", data=str(data_dir), threads=1, progress=False)


def test_liff_and_joint_stages_run_and_export(tmp_path, data_dir):
    train(RECIPE, "base", tmp_path / "base", data=str(data_dir), threads=1, progress=False)
    train(RECIPE, "liff", tmp_path / "liff", data=str(data_dir), threads=1, progress=False)
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["joint"].update(base_from=str(tmp_path / "base" / "checkpoint.pt"),
                                     liff_from=str(tmp_path / "liff" / "checkpoint.pt"),
                                     residual_from=str(tmp_path / "base" / "checkpoint.pt"))
    ck = train(recipe, "joint", tmp_path / "joint", data=str(data_dir), threads=1, progress=False)
    base = torch.load(tmp_path / "base" / "checkpoint.pt", weights_only=False)["modules"]["base"]
    for k, v in base.items():  # the base stays frozen
        assert torch.equal(v, ck["modules"]["base"][k]), k
    val = [r for r in csv.DictReader(open(tmp_path / "joint" / "log.csv")) if r["kind"] == "val"]
    assert {r["setting"] for r in val} >= {"2L 2.0x q=0.0", "3L 4.0x q=1.0"}

    from compass import weights
    from compass.api import Compass
    from compass.train.export import export_checkpoints

    names = export_checkpoints(tmp_path / "base" / "checkpoint.pt", tmp_path / "joint" / "checkpoint.pt",
                               tmp_path / "out")
    assert names == ["compass-tiny-single", "compass-tiny"]
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = man["models"]["compass-tiny"]
    assert [s["stage"] for s in entry["training"]["stages"]] == ["base", "liff", "joint"]
    assert entry["sha256"] == weights.sha256_file(tmp_path / "out" / "compass-tiny.pt")
    codec = Compass(tmp_path / "out" / "compass-tiny.pt")
    assert codec.info == entry["training"] and len(entry["training"]["model_stages"]) == 3  # flat, as exported
    px = np.zeros((20, 30, 3), np.uint8)
    assert codec.decode(codec.encode(px, layers=[0.5, 1])).shape == px.shape

    # a joint stage alone (its base_from may name shipped weights): only the scalable model is written
    assert export_checkpoints(None, tmp_path / "joint" / "checkpoint.pt", tmp_path / "out2", "other") == ["other"]
    alone = json.loads((tmp_path / "out2" / "manifest.json").read_text())["models"]
    assert list(alone) == ["other"] and alone["other"]["training"]["recipe"] == "tiny"
    assert [s["stage"] for s in alone["other"]["training"]["stages"]] == ["liff", "joint"]
    other = Compass(tmp_path / "out2" / "other.pt")
    assert other.decode(other.encode(px, layers=[0.5, 1])).shape == px.shape
    with pytest.raises(ValueError, match="nothing to export"):
        export_checkpoints(None, None, tmp_path / "out3")


def test_init_from_shipped_weights(tmp_path, data_dir):
    """A new session continues from committed weights: the stage starts from them, and says so."""
    from compass.models import module_state

    from conftest import tiny_single_weights_file

    path = tiny_single_weights_file(tmp_path / "w.pt")
    ck = train(RECIPE, "base", tmp_path / "run", data=str(data_dir), threads=1, progress=False, steps=0,
               init=str(path))
    want = module_state(path, "base")
    assert ck["init_from"] == str(path)
    for k, v in want.items():
        assert torch.equal(v, ck["modules"]["base"][k]), k


def test_curves_show_a_bpp_panel_only_for_stages_that_code(tmp_path):
    fields = ["step", "elapsed_s", "kind", "setting", "loss", "bpp", "psnr", "aux", "lr"]
    widths = {}
    for stage, bpp in (("joint", "0.5"), ("liff", "")):
        log = tmp_path / f"{stage}.csv"
        with open(log, "w", newline="") as f:
            w = csv.DictWriter(f, fields)
            w.writeheader()
            w.writerow(dict(step=50, elapsed_s=1, kind="train", setting="", loss=2.0, bpp=bpp, psnr=25, aux="", lr=1))
            w.writerow(dict(step=100, elapsed_s=2, kind="val", setting="2x", loss=1.0, bpp=bpp, psnr=26, aux="", lr=1))
        plot_log(log, tmp_path / f"{stage}.png")
        widths[stage] = Image.open(tmp_path / f"{stage}.png").width
    assert widths["liff"] * 3 == widths["joint"] * 2  # three panels of equal width against two


def test_sample_sizes_respects_limits():
    rng = np.random.default_rng(0)
    seen_unequal = False
    for _ in range(300):
        sizes = sample_sizes(rng, 128, max_el_pixels=1.7)
        assert 2 <= len(sizes) <= 4 and sizes[-1] == (128, 128) and min(sizes[0]) >= 16
        assert sum(h * w for h, w in sizes[1:]) <= 1.7 * 128 * 128
        for (h0, w0), (h1, w1) in zip(sizes, sizes[1:]):
            assert h0 <= h1 and w0 <= w1 and h1 / h0 <= 4.01 and w1 / w0 <= 4.01
            seen_unequal |= abs(h1 / h0 - w1 / w0) > 0.1
    assert seen_unequal


DDP_SCRIPT = r"""
import hashlib, json, sys
import torch, torch.distributed as dist
from compass.train import train
from compass.train.config import load_recipe
recipe = json.loads(sys.argv[1])
ck = train(recipe, "base", sys.argv[2], data=sys.argv[3], threads=1, progress=False)
h = hashlib.sha256(b"".join(v.numpy().tobytes() for v in ck["modules"]["base"].values())).hexdigest()
hashes = [None] * dist.get_world_size()
dist.all_gather_object(hashes, h)
if dist.get_rank() == 0:
    print("HASHES", json.dumps(hashes))
dist.barrier()  # neither rank tears gloo down while the other still talks to it
dist.destroy_process_group()
"""


def test_two_process_ddp_keeps_replicas_equal(tmp_path, data_dir):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["base"]["steps"] = 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), json.dumps(recipe), str(tmp_path / "run"), str(data_dir)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    hashes = json.loads(out.stdout.split("HASHES", 1)[1].strip().splitlines()[0])
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3


@pytest.mark.parametrize("shipped", [None, "compass-cpu", "compass-cpu-lite", "compass-cpu-fast",
                                     "compass-cpu-mini"])
def test_exported_tables_are_what_the_stored_parameters_rebuild(tmp_path, shipped):
    """A weights file's probability tables equal those `update()` builds from its own (fp16) parameters, so a
    file coded with the shipped tables decodes with a model rebuilt from the stored weights, and the reverse."""
    from compass.models import load, random_model, save
    from compass.weights import registered

    if shipped:
        if shipped not in registered():
            pytest.skip(f"{shipped} is not registered")
        source = shipped
    else:
        model = random_model("tiny", single=True, spread=True)
        model.base.entropy_bottleneck.quantiles.data += 0.3  # off target: export must fit them before rounding
        source = tmp_path / "w.pt"
        save(model, "compass-tiny-single", source)
    model = load(source).model
    for module, loaded in (("base", model.base), ("residual", model.residual)):
        if loaded is None:
            continue
        rebuilt = copy.deepcopy(loaded)
        rebuilt.update()
        for name, buf in loaded.named_buffers():
            assert torch.equal(buf, dict(rebuilt.named_buffers())[name]), (module, name)


def test_export_stores_frozen_modules_bit_for_bit(tmp_path):
    """A module loaded from weights and passed as `frozen` is written unchanged (no second quantile fit)."""
    from compass.models import load, module_state
    from compass.weights import export

    from conftest import tiny_single_weights_file

    first = tiny_single_weights_file(tmp_path / "a.pt")
    export({"base": load(first).model.base}, {"codec": RECIPE["codec"]}, "again", tmp_path / "b.pt", frozen={"base"})
    a, b = (module_state(path, "base") for path in (first, tmp_path / "b.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["compass-cpu", "compass-cpu-lite", "compass-cpu-fast", "compass-cpu-mini"])
def test_shipped_scalable_models_have_the_single_layer_codec_as_base(name):
    """The base layer of every shipped scalable model is compass-cpu-single, bit for bit (the simulcast and
    single-layer baselines of the evaluation are then the scalable model's own base codec)."""
    from compass.models import module_state
    from compass.weights import registered

    if not {name, "compass-cpu-single"} <= set(registered()):
        pytest.skip("shipped weights are not registered")
    base = module_state(name, "base")
    single = module_state("compass-cpu-single", "base")
    assert base.keys() == single.keys() and all(torch.equal(base[k], single[k]) for k in base)


def test_scalable_weights_refer_to_their_shipped_base_and_keep_their_file_ids(tmp_path):
    """The shipped scalable files hold no copy of compass-cpu-single (a reference: name and sha256); a wrong or
    missing referenced file is refused by name; a repackaged model keeps the id the files it wrote carry."""
    from compass.api import Compass
    from compass.weights import PRETRAINED_DIR, WeightsError, load_weights, manifest, registered

    if "compass-cpu-fast" not in registered():
        pytest.skip("shipped weights are not registered")
    entry = manifest()["models"]["compass-cpu-fast"]
    raw = torch.load(PRETRAINED_DIR / entry["file"], weights_only=True)
    assert "base" not in raw["state"] and raw["base_from"]["model"] == "compass-cpu-single"
    assert entry["bytes"] < 5e6 and Compass("compass-cpu-fast").model_id.hex() == entry["id"][:16]
    fast_sha = manifest()["models"]["compass-cpu-fast"]["sha256"]
    for ref, message in (({"model": "compass-cpu-single", "sha256": "0" * 64}, "refers to base model .* reinstall"),
                         ({"model": "compass-gone", "sha256": "0" * 64}, "'compass-gone', which is not installed"),
                         ("compass-cpu-single", "base_from must name a registered model and its sha256"),
                         ({"model": "compass-cpu-fast", "sha256": fast_sha}, "holds no base of its own")):
        torch.save({**raw, "base_from": ref}, tmp_path / "w.pt")
        with pytest.raises(WeightsError, match=message):
            load_weights(tmp_path / "w.pt")


def test_export_refers_to_a_shipped_base_only_when_it_is_that_base_bit_for_bit(tmp_path):
    from compass.models import load
    from compass.weights import WeightsError, export, load_weights, registered

    if "compass-cpu-single" not in registered():
        pytest.skip("shipped weights are not registered")
    single, _ = load_weights("compass-cpu-single")
    configs = {"codec": single["config"]["codec"]}
    base = load("compass-cpu-single").model.base
    export({"base": base}, configs, "x", tmp_path / "ref.pt", frozen={"base"}, base_ref="compass-cpu-single")
    back, _ = load_weights(tmp_path / "ref.pt")
    assert all(torch.equal(v, single["state"]["base"][k]) for k, v in back["state"]["base"].items())
    assert (tmp_path / "ref.pt").stat().st_size < 10_000
    with torch.no_grad():
        base.g_s.convs[0].weight.add_(0.01)
    with pytest.raises(WeightsError, match="is not the codec of 'compass-cpu-single'"):
        export({"base": base}, configs, "y", tmp_path / "bad.pt", frozen={"base"}, base_ref="compass-cpu-single")


def test_recipe_extends_merges_tables(tmp_path):
    """`extends` starts from another recipe: nested tables merge key by key, the extending file wins."""
    child = tmp_path / "child.toml"
    child.write_text('extends = "cpu"\nname = "child"\n[liff]\nfeat = 8\nskip = true\n[stages.liff]\nsteps = 7\n')
    cpu, got = load_recipe("cpu"), load_recipe(str(child))
    assert "extends" not in got and got["name"] == "child"
    assert got["liff"] == {**cpu["liff"], "feat": 8, "skip": True}
    assert got["stages"]["liff"] == {**cpu["stages"]["liff"], "steps": 7}
    assert got["stages"]["joint"] == cpu["stages"]["joint"] and got["codec"] == cpu["codec"]
    grandchild = tmp_path / "grandchild.toml"
    grandchild.write_text(f'extends = "{child.as_posix()}"\n[liff]\nfeat = 4\n')
    assert load_recipe(str(grandchild))["liff"] == {**got["liff"], "feat": 4}
    loop = tmp_path / "loop.toml"
    loop.write_text(f'extends = "{loop.as_posix()}"\n')
    with pytest.raises(ValueError, match="extends itself"):
        load_recipe(str(loop))


def test_stage_record_carries_the_training_of_shipped_sources(tmp_path):
    """A joint stage warm-started from shipped weights names them in its record, with their own training."""
    from compass.train.export import stage_info
    from compass.weights import manifest

    ck = {"stage": "joint", "step": 5, "elapsed_s": 36.0, "init_from": None,
          "stage_config": {"base_from": "compass-cpu-single", "residual_from": "compass-cpu",
                           "liff_from": str(tmp_path / "liff.pt")}}
    info = stage_info(ck, tmp_path / "checkpoint.pt")
    shipped = manifest()["models"]
    assert info["shipped_sources"] == {k: {"source": v, "training": shipped[v]["training"]}
                                       for k, v in (("base_from", "compass-cpu-single"), ("residual_from", "compass-cpu"))}
    ck["stage_config"] = {"base_from": str(tmp_path / "base.pt")}  # a checkpoint path: nothing to carry
    assert "shipped_sources" not in stage_info(ck, tmp_path / "checkpoint.pt")
