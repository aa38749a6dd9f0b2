"""GPU training windows, dry run on CPU: the window script's own code on a tiny recipe, two windows in a row,
their files brought back and imported, the second continuing the first; crops cut on the device; throughput."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from compass.train import window
from compass.train.pack import pack_window
from compass.train.data import CropSampler, TensorCropSampler, list_images
from compass.train.stages import lr_at
from compass.train.throughput import best, compare

from conftest import REPO, synthetic_image

TINY = """
name = "tiny-gpu"
seed = 2
[codec]
N = 8
M = 12
levels = 3
lambda_max = 0.1
[liff]
feat = 8
blocks = 1
convs = 2
growth = 4
hidden = [8]
[data]
train = "unused"
val_count = 2
val_crop = 32
on_device = true
[train]
checkpoint_minutes = 0.02
log_every = 5
val_every = 1000
clip = 1.0
aux_lr = 1e-3
[stages.base]
steps = 100000
batch = 2
crop = 32
odd_fraction = 0.3
odd_sizes = [[31, 27], [25, 30]]
lr = 1e-3
lr_final = 1e-4
final_fraction = 0.2
warmup = 10
[stages.joint]
steps = 100000
batch = 2
crop = 40
lr = 1e-4
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for i in range(8):
        px = (synthetic_image(50 + 3 * i, 60, seed=i)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(px).save(d / f"img{i}.png")
    return d


def test_window_packs_cycle_through_the_training_split(photos, tmp_path):
    seen = []
    for k in range(3):
        pack_window(photos, tmp_path / f"w{k}", window=k, count=2, crop=40, val_count=2)
        seen.append({p.stem for p in (tmp_path / f"w{k}").iterdir()})
    assert all(len(s) == 2 for s in seen)
    assert len(seen[0] | seen[1] | seen[2]) == 6  # 6 training photos, 3 windows of 2: all of them, once each


def test_two_windows_dry_run_continue_and_import(photos, tmp_path, monkeypatch):
    recipe = tmp_path / "tiny-gpu.toml"
    recipe.write_text(TINY)
    pack = tmp_path / "pack"
    pack_window(photos, pack, window=0, count=6, crop=40, val_count=2)
    ck_root = tmp_path / "checkpoints"
    kw = dict(probe_seconds=0.3, variants=("eager", "eager-nchw"), checkpoints=ck_root, margin_s=1.0)

    first = window.run(str(recipe), "base", 0.1, str(pack), tmp_path / "out1", run_dir=tmp_path / "run1", **kw)
    files = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert files == ["base.pt", "curves.png", "log.csv", "window.json"]
    assert {r["variant"] for r in first["probe"]} == {"eager", "eager-nchw"} and first["init"] is None
    back = torch.load(tmp_path / "out1" / "base.pt", weights_only=False)
    assert back["optimizer"] is None and back["modules"]["base"]["g_a.convs.0.weight"].dtype == torch.float16
    assert back["modules"]["base"]["entropy_bottleneck.target"].dtype == torch.float32  # buffers as they were
    assert first["steps"] == back["step"] > 20

    rec1 = window.import_window(tmp_path / "out1", checkpoints=ck_root, data=str(photos))
    committed = ck_root / "tiny-gpu" / "base.pt"
    assert committed.exists() and rec1["window"] == 1 and rec1["total_steps"] == first["steps"]
    assert [r["setting"] for r in rec1["held_out"]] == ["q=0.0", "q=0.5", "q=1.0"]

    # the second window starts from the committed checkpoint; make its first run fail after a checkpoint, as a
    # compiler error on a new shape would, to check that the window goes on from there without compiling
    from compass.train import stages

    real, calls = stages.BaseStage.train_step, {"n": 0}

    def flaky(self, sampler, gen):
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("simulated failure")
        return real(self, sampler, gen)

    monkeypatch.setattr(stages.BaseStage, "train_step", flaky)
    second = window.run(str(recipe), "base", 0.12, str(pack), tmp_path / "out2", run_dir=tmp_path / "run2",
                        probe_seconds=0, variants=("eager",), checkpoints=ck_root, margin_s=1.0)
    assert "simulated failure" in second["failure"] and second["init"] == str(committed)
    ck2 = torch.load(tmp_path / "out2" / "base.pt", weights_only=False)
    assert ck2["history"] == [{"recipe": "tiny-gpu", "stage": "base", "steps": first["steps"],
                               "elapsed_s": round(back["elapsed_s"], 1), "device": "cpu"}]
    rec2 = window.import_window(tmp_path / "out2", checkpoints=ck_root, data=str(photos))
    assert rec2["window"] == 2 and rec2["total_steps"] == first["steps"] + second["steps"]
    records = json.loads((ck_root / "tiny-gpu" / "windows.json").read_text())
    assert [r["window"] for r in records] == [1, 2]
    log = (ck_root / "tiny-gpu" / "base-log.csv").read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in log[1:] if ",train," in line]
    assert steps == sorted(steps) and steps[-1] == rec2["total_steps"]  # counted across windows
    assert (ck_root / "tiny-gpu" / "base-windows.png").stat().st_size > 0

    # a joint window on that base: layer plans from fixed buckets, brought back without the frozen base,
    # validated here with the committed base, and continued by the next joint window
    monkeypatch.setattr(stages.BaseStage, "train_step", real)
    joint = (f'stages.joint.base_from="{committed}"', f'stages.joint.residual_from="{committed}"',
             "stages.joint.plan_buckets=3", "stages.joint.steps=100000", "stages.joint.batch=2",
             "stages.joint.crop=40", "stages.joint.lr=1e-4", "stages.joint.max_el_pixels=1.7")
    for k in (1, 2):
        run = window.run(str(recipe), "joint", 0.12, str(pack), tmp_path / f"j{k}", run_dir=tmp_path / f"jrun{k}",
                         probe_seconds=0, variants=("eager",), checkpoints=ck_root, margin_s=1.0, overrides=joint)
        slim = torch.load(tmp_path / f"j{k}" / "joint.pt", weights_only=False)
        assert set(slim["modules"]) == {"residual", "liff"} and run["steps"] > 0
        rec = window.import_window(tmp_path / f"j{k}", checkpoints=ck_root, data=str(photos))
        assert rec["stage"] == "joint" and {r["setting"].split(" q=")[0] for r in rec["held_out"]} == {"2L 2.0x", "3L 4.0x"}
    assert run["init"] == str(ck_root / "tiny-gpu" / "joint.pt")
    assert json.loads((ck_root / "tiny-gpu" / "windows.json").read_text())[-1]["total_steps"] == sum(
        w["steps"] for w in json.loads((ck_root / "tiny-gpu" / "windows.json").read_text()) if w["stage"] == "joint")


def test_window_script_runs_on_cpu(photos, tmp_path):
    """scripts/gpu_window.sh itself, as the GPU call runs it (a typo there would cost a whole window)."""
    recipe = tmp_path / "tiny-gpu.toml"
    recipe.write_text(TINY)
    pack = tmp_path / "pack"
    pack_window(photos, pack, window=1, count=6, crop=40, val_count=2)
    env = {"PATH": f"{REPO / '.venv' / 'bin'}:{sys.exec_prefix}/bin:/usr/bin:/bin", "OUT": str(tmp_path / "out"),
           "MINUTES": "0.2", "RECIPE": str(recipe), "DATA": str(pack), "VARIANTS": "eager", "PROBE_SECONDS": "0",
           "SET": "stages.base.batch=3 train.log_every=2", "RUN_DIR": str(tmp_path / "run")}
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_window.sh")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "window.json").read_text())
    assert summary["batch"] == 3 and summary["steps"] > 0 and (tmp_path / "out" / "console.log").exists()


def test_tensor_crops_are_windows_of_the_photos_flipped_or_not(photos):
    files = list_images(photos)[:3]
    sampler = TensorCropSampler(files, 16, seed=5, device=torch.device("cpu"))
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    batch = (sampler.batch(12) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    odd = (sampler.batch(4, (9, 13)) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert odd.shape == (4, 9, 13, 3)
    flips = set()
    for crop in [*batch, *odd]:
        found = None
        for img in images:
            for name, view in (("none", img), ("h", img[:, ::-1]), ("v", img[::-1]), ("hv", img[::-1, ::-1])):
                ch, cw = crop.shape[:2]
                wins = np.lib.stride_tricks.sliding_window_view(view, (ch, cw, 3))[:, :, 0]
                if (wins == crop).all(axis=(-1, -2, -3)).any():
                    found = name
                    break
            if found:
                break
        assert found is not None
        flips.add(found)
    assert len(flips) >= 3  # flips are drawn


def test_tensor_sampler_state_round_trip(photos):
    files = list_images(photos)[:3]
    a = TensorCropSampler(files, 16, seed=1, device=torch.device("cpu"))
    a.batch(3)
    state = copy.deepcopy(a.state())
    want = a.batch(3)
    b = TensorCropSampler(files, 16, seed=9, device=torch.device("cpu"))
    b.set_state(state)
    assert torch.equal(b.batch(3), want)
    assert CropSampler(files, 16, 1).batch(2).shape == want[:2].shape


def test_lr_warmup_ramps_then_holds_then_drops():
    cfg = {"steps": 100, "lr": 1e-3, "lr_final": 1e-4, "final_fraction": 0.2, "warmup": 10}
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[50] == 1e-3
    assert lrs[79] == 1e-3 and lrs[80] == 1e-4 and lrs == [lr_at(cfg, s) for s in range(100)]
    assert all(b >= a for a, b in zip(lrs[:10], lrs[1:11]))


def test_throughput_compares_variants_and_reports_failures(photos):
    from compass.train.config import load_recipe

    recipe = load_recipe("paper-gpu")
    recipe["codec"].update(N=8, M=12)
    rows = compare(recipe, "base", ["eager", "host-data", "nonsense"], data=str(photos), batch=2, crop=32,
                   seconds=0.2, warmup=1, files=4)
    assert [r["variant"] for r in rows] == ["eager", "host-data", "nonsense"]
    assert rows[0]["on_device"] and not rows[1]["on_device"] and "error" in rows[2]
    assert all(r["steps"] > 0 and r["mpix_per_s"] > 0 for r in rows[:2])
    assert best(rows)["variant"] in {"eager", "host-data"}
    slow_start = [{"variant": "a", "mpix_per_s": 10.0, "warmup_s": 100.0}, {"variant": "b", "mpix_per_s": 8.0, "warmup_s": 1.0}]
    assert best(slow_start)["variant"] == "a" and best(slow_start, seconds=150)["variant"] == "b"


def test_bench_train_cli_prints_and_writes_the_variants(photos, tmp_path, capsys):
    from compass.cli import main

    out = tmp_path / "tp.json"
    assert main(["bench", "--train", "paper-gpu", "--batch", "1", "--crop", "32", "--seconds", "0.2", "--data",
                 str(photos), "--variants", "eager,host-data", "--rounds", "2", "--json", str(out), "--quiet", "--device", "cpu"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["variant", "Mpix/s", "ratio"] and table[1].split()[0] == "eager"
    assert table[1].split()[2] == "1.00"
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["eager", "host-data"] and rows[1]["on_device"] is False
    assert all(len(r["rounds"]) == 2 and r["s_per_step"] in r["rounds"] for r in rows)


def test_carried_bytes_count_the_tree_git_sees_and_the_carried_folders(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/data/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 1000)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "crop.jpg").write_bytes(b"y" * 5000)
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked.txt"], check=True)
    (tmp_path / "untracked.txt").write_bytes(b"z" * 300)
    sizes = window.carried_bytes(["data"], repo=tmp_path)
    assert (sizes["tree"], sizes["data"], sizes["total"]) == (1000 + 300 + 7, 5000, 6307)  # 7: .gitignore
