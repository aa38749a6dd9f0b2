"""The training loop: resumable, atomic checkpoints, CSV log + learning-curve plot, torchrun-ready.

Multi-process: launched by `torchrun`, every process trains on its own crops; gradients are averaged with one
all-reduce per step (gloo on CPU, nccl on GPU), so replicas stay equal. Only rank 0 writes files.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..fileutil import atomic_write
from ..models import load_checkpoint, module_state
from ..paths import data_dir
from ..weights import safe_load
from .config import stage_config
from .data import list_images, make_sampler, split, validation_crops
from .stages import final_phase_start, lr_at, make_stage

CHECKPOINT_FORMAT = "compass-checkpoint/1"
LOG_FIELDS = ["step", "elapsed_s", "kind", "setting", "loss", "bpp", "psnr", "aux", "lr"]


class NonFiniteLoss(RuntimeError):
    pass


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def save_atomic(obj, path: Path) -> None:
    """torch.save by the rule of `fileutil.atomic_write`: a checkpoint is either complete or the old one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def shipped_sources(cfg: dict, init: str | None) -> dict:
    """The training records of the shipped weights a stage starts from (`init`, a joint stage's `base_from`,
    `residual_from`, `liff_from`), as the manifest has them when the stage starts: the checkpoint keeps them,
    so an export stays right after those weights are replaced (by this very run's export, say)."""
    from ..weights import manifest

    models = manifest()["models"]
    pairs = [("init_from", init)] + [(k, cfg.get(k)) for k in ("base_from", "residual_from", "liff_from")]
    return {k: {"source": v, "training": models[v].get("training")} for k, v in pairs if v in models}


def resolve_data(recipe: dict, override: str | None) -> Path:
    folder = override or recipe["data"]["train"]
    p = Path(folder)
    return p if p.is_absolute() or p.exists() else data_dir(folder)


class Trainer:
    """One stage of a recipe trained in a run folder: the stage, its optimizers, data and random streams, and
    where it stands (step, elapsed time, provenance). `resume` or `initialize` it, then `run` it; `step` is one
    optimization step and `checkpoint` saves the state `resume` reads (rank 0 writes files)."""

    def __init__(self, recipe: dict, stage_name: str, run_dir: str | Path, *, steps: int | None = None,
                 data: str | None = None, init: str | None = None):
        self.rank, self.world = _dist_info()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                            if torch.cuda.is_available() else "cpu")
        setup_device(device)
        self.recipe, self.stage_name = recipe, stage_name
        self.cfg = cfg = stage_config(recipe, stage_name)
        if steps is not None:
            cfg["steps"] = steps
        self.tcfg = recipe["train"]
        self.run_dir = Path(run_dir)
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        self.log_path = self.run_dir / "log.csv"
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        self.seed = seed = int(recipe.get("seed", 0))
        torch.manual_seed(seed)
        self.stage = make_stage(stage_name, recipe, cfg, device)
        self.opt, self.aux_opt = make_optimizers(self.stage, device, cfg["lr"], self.tcfg["aux_lr"])
        files_train, files_val = split(list_images(resolve_data(recipe, data)), recipe["data"]["val_count"])
        self.sampler = make_sampler(files_train, cfg["crop"], seed * 1000 + self.rank, device,
                                    recipe["data"].get("on_device", False))
        self.gen = torch.Generator(device=device).manual_seed(seed * 1000 + self.rank + 1)
        self.val = validation_crops(files_val, recipe["data"]["val_crop"]) if self.rank == 0 else None
        self.step_count, self.elapsed, self.init_from = 0, 0.0, str(init) if init else None
        self.sources = shipped_sources(cfg, self.init_from)
        self.history = history_of(init) if init else []

    def resume(self) -> bool:
        """Continue from RUN_DIR/checkpoint.pt, if there is one: modules, optimizers, random streams, step, time
        and provenance. Returns whether it did."""
        if not self.ckpt_path.exists():
            return False
        rank, seed, stage_name = self.rank, self.seed, self.stage_name
        ck = load_checkpoint(self.ckpt_path, map_location=self.device)
        if ck.get("stage") != stage_name:
            raise ValueError(f"{self.ckpt_path} holds stage {ck.get('stage')!r}, not {stage_name!r}")
        for name, m in self.stage.modules().items():
            m.load_state_dict(ck["modules"][name])
        self.opt.load_state_dict(ck["optimizer"])
        if self.aux_opt is not None and ck.get("aux_optimizer"):
            self.aux_opt.load_state_dict(ck["aux_optimizer"])
            for g in self.aux_opt.param_groups:  # the recipe's aux lr wins over the one saved
                g["lr"] = self.tcfg["aux_lr"]
        if rank < len(ck["sampler"]):
            self.sampler.set_state(ck["sampler"][rank])
        else:  # more processes than the run that saved: a fresh stream for this rank, not a copy of rank 0's
            self.sampler.rng = np.random.default_rng([seed, rank, ck["step"]])
        if rank == 0:
            self.gen.set_state(ck["generator"].cpu())
        else:  # only rank 0's generator is saved
            self.gen.manual_seed(seed * 1000 + rank + 1 + ck["step"])
        if "torch_rng" in ck:  # quantization noise; per rank in DDP runs only rank 0's is kept
            torch.set_rng_state(ck["torch_rng"].cpu())
        self.step_count, self.elapsed, self.init_from = ck["step"], ck["elapsed_s"], ck.get("init_from")
        self.sources, self.history = ck.get("sources", {}), ck.get("history", [])
        if hasattr(self.stage, "after_resume"):
            self.stage.after_resume()
        if rank == 0:
            _truncate_log(self.log_path, self.step_count)
            print(f"resumed {stage_name} at step {self.step_count} from {self.ckpt_path}")
        return True

    def initialize(self, init: str) -> None:
        """Start the stage's modules from shipped weights (name or file) or a checkpoint, with fresh optimizers."""
        stage = self.stage
        for name, m in stage.modules().items():
            try:
                m.load_state_dict(module_state(init, name))
            except KeyError:  # a slim checkpoint without its frozen base: the stage loaded it from `base_from`
                if name not in getattr(stage, "frozen", ()):
                    raise
        if self.rank == 0:
            print(f"initialized {self.stage_name} from {init}")

    def step(self):
        """One optimization step at the schedule's lr: (lr, loss, metrics), left on the device."""
        lr = lr_at(self.cfg, self.step_count)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss, metrics = optimize(self.stage, self.sampler, self.gen, self.opt, self.aux_opt, self.tcfg["clip"],
                                 self.world)
        self.step_count += 1
        return lr, loss, metrics

    def checkpoint(self) -> dict:
        """The whole state, saved to RUN_DIR/checkpoint.pt (atomically) with the learning curves by rank 0."""
        samplers = [self.sampler.state()]
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, self.sampler.state())
            samplers = gathered
        ck = {"format": CHECKPOINT_FORMAT, "recipe": self.recipe, "stage": self.stage_name,
              "stage_config": self.cfg, "step": self.step_count, "elapsed_s": self.elapsed,
              "modules": {n: m.state_dict() for n, m in self.stage.modules().items()},
              "optimizer": self.opt.state_dict(), "aux_optimizer": self.aux_opt.state_dict() if self.aux_opt else None,
              "sampler": samplers, "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
              "init_from": self.init_from, "sources": self.sources, "history": self.history,
              "device": device_name(self.device)}
        if self.rank == 0:
            save_atomic(ck, self.ckpt_path)
            plot_log(self.log_path, self.run_dir / "curves.png")
        return ck

    def run(self, progress: bool = True, time_budget: float | None = None) -> dict:
        """Train to the stage's step count (or, with `time_budget` seconds, what fits: see `Budget`), logging,
        validating and checkpointing as the recipe says; returns the final checkpoint."""
        cfg, tcfg, rank, world = self.cfg, self.tcfg, self.rank, self.world
        if world > 1:
            for p in [*self.stage.parameters(), *self.stage.aux_parameters()]:
                dist.broadcast(p.data, 0)
        log_file = open(self.log_path, "a", newline="") if rank == 0 else None
        writer = csv.DictWriter(log_file, LOG_FIELDS, extrasaction="ignore") if log_file else None
        if writer and self.log_path.stat().st_size == 0:
            writer.writeheader()
        bar = tqdm(total=cfg["steps"], initial=self.step_count, disable=not progress or rank != 0,
                   desc=self.stage_name, dynamic_ncols=True)
        acc, acc_n = {}, 0
        # a GPU step is not waited for: metrics stay on the device and the loss is checked for finiteness every
        # `log_every` steps (and before every checkpoint); on CPU there is nothing to overlap, so every step
        check_every = tcfg["log_every"] if self.device.type == "cuda" else 1
        bad, checked = torch.zeros((), device=self.device), self.step_count
        last_ckpt = time.monotonic()
        t0 = time.monotonic() - self.elapsed
        budget = Budget(time_budget, self.step_count, cfg) if time_budget else None
        try:
            while self.step_count < cfg["steps"]:
                lr, loss, metrics = self.step()
                step = self.step_count
                bad += ~torch.isfinite(loss)
                self.elapsed = time.monotonic() - t0
                for k, v in metrics.items():
                    acc[k] = acc[k] + v if k in acc else v
                acc_n += 1
                bar.update(1)
                if step % tcfg["log_every"] == 0 or step == cfg["steps"]:
                    row = {k: float(v) / acc_n for k, v in acc.items()}
                    bar.set_postfix(loss=f"{row['loss']:.3f}", bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr']:.2f}")
                    if writer:
                        writer.writerow(log_row(step, self.elapsed, "train", lr, {"setting": "", **row}))
                        log_file.flush()
                    acc, acc_n = {}, 0
                if rank == 0 and (step % tcfg["val_every"] == 0 or step == cfg["steps"]):
                    for row in self.stage.validate(self.val):
                        writer.writerow(log_row(step, self.elapsed, "val", lr, row))
                    log_file.flush()
                due = time.monotonic() - last_ckpt > 60 * tcfg["checkpoint_minutes"]
                steps, over = budget.check(step, cfg["steps"]) if budget is not None else (cfg["steps"], False)
                if world > 1:  # rank 0's clock decides for every process, in one collective per step
                    flags = torch.tensor([float(due), float(steps), float(over)], dtype=torch.float64)
                    dist.broadcast(flags, 0)
                    due, steps, over = bool(flags[0]), int(flags[1]), bool(flags[2])
                if steps != cfg["steps"] and rank == 0:
                    print(f"time budget: {cfg['steps']} -> {steps} steps at step {step}")
                cfg["steps"] = steps
                if step - checked >= check_every or due or over or step >= steps:
                    _check_finite(bad, world, checked, self.stage_name, self.ckpt_path)
                    checked = step
                if over:  # checkpointed after the loop
                    break
                if due:
                    self.checkpoint()
                    last_ckpt = time.monotonic()
            return self.checkpoint()
        finally:
            bar.close()
            if log_file:
                log_file.close()


def train(recipe: dict, stage_name: str, run_dir: str | Path, *, resume: bool = False, steps: int | None = None,
          data: str | None = None, threads: int | None = None, init: str | None = None,
          progress: bool = True, time_budget: float | None = None) -> dict:
    """Train one stage of `recipe` into `run_dir` (`Trainer`). Returns the final checkpoint dict.

    `init`: shipped weights (name or file) or a checkpoint to start the stage's modules from when not resuming
    (a new session continues from the committed weights this way, with a fresh optimizer).
    `time_budget` (seconds, for a lease of fixed length): after a short probe the stage's step count is cut to
    what fits, so the learning-rate schedule still ends with its final phase; past the budget the loop
    checkpoints and stops.
    """
    if threads:
        torch.set_num_threads(threads)
    trainer = Trainer(recipe, stage_name, run_dir, steps=steps, data=data, init=init)
    if not (resume and trainer.resume()) and init:
        trainer.initialize(init)
    return trainer.run(progress, time_budget)


def setup_device(device: torch.device) -> None:
    """On a GPU: TF32 matmuls (LIFF's MLP), as cuDNN already does for convolutions, and cuDNN autotuning (shapes
    repeat: fixed crops, `odd_sizes`, `plan_buckets`, so each is tuned once)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True


def log_row(step: int, elapsed: float, kind: str, lr, values: dict) -> dict:
    """A row of log.csv (LOG_FIELDS; other keys are not written), numbers rounded to 5 decimals."""
    return {"step": step, "elapsed_s": round(elapsed, 1), "kind": kind, "lr": lr,
            **{k: round(v, 5) if isinstance(v, float) else v for k, v in values.items()}}


def make_optimizers(stage, device: torch.device, lr: float, aux_lr: float):
    """Adam for the stage's parameters and for its quantiles (None without any); fused on a GPU (one kernel
    for the whole update instead of several per parameter)."""
    fused = device.type == "cuda"
    aux_params = stage.aux_parameters()
    return (torch.optim.Adam(stage.parameters(), lr=lr, fused=fused),
            torch.optim.Adam(aux_params, lr=aux_lr, fused=fused) if aux_params else None)


def optimize(stage, sampler, gen: torch.Generator, opt, aux_opt, clip: float, world: int = 1):
    """One training step of `stage`: loss, backward, gradient clipping, Adam, and the auxiliary (quantile)
    update. Returns (the loss, metrics), both left on the device, so nothing here waits for the GPU."""
    loss, aux, metrics = stage.train_step(sampler, gen)
    params = [p for g in opt.param_groups for p in g["params"]]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if world > 1:
        _average_gradients(params, world)
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    if aux_opt is not None:
        aux_params = [p for g in aux_opt.param_groups for p in g["params"]]
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        if world > 1:
            _average_gradients(aux_params, world)
        aux_opt.step()
        metrics["aux"] = aux.detach()
    return loss.detach(), metrics


def _check_finite(bad: torch.Tensor, world: int, checked: int, stage_name: str, ckpt_path: Path) -> None:
    """Raise NonFiniteLoss when any loss since step `checked` was not finite (on every rank together, so none
    is left waiting in an all-reduce). Called before every checkpoint, so none holds the weights it spoiled."""
    if world > 1:
        dist.all_reduce(bad)
    if float(bad) > 0:
        raise NonFiniteLoss(f"non-finite loss after step {checked} of stage {stage_name}; "
                            f"the last good checkpoint is intact at {ckpt_path}")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def history_of(init: str | Path) -> list[dict]:
    """The training a checkpoint `init` carries (earlier runs it continued, then itself), for a run that
    starts from it with a fresh optimizer (a GPU window continuing the last one): [] for shipped weights."""
    if not Path(init).exists():
        return []
    ck = safe_load(init)
    if "step" not in ck:
        return []
    own = {"recipe": ck["recipe"]["name"], "stage": ck["stage"], "steps": ck["step"],
           "elapsed_s": round(ck["elapsed_s"], 1), "device": ck.get("device", "")}
    return [*ck.get("history", []), own]


class Budget:
    """Fits a stage's step count to a wall-clock budget. The rate is first measured over PROBE steps (after
    WARMUP, which holds one-off costs such as cuDNN warm-up), then again every REFIT of the budget while the
    schedule has not reached its final lr phase: first steps on a GPU ran at 60% of the later rate. MARGIN of
    the remaining time stays free for validation and checkpoints."""

    WARMUP, PROBE, MARGIN, REFIT = 10, 40, 0.1, 0.1

    def __init__(self, seconds: float, step: int, cfg: dict):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.first = step
        self.cap = cfg["steps"]
        self.cfg = cfg
        self.mark = None  # (time, step) the current rate is measured from

    def _fit(self, step: int, now: float) -> int:
        rate = (step - self.mark[1]) / max(now - self.mark[0], 1e-9)
        self.mark = (now, step)
        return min(self.cap, step + int(rate * (self.deadline - now) * (1 - self.MARGIN)))

    def check(self, step: int, steps: int) -> tuple[int, bool]:
        """(step count to use, whether to stop now)."""
        now = time.monotonic()
        done = step - self.first
        if done == self.WARMUP:
            self.mark = (now, step)
        elif done == self.WARMUP + self.PROBE:
            steps = self._fit(step, now)
        elif (done > self.WARMUP + self.PROBE and now - self.mark[0] >= self.REFIT * self.seconds
              and step < final_phase_start(self.cfg, steps)):
            steps = self._fit(step, now)
        return steps, now >= self.deadline


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    for r in rows:  # logs of the first runs named the column "q"
        if "q" in r:
            r["setting"] = r.pop("q")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot_log(log_path: Path, out_path: Path) -> None:
    """Learning curves from the CSV log: training loss; validation bpp (stages that code) and PSNR per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.exists():
        return
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    coded = any(r["bpp"] for r in val)
    fig, axes = plt.subplots(1, 3 if coded else 2, figsize=(15 if coded else 10, 4))
    loss_ax, bpp_ax, psnr_ax = axes if coded else (axes[0], None, axes[1])
    if train:
        loss_ax.plot([int(r["step"]) for r in train], [float(r["loss"]) for r in train], lw=0.6)
        loss_ax.set_yscale("log")
    loss_ax.set(title="training loss", xlabel="step")
    for setting in sorted({r.get("setting", r.get("q")) for r in val}):
        vs = [r for r in val if r.get("setting", r.get("q")) == setting]
        st = [int(r["step"]) for r in vs]
        if bpp_ax is not None and any(r["bpp"] for r in vs):
            bpp_ax.plot(st, [float(r["bpp"]) for r in vs], marker=".", label=setting)
        psnr_ax.plot(st, [float(r["psnr"]) for r in vs], marker=".", label=setting)
    if bpp_ax is not None:
        bpp_ax.set(title="validation bpp (accumulated)", xlabel="step")
    psnr_ax.set(title="validation PSNR (dB)", xlabel="step")
    for ax in axes[1:]:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out_path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
