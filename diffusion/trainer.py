"""The trainer: one loop for images, video and text conditioning, on one CPU or many GPUs.

    trainer = Trainer(load_config("configs/fashion_zigma.yaml"))
    trainer.train()          # checkpoints, CSV log, sample grids, FID/KID at the end

What it does, top to bottom:

* gets the dataset, the model (input size, channels, classes and frames come from the dataset), its EMA
  copy, the transport, AdamW and the lr schedule from ``builder`` (the same builder sample and eval use);
* per step: loss from ``transport.training_loss``, backward, **gradient clipping before the optimizer
  step** (the reference code clipped after it, which does nothing), step, EMA update;
* bf16 / fp16 autocast on GPU (GradScaler for fp16; unscale before clipping);
* randomness that does not depend on anything else in the process: the data order of epoch e is
  ``randperm(N, seed(seed, e))``; the noise / time generator and the global RNG used by label dropout
  are re-seeded from (seed, rank, step) at every step. So a run is a pure function of its config, and a
  resumed run repeats an uninterrupted one exactly;
* rank 0 logs (tqdm, ``metrics.csv``, TensorBoard when installed), samples and saves; every rank
  takes its slice of the same global batch;
* one trainer per run folder: rank 0 holds ``RUN/train.lock`` (``runlock.RunLock``) from construction
  to ``close()``; a second trainer on the folder is refused with a message naming the holder;
* a step whose loss or gradient norm is NaN / inf is never applied: ``train.nonfinite: stop`` (default)
  raises ``NonFiniteLossError`` naming the step, ``skip`` drops the update, counts it (``skipped`` in
  ``metrics.csv``) and stops after ``train.max_nonfinite`` such steps in a row. Non-finite weights are
  never saved, so pruning never deletes the last finite checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .builder import (
    build_data_info,
    build_ema,
    build_model,
    build_optimizer,
    build_train_dataset,
    build_transport,
    load_weights,
)
from .checkpoint import find_latest, load_checkpoint, resolve_checkpoint, save_checkpoint
from .config import Config, ConfigError, config_to_dict, save_config
from .distributed import DistInfo, all_reduce_mean, barrier, cleanup_distributed, init_distributed, shard
from .runlock import RunLock, RunLockedError

__all__ = ["Trainer", "NonFiniteLossError", "update_ema", "mix_seed"]

log = logging.getLogger("zigscan.train")
CSV_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "steps_per_s", "elapsed_s", "skipped")


class NonFiniteLossError(RuntimeError):
    """Training met a NaN / inf loss or gradient norm (``train.nonfinite: stop``, or too many skips)."""


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 mixing), so (seed, rank, step) never collide."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter; buffers are copied."""
    e_params = [p for p in ema.parameters()]
    m_params = [p.detach() for p in model.parameters()]
    if len(e_params) != len(m_params):
        raise RuntimeError("EMA and model have different parameter lists")
    weight = 1.0 - decay
    if e_params:
        m_params = [m.to(e.dtype) for e, m in zip(e_params, m_params)]
        torch._foreach_lerp_(e_params, m_params, weight)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def _numpy_state_to_json(state: tuple) -> list:
    kind, keys, pos, has_gauss, gauss = state
    return [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]


def _numpy_state_from_json(state: list) -> tuple:
    kind, keys, pos, has_gauss, gauss = state
    return kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss


def _python_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


# ---------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------------------


def _enable_grad_checkpointing(model: nn.Module) -> None:
    for name in ("set_grad_checkpointing", "enable_gradient_checkpointing", "gradient_checkpointing_enable"):
        fn = getattr(model, name, None)
        if callable(fn):
            fn(True) if name == "set_grad_checkpointing" else fn()
            return
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        log.warning("train.grad_checkpointing: the model has no `blocks`; nothing to checkpoint")
        return
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        fwd = block.forward

        def wrapped(*args: Any, _fwd: Callable = fwd, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)
            return _fwd(*args, **kwargs)

        block.forward = wrapped


# ---------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------


class Trainer:
    """Train ``cfg`` in ``run_dir`` (default ``cfg.run_dir()``).

    Args:
        resume: ``"auto"`` resumes from the run folder's latest checkpoint when there is one; a path
            (run folder or checkpoint) resumes from it; ``None`` never resumes (a run folder that already
            holds checkpoints is then an error, so nothing saved is overwritten by accident).
        dist_info: a ready ``DistInfo`` (tests); default: from the torchrun environment.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, *, resume: str | Path | None = "auto",
                 dist_info: DistInfo | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir()
        self.dist = dist_info or init_distributed(cfg.train.device)
        self._owns_dist = dist_info is None
        self.device = self.dist.device
        self._tb = None
        self._lock = self._lock_run_dir()
        try:
            self._init(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _lock_run_dir(self) -> RunLock | None:
        """Rank 0 locks the run folder; every rank learns whether that worked (so none waits forever)."""
        lock, error = None, None
        if self.dist.is_main:
            try:
                lock = RunLock(self.run_dir).acquire()
            except RunLockedError as exc:
                error = exc
        if self.dist.distributed:
            ok = all_reduce_mean(torch.tensor(0.0 if error else 1.0, device=self.device), self.dist)
            if float(ok) < 1.0 and error is None:
                raise RunLockedError(f"rank 0 could not lock the run folder {str(self.run_dir)!r}; see its message", {})
        if error is not None:
            raise error
        return lock

    def _init(self, cfg: Config, resume: str | Path | None) -> None:
        t = cfg.train
        if t.threads and self.device.type == "cpu":
            torch.set_num_threads(t.threads)
        if t.batch_size % self.dist.world_size:
            raise ConfigError(f"config key 'train.batch_size': {t.batch_size} is not divisible by the "
                              f"{self.dist.world_size} processes; use a multiple of {self.dist.world_size}")

        # precision: autocast only on GPU
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        if self.amp_dtype is not None and self.device.type != "cuda":
            log.info("train.precision=%s asks for autocast; on %s training runs in fp32", t.precision, self.device.type)
            self.amp_dtype = None

        # data
        self.dataset = build_train_dataset(cfg)
        self.data_info = build_data_info(self.dataset, cfg)
        self.n_data = len(self.dataset)
        if self.n_data < t.batch_size:
            raise ConfigError(f"the dataset has {self.n_data} examples, fewer than train.batch_size={t.batch_size}")

        # model, EMA (init seeded; every rank builds the same weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            model = build_model(cfg, self.data_info)
        self.model = model.to(self.device)
        self.ema = build_ema(self.model, cfg, self.data_info)
        if t.grad_checkpointing:
            _enable_grad_checkpointing(self.model)
        self.transport = build_transport(cfg)
        self.train_model: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.forward_model: Callable = torch.compile(self.train_model) if t.compile else self.train_model

        # optimizer, lr schedule, grad scaler
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)

        # progress state
        self.step = 0  # optimizer steps taken
        self.epoch = 0  # data epoch
        self.pos = 0  # position in the epoch's permutation (global index)
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None
        self._loss_sum = 0.0  # losses since the last CSV row (for the interval mean)
        self._loss_count = 0
        self.noise_gen = torch.Generator(device=self.device)
        self.history: list[dict[str, float]] = []  # every log row, on every rank (tests, DDP checks)
        self._start_step: int | None = None
        self.skipped = 0  # steps not applied because their loss / grad norm was not finite (in total)
        self._skipped_in_a_row = 0
        self._last_skipped = False

        self.resumed_from: Path | None = None
        ckpt = self._find_resume(resume)
        if ckpt is not None:
            self._restore(ckpt)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "model.json").write_text(json.dumps(self.model_config(), indent=1))
        n_params = sum(p.numel() for p in self.model.parameters())
        if self.dist.is_main:
            log.info("model %s (mixer=%s, schedule=%s): %.2fM parameters; data %s: %d examples %s",
                     cfg.model.preset, cfg.model.mixer, cfg.model.schedule, n_params / 1e6, cfg.data.name,
                     self.n_data, "x".join(map(str, [self.data_info.channels, *self.data_info.image_size])))

    # ------------------------------------------------------------------ config / resume
    def model_config(self) -> dict[str, Any]:
        mc = getattr(self.model, "config", None)
        if callable(mc):
            mc = mc()
        return json.loads(json.dumps(mc, default=str)) if mc is not None else {}

    def _find_resume(self, resume: str | Path | None) -> Path | None:
        if resume is None:
            if find_latest(self.run_dir) is not None:
                raise ConfigError(
                    f"run folder {str(self.run_dir)!r} already holds checkpoints; resume it (the default), or "
                    "choose another folder with --out"
                )
            return None
        if resume == "auto":
            return find_latest(self.run_dir)
        return resolve_checkpoint(resume)

    def _check_compatible(self, saved: dict[str, Any]) -> None:
        now = config_to_dict(self.cfg)
        diffs = []
        for section in ("data", "model", "transport"):
            for key, value in now[section].items():
                old = saved.get(section, {}).get(key, value)
                if old != value:
                    diffs.append(f"{section}.{key}: checkpoint {old!r}, config {value!r}")
        if diffs:
            raise ConfigError("cannot resume: the config differs from the checkpoint's in " + "; ".join(diffs)
                              + ". Resume with the same config (or start a new run with --out).")

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path, device="cpu", training=True)
        self._check_compatible(ckpt.config)
        load_weights(self.model, ckpt, "model")
        load_weights(self.ema, ckpt, "ema")
        tr = ckpt.training
        self.optimizer.load_state_dict(tr["optimizer"])
        self.scheduler.load_state_dict(tr["scheduler"])
        if tr.get("scaler"):
            self.scaler.load_state_dict(tr["scaler"])
        s = ckpt.state
        self.step, self.epoch, self.pos = int(s["step"]), int(s["data"]["epoch"]), int(s["data"]["pos"])
        self._loss_sum, self._loss_count = float(s["loss_sum"]), int(s["loss_count"])
        nf = s.get("nonfinite", {})
        self.skipped, self._skipped_in_a_row = int(nf.get("skipped", 0)), int(nf.get("in_a_row", 0))
        if s.get("world_size", 1) != self.dist.world_size and self.dist.is_main:
            log.warning("resuming a run saved with %s processes on %s: data order is kept, noise differs",
                        s.get("world_size"), self.dist.world_size)
        rng = ckpt.rng
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng.get("cuda"):
            try:
                torch.cuda.set_rng_state_all(rng["cuda"])
            except RuntimeError:
                pass
        np.random.set_state(_numpy_state_from_json(s["numpy_rng"]))
        random.setstate(_python_state_from_json(s["python_rng"]))
        self.resumed_from = ckpt.path
        if self.dist.is_main:
            log.info("resumed from %s (step %d, epoch %d)", ckpt.path, self.step, self.epoch)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Save a checkpoint (rank 0 writes; all ranks wait at barriers around it)."""
        barrier(self.dist)
        path = None
        if self.dist.is_main:
            self._check_lock()
            rng = {"torch": torch.get_rng_state(), "noise_gen": self.noise_gen.get_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            state = {
                "data": {"epoch": self.epoch, "pos": self.pos, "seed": self.cfg.train.seed},
                "loss_sum": self._loss_sum,
                "loss_count": self._loss_count,
                "nonfinite": {"skipped": self.skipped, "in_a_row": self._skipped_in_a_row},
                "world_size": self.dist.world_size,
                "numpy_rng": _numpy_state_to_json(np.random.get_state()),
                "python_rng": _python_state_to_json(random.getstate()),
                "config": config_to_dict(self.cfg),
                "model_config": self.model_config(),
                "data_info": self.data_info.to_dict(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            training = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict()}
            path = save_checkpoint(self.run_dir, self.step, model=self.model.state_dict(), ema=self.ema.state_dict(),
                                   training=training, rng=rng, state=state, keep_last=self.cfg.train.keep_last)
        barrier(self.dist)
        return path

    def _check_lock(self) -> None:
        if self._lock is not None and self._lock.lost:
            raise RunLockedError(f"this trainer lost the lock of {str(self.run_dir)!r} to a newer trainer in this "
                                 "process; it stopped so the two cannot overwrite each other's files", {})

    # ------------------------------------------------------------------ data
    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, 0xDA7A, epoch))
            self._perm = torch.randperm(self.n_data, generator=g)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def next_indices(self) -> torch.Tensor:
        """This rank's dataset indices for the next step; advances (epoch, pos). Drops the last partial batch."""
        B = self.cfg.train.batch_size
        if self.pos + B > self.n_data:
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self._permutation(self.epoch)[self.pos : self.pos + B]  # (B,) global batch
        self.pos += B
        return shard(idx, self.dist)  # (B / world,)

    def fetch(self, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Images [B, C, H, W] (or videos [B, C, T, H, W]) on the device and the model's keyword arguments."""
        ds = self.dataset
        captions = None
        if hasattr(ds, "get_batch") and not self.cfg.data.captions:
            x, y = ds.get_batch(indices.tolist())
        else:
            items = [ds[int(i)] for i in indices]
            x = torch.stack([it[0] for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
            if self.cfg.data.captions:
                captions = [it[2] for it in items]
        x = x.to(self.device, non_blocking=True)
        kwargs: dict[str, Any] = {}
        if self.data_info.num_classes > 0 and not self.data_info.captions:
            kwargs["y"] = torch.as_tensor(y).long().to(self.device)
        if captions is not None:
            kwargs["text"] = captions
        return x, kwargs

    # ------------------------------------------------------------------ one step
    @contextmanager
    def _step_rng(self, step: int):
        """Global RNG (label dropout inside the model) seeded from (seed, rank, step), restored after."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = mix_seed(self.cfg.train.seed, 0x6C0B, self.dist.rank, step)
            torch.manual_seed(seed)
            yield

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step. Returns (mean loss of this rank, grad norm before clipping), as tensors."""
        t = self.cfg.train
        x1, kwargs = self.fetch(self.next_indices())
        self.train_model.train()
        self.noise_gen.manual_seed(mix_seed(t.seed, 0x401E, self.dist.rank, self.step))
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        with self._step_rng(self.step), autocast:
            out = self.transport.training_loss(self.forward_model, x1, generator=self.noise_gen, **kwargs)
            loss = out["loss"].float().mean()
        self.scaler.scale(loss).backward()
        # clip BEFORE the step; with fp16 the gradients are unscaled first so max_norm is in true units
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        self._last_skipped = not self._finite(loss, grad_norm)
        if self._last_skipped:
            self._nonfinite_step(loss, grad_norm)
            return loss.detach(), grad_norm.detach()
        self._skipped_in_a_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        decay = t.ema_decay
        if t.ema_warmup:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        update_ema(self.ema, self.model, decay)
        self.step += 1
        return loss.detach(), grad_norm.detach()

    def _finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Loss and grad norm finite on every rank? (One host sync per step.) With the fp16 GradScaler an
        inf / NaN gradient is its business (it skips the step and lowers the scale): only the loss counts."""
        ok = torch.isfinite(loss) if self.scaler.is_enabled() else torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.dist.distributed:
            return float(all_reduce_mean(ok.float(), self.dist)) == 1.0
        return bool(ok)

    def _nonfinite_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """The update of a step with a NaN / inf loss or grad norm is dropped; stop or skip (train.nonfinite)."""
        t = self.cfg.train
        step = self.step + 1  # 1-based, as in metrics.csv
        self.optimizer.zero_grad(set_to_none=True)
        try:
            last = find_latest(self.run_dir)
        except ValueError:  # an unreadable checkpoints folder: the message still names the step
            last = None
        kept = (f"the last checkpoint, {str(last)!r}, is kept untouched" if last is not None
                else "no checkpoint was saved yet")
        what = f"step {step}: the loss is {float(loss.detach())!r} and the gradient norm {float(grad_norm)!r}"
        advice = ("Lower optim.lr, set optim.grad_clip (e.g. 1.0), check the data for NaN / inf values, or set "
                  "train.nonfinite=skip to drop such steps")
        if t.nonfinite == "stop":
            raise NonFiniteLossError(f"{what}; training stopped before applying it ({kept}). {advice}.")
        self.skipped += 1
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row >= t.max_nonfinite:
            raise NonFiniteLossError(f"{what}; that is {self._skipped_in_a_row} non-finite steps in a row "
                                     f"(train.max_nonfinite={t.max_nonfinite}), so training stopped ({kept}). {advice}.")
        if self.dist.is_main:
            log.warning("%s; update skipped (%d skipped so far, train.nonfinite=skip)", what, self.skipped)
        self.scheduler.step()  # the lr stays a function of the step count
        self.step += 1

    # ------------------------------------------------------------------ logging
    def _csv_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def _prepare_csv(self) -> None:
        """Keep rows up to the current step (a resumed run rewrites what came after its checkpoint)."""
        path = self._csv_path()
        rows = []
        if path.exists():
            try:
                with open(path, newline="", encoding="utf-8") as f:
                    rows = [r for r in csv.DictReader(f) if (r.get("step") or "").isdigit() and int(r["step"]) <= self.step]
            except (UnicodeDecodeError, csv.Error) as exc:
                raise OSError(f"{str(path)!r} is not a readable CSV log ({exc}); move it aside (it is only the "
                              "training log, the checkpoints are unaffected) and run the same command again") from None
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
        os.replace(tmp, path)

    def _log_row(self, row: dict[str, Any]) -> None:
        with open(self._csv_path(), "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
        if self._tb is not None:
            for key in ("loss", "lr", "grad_norm", "steps_per_s"):
                self._tb.add_scalar(f"train/{key}", row[key], row["step"])

    def _open_tensorboard(self) -> None:
        if not self.cfg.logging.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            log.debug("tensorboard not installed; logging to CSV only")
            return
        self._tb = SummaryWriter(str(self.run_dir / "tb"))

    # ------------------------------------------------------------------ samples / eval
    def sample_grid(self, path: Path) -> Path:
        from .sampling import save_sample_grid

        return save_sample_grid(self.ema, self.transport, self.cfg, self.data_info, path, device=self.device)

    def evaluate(self) -> dict[str, Any]:
        from .sampling import evaluate_model

        return evaluate_model(self.ema, self.transport, self.cfg, self.data_info, self.run_dir, device=self.device,
                              progress=self.cfg.logging.progress)

    # ------------------------------------------------------------------ the loop
    def train(self, *, stop_at: int | None = None) -> dict[str, Any]:
        """Train up to ``train.steps`` (or ``stop_at``, for tests that simulate an interruption)."""
        t, main = self.cfg.train, self.dist.is_main
        end = min(t.steps, stop_at) if stop_at is not None else t.steps
        if main:
            self._prepare_csv()
            self._open_tensorboard()
            (self.run_dir / "samples").mkdir(exist_ok=True)
        bar = None
        if main and self.cfg.logging.progress and end > self.step:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self._start_step = self.step
        start_time = time.perf_counter()
        last_time, last_step = start_time, self.step
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            while self.step < end:
                loss, grad_norm = self.train_step()
                if not self._last_skipped:
                    loss_acc += loss.double()
                    self._loss_count += 1
                step = self.step
                if t.log_every and step % t.log_every == 0:
                    self._loss_sum += float(loss_acc)
                    loss_acc.zero_()
                    local = self._loss_sum / self._loss_count if self._loss_count else float("nan")
                    glob = float(all_reduce_mean(torch.tensor(local, dtype=torch.float64, device=self.device), self.dist))
                    now = time.perf_counter()
                    sps = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    row = {"step": step, "epoch": self.epoch, "loss": repr(glob),
                           "lr": repr(self.scheduler.get_last_lr()[0]), "grad_norm": repr(float(grad_norm)),
                           "steps_per_s": f"{sps:.3f}", "elapsed_s": f"{now - start_time:.1f}",
                           "skipped": self.skipped}
                    self.history.append({"step": step, "loss": glob, "loss_rank": local})
                    self._loss_sum, self._loss_count = 0.0, 0
                    if main:
                        self._log_row(row)
                        if bar is not None:
                            bar.set_postfix(loss=f"{glob:.4f}", sps=f"{sps:.2f}")
                if bar is not None:
                    bar.update(1)
                if t.sample_every and step % t.sample_every == 0 and step < t.steps and main:
                    self.sample_grid(self.run_dir / "samples" / f"step_{step:08d}.png")
                if t.ckpt_every and step % t.ckpt_every == 0 and step < end:
                    self._flush_loss(loss_acc)
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        self._flush_loss(loss_acc)
        trained = self.step > (self._start_step if self._start_step is not None else -1)
        if trained and (self.step >= t.steps or stop_at is not None):
            self.save()
        result: dict[str, Any] = {"step": self.step, "run_dir": str(self.run_dir)}
        if self.history:
            result["loss"] = self.history[-1]["loss"]
        return result

    def _flush_loss(self, loss_acc: torch.Tensor) -> None:
        """Move the on-device loss accumulator into the saved float (before a checkpoint)."""
        self._loss_sum += float(loss_acc)
        loss_acc.zero_()

    def finish(self) -> dict[str, Any]:
        """After ``train()``: final sample grid and (``eval.at_end``) FID/KID; rank 0 only."""
        out: dict[str, Any] = {}
        if self.dist.is_main:
            grid = self.sample_grid(self.run_dir / "samples" / f"step_{self.step:08d}.png")
            final = self.run_dir / "samples.png"
            final.write_bytes(grid.read_bytes())
            out["grid"] = str(final)
            log.info("sample grid: %s", final)
            if self.cfg.eval.at_end:
                out["metrics"] = self.evaluate()
        # no barrier here: the other ranks may leave while rank 0 samples (a long eval would time out NCCL)
        return out

    def close(self) -> None:
        """Close the logs, give the run folder's lock back, leave the process group (safe to call twice)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()
        if self._owns_dist:
            cleanup_distributed(self.dist)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
