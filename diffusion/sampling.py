"""High-level sampling: images from a model or a checkpoint, labelled grids, and FID/KID evaluation.

    run = load_run("runs/fashion_zigma")                  # zigscan.diffusion.builder; EMA weights
    x, nfe = generate(run.model, run.transport, shape=(10, 1, 28, 28), labels=torch.arange(10), steps=20)
    save_grid(decode(x, run.data_info), "grid.png", nrow=5)

Grids of class-conditional models have one row per class, labelled with the class name; video grids
show one clip per row, its frames left to right. ``evaluate_model`` samples ``eval.n`` images (classes
cycled evenly) and compares them with the held-out split through the feature extractor of
``eval.extractor``. Objects come from ``builder``; this module never imports the trainer.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .builder import build_autoencoder, build_data_info, build_eval_dataset, build_extractor, load_run
from .config import Config
from .data import DataInfo

__all__ = [
    "generate",
    "decode",
    "save_grid",
    "make_grid",
    "grid_labels",
    "save_sample_grid",
    "evaluate_model",
    "sample_from_checkpoint",
]

log = logging.getLogger("zigscan.sample")

GRID_TILE_PIXELS = 64  # grid tiles are upscaled (nearest) by whole factors to about this size
DECODE_BATCH = 256  # latents decoded per autoencoder call (FID/KID references)
EVAL_GRID_ROWS = 8  # eval_samples.png: rows of ...
EVAL_GRID_COLS_LABELLED, EVAL_GRID_COLS = 10, 8  # ... this many samples (class-conditional, unconditional)


# ---------------------------------------------------------------------------------------------------
# Generating
# ---------------------------------------------------------------------------------------------------


def _model_fn(model: nn.Module, cfg_scale: float, y: torch.Tensor | None, text: list[str] | None):
    """model_fn(x, t) with the conditioning bound; guidance in one batched call when cfg_scale != 1."""
    conditional = y is not None or text is not None
    if conditional and cfg_scale != 1.0:
        return lambda x, t: model.forward_with_cfg(x, t, y, cfg_scale, text=text)
    if text is not None:
        return lambda x, t: model(x, t, y, text=text)
    return lambda x, t: model(x, t, y)


@torch.no_grad()
def generate(
    model: nn.Module,
    transport: Any,
    *,
    shape: tuple[int, ...],
    labels: torch.Tensor | None = None,
    captions: list[str] | None = None,
    sampler: str = "heun",
    steps: int = 20,
    cfg_scale: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> tuple[torch.Tensor, int]:
    """Sample ``shape`` = [n, C, (T,) H, W] from noise (t=0) to data (t=1). Returns (x, NFE): pixels in
    [-1, 1] to be clamped, or latents, which ``decode`` turns into pixels."""
    from .samplers import sample as run_sampler

    device = next(model.parameters()).device
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu")
    x0 = noise.to(device)
    y = labels.to(device) if labels is not None else None
    method = "euler-maruyama" if sampler == "sde" else sampler
    options: dict[str, Any] = {"atol": atol, "rtol": rtol} if method == "dopri5" else {}
    was_training = model.training
    model.eval()
    try:
        model_fn = _model_fn(model, cfg_scale, y, captions)
        res = run_sampler(transport, model_fn, x0, method=method, steps=steps, generator=generator, **options)
    finally:
        model.train(was_training)
    return res.x.float(), int(res.nfe)


# ---------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (C = 1 or 3)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] not in (1, 3):
        x = x[:, :3] if x.shape[1] > 3 else x[:, :1]
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int, *, pad: int = 2, scale: int = 1,
              row_labels: list[str] | None = None, label_width: int | None = None):
    """A PIL image: ``images`` [N, C, H, W] in [-1, 1], ``nrow`` images per row, optional row labels."""
    from PIL import Image, ImageDraw, ImageFont

    arr = _to_uint8(images)  # (N, H, W, C)
    n, h, w, c = arr.shape
    rows = math.ceil(n / nrow)
    H, W = h * scale, w * scale
    lw = 0
    font = None
    if row_labels:
        try:
            font = ImageFont.load_default(size=max(10, min(20, H // 3)))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        lw = label_width or (max(int(font.getlength(s)) for s in row_labels) + 8)
    canvas = Image.new("RGB", (lw + pad + nrow * (W + pad), pad + rows * (H + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, col = divmod(i, nrow)
        tile = Image.fromarray(arr[i, :, :, 0] if c == 1 else arr[i]).convert("RGB")
        if scale != 1:
            tile = tile.resize((W, H), Image.NEAREST)
        canvas.paste(tile, (lw + pad + col * (W + pad), pad + r * (H + pad)))
    if row_labels:
        for r, text in enumerate(row_labels[:rows]):
            draw.text((4, pad + r * (H + pad) + H // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, **kwargs: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    make_grid(images, nrow, **kwargs).save(tmp)
    tmp.replace(path)
    return path


def grid_labels(data_info: DataInfo, per_class: int, labels: list[int] | None = None
                ) -> tuple[torch.Tensor | None, list[str] | None, list[str] | None]:
    """(labels [n] or None, captions or None, row labels) of a grid with one row per class in ``labels``
    (default: every class), ``per_class`` images a row; captioned runs get the dataset's captions."""
    k = data_info.num_classes
    if labels is None and k == 0:
        return None, None, None
    rows = list(range(k)) if labels is None else [int(c) for c in labels]
    names = data_info.class_names()
    if data_info.captions:
        captions = [data_info.caption(c, 0) for c in rows for _ in range(per_class)]
        return None, captions, [data_info.caption(c, 0) for c in rows]
    y = torch.as_tensor(rows).long().repeat_interleave(per_class)  # (rows * per_class,)
    return y, None, [names[c] if c < len(names) else str(c) for c in rows]


def save_sample_grid(model: nn.Module, transport: Any, cfg: Config, data_info: DataInfo, path: str | Path, *,
                     device: torch.device | str = "cpu", per_class: int | None = None,
                     labels: list[int] | None = None) -> Path:
    """The standard grid of a run: fixed noise (``sample.seed``), one labelled row per class, with the
    sampler, steps and guidance of ``cfg.sample``."""
    s = cfg.sample
    per_class = per_class or s.per_class
    y, captions, row_labels = grid_labels(data_info, per_class, labels)
    n = len(y) if y is not None else len(captions) if captions is not None else per_class * s.rows
    C, (H, W), T = data_info.channels, data_info.image_size, data_info.num_frames
    shape = (n, C, T, H, W) if T else (n, C, H, W)
    g = torch.Generator().manual_seed(s.seed)
    noise = torch.randn(shape, generator=g)
    x, _ = generate(model, transport, shape=shape, labels=y, captions=captions, noise=noise.to(device),
                    generator=g, sampler=s.sampler, steps=s.steps, cfg_scale=s.cfg_scale, atol=s.atol, rtol=s.rtol)
    x = decode(x, data_info)  # pixels (latents decoded): sizes may differ from the model's (C, H, W)
    nrow = per_class
    if T:  # video: one clip per row, frames left to right
        x = _frames(x)  # (n*T, C, H, W)
        nrow = T
        row_labels = [lab for lab in row_labels for _ in range(per_class)] if row_labels else None
    return save_grid(x, path, nrow, scale=_tile_scale(x), row_labels=row_labels)


def _tile_scale(x: torch.Tensor) -> int:
    return max(1, GRID_TILE_PIXELS // max(x.shape[-2:]))


@torch.no_grad()
def decode(x: torch.Tensor, data_info: DataInfo) -> torch.Tensor:
    """Samples -> pixels in [-1, 1]: latents go through the run's autoencoder (divided by the dataset's
    scaling factor first), pixel samples are clamped. Videos [N, C, T, h, w] are decoded frame by frame."""
    ae = build_autoencoder(data_info)
    if ae is None:
        return x.clamp(-1, 1)
    video = x.dim() == 5
    z = _frames(x) / float(data_info.scaling_factor or 1.0)  # (N*T, c, h, w)
    ae.to(z.device)
    img = ae.decode(z).float().clamp(-1, 1)  # (N*T, C, H, W)
    if video:
        N, T = x.shape[0], x.shape[2]
        img = img.reshape(N, T, *img.shape[1:]).transpose(1, 2)  # (N, C, T, H, W)
    return img


# ---------------------------------------------------------------------------------------------------
# From a checkpoint
# ---------------------------------------------------------------------------------------------------


def sample_from_checkpoint(path: str | Path, out: str | Path, *, n: int | None = None, labels: list[int] | None = None,
                           overrides: list[str] | None = None, cfg_scale: float | None = None,
                           sampler: str | None = None, steps: int | None = None, seed: int | None = None,
                           device: str | torch.device = "cpu") -> Path:
    """Write a labelled grid from a checkpoint's EMA weights; ``n`` = total images (rounded up to whole
    rows); ``overrides`` are ``key=value`` changes of the run's config (``sample.steps=50``), and
    ``cfg_scale`` / ``sampler`` / ``steps`` / ``seed`` short for ``sample.<key>=...`` (applied last)."""
    short = {"cfg_scale": cfg_scale, "sampler": sampler, "steps": steps, "seed": seed}
    overrides = list(overrides or []) + [f"sample.{k}={v}" for k, v in short.items() if v is not None]
    run = load_run(path, device=device, overrides=overrides)
    rows = len(labels) if labels else (run.data_info.num_classes or run.cfg.sample.rows)
    per_class = max(1, math.ceil(n / rows)) if n else None
    return save_sample_grid(run.model, run.transport, run.cfg, run.data_info, out, device=device,
                            per_class=per_class, labels=labels)


# ---------------------------------------------------------------------------------------------------
# Evaluation: FID / KID against the held-out split
# ---------------------------------------------------------------------------------------------------


def _reference_images(cfg: Config, n: int | None) -> torch.Tensor:
    """The first ``n`` (None: all) held-out images [N, C, (T,) H, W] in [-1, 1] (latents decoded)."""
    ds = build_eval_dataset(cfg)
    count = len(ds) if n is None else min(n, len(ds))
    if hasattr(ds, "get_batch"):
        x, _ = ds.get_batch(slice(0, count))
    else:
        x = torch.stack([ds[i][0] for i in range(count)])
    if cfg.data.autoencoder:  # latent references are decoded like the samples, so both are pixels
        reference_info = build_data_info(ds, cfg)
        x = torch.cat([decode(x[i : i + DECODE_BATCH], reference_info) for i in range(0, len(x), DECODE_BATCH)])
    return x


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Videos [N, C, T, H, W] -> frames [N*T, C, H, W]; images pass through."""
    if x.dim() == 5:
        N, C, T, H, W = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(N * T, C, H, W)
    return x


@torch.no_grad()
def evaluate_model(model: nn.Module, transport: Any, cfg: Config, data_info: DataInfo, out_dir: str | Path, *,
                   device: torch.device | str = "cpu", n: int | None = None, progress: bool = False,
                   extractor: Any = None) -> dict[str, Any]:
    """Sample ``n`` (default ``eval.n``) images, compute FID/KID against the held-out split with
    ``extractor`` (default: ``builder.build_extractor``, i.e. ``eval.extractor`` or the dataset's own),
    write ``eval.json`` and ``eval_samples.png`` into ``out_dir``; return the metrics."""
    from .metrics import compute_metrics

    e, s = cfg.eval, cfg.sample
    n = n or e.n
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = data_info.num_classes
    C, (H, W), T = data_info.channels, data_info.image_size, data_info.num_frames
    g = torch.Generator().manual_seed(e.seed)
    scale = s.cfg_scale if e.cfg_scale is None else e.cfg_scale
    t0 = time.perf_counter()
    chunks, nfe = [], 0
    batches = range(0, n, e.batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="eval samples", unit="batch", dynamic_ncols=True)
    for start in batches:
        b = min(e.batch_size, n - start)
        idx = torch.arange(start, start + b)  # classes cycle evenly: sample i has class i % k
        y = (idx % k) if k and not data_info.captions else None
        captions = [data_info.caption(int(c), int(i)) for c, i in zip(idx % k, idx)] if data_info.captions and k else None
        shape = (b, C, T, H, W) if T else (b, C, H, W)
        noise = torch.randn(shape, generator=g)
        x, f = generate(model, transport, shape=shape, labels=y, captions=captions, noise=noise.to(device),
                        generator=g, sampler=s.sampler, steps=s.steps, cfg_scale=scale, atol=s.atol, rtol=s.rtol)
        chunks.append(decode(x, data_info).cpu())
        nfe += f
    samples = torch.cat(chunks)
    sample_time = time.perf_counter() - t0
    reference = _reference_images(cfg, e.n_reference)
    extractor = extractor or build_extractor(cfg, data_info)
    metrics = dict(compute_metrics(_frames(samples), _frames(reference), extractor, progress=progress))
    metrics = {k2: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v) for k2, v in metrics.items()}
    metrics.update(n_samples=int(n), n_reference=int(len(reference)), sampler=s.sampler, steps=s.steps,
                   cfg_scale=scale, nfe_per_batch=nfe / max(1, len(chunks)), sample_seconds=round(sample_time, 1),
                   extractor=getattr(extractor, "name", type(extractor).__name__))
    (out_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
    cols = EVAL_GRID_COLS_LABELLED if k else EVAL_GRID_COLS
    save_grid(_frames(samples[: cols * EVAL_GRID_ROWS]), out_dir / "eval_samples.png", nrow=cols * (T or 1),
              scale=_tile_scale(samples))
    log.info("eval: %s", ", ".join(f"{k2}={v:.4g}" if isinstance(v, float) else f"{k2}={v}" for k2, v in metrics.items()))
    return metrics
