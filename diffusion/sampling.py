"""High-level sampling: images from a model or a checkpoint, labelled grids, and FID/KID evaluation.

    model, transport, cfg, info = load_for_sampling("runs/fashion_zigma")      # EMA weights
    x = generate(model, transport, labels=torch.arange(10), sampler="heun", steps=20, cfg_scale=2.0)
    save_grid(x, "grid.png", nrow=8, row_labels=[...])

Grids of class-conditional models have one row per class, labelled with the class name; video grids
show one clip per row, its frames left to right. ``evaluate_model`` samples ``eval.n`` images (classes
cycled evenly) and compares them with the held-out split through the offline feature extractor.
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

from .config import Config, config_from_dict

__all__ = [
    "generate",
    "save_grid",
    "make_grid",
    "grid_labels",
    "save_sample_grid",
    "load_for_sampling",
    "evaluate_model",
    "sample_from_checkpoint",
]

log = logging.getLogger("zigscan.sample")


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
    [-1, 1] to be clamped, or latents, which ``_decode`` turns into pixels."""
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
    x = res.x if hasattr(res, "x") else res
    nfe = int(getattr(res, "nfe", 0))
    return x.float(), nfe


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


def grid_labels(info: dict[str, Any], per_class: int, rows: int) -> tuple[torch.Tensor | None, list[str] | None,
                                                                         list[str] | None]:
    """(labels [n] or None, captions or None, row labels) of a grid: one row per class, or per caption."""
    from .data import fashion_caption

    k = info.get("num_classes") or 0
    classes = info.get("classes") or [str(i) for i in range(k)]
    if info.get("captions") and k:
        captions = [fashion_caption(c, 0) for c in range(k) for _ in range(per_class)]
        return None, captions, [fashion_caption(c, 0) for c in range(k)]
    if k > 0:
        labels = torch.arange(k).repeat_interleave(per_class)  # (k * per_class,)
        return labels, None, list(classes)
    return None, None, None


def save_sample_grid(model: nn.Module, transport: Any, cfg: Config, info: dict[str, Any], path: str | Path, *,
                     device: torch.device | str = "cpu", cfg_scale: float | None = None, sampler: str | None = None,
                     steps: int | None = None, per_class: int | None = None, labels: list[int] | None = None,
                     seed: int | None = None) -> Path:
    """The standard grid of a run: fixed noise (``sample.seed``), one labelled row per class."""
    s = cfg.sample
    per_class = per_class or s.per_class
    if labels is not None:
        info = {**info}
        y = torch.as_tensor(labels).long().repeat_interleave(per_class)
        names = info.get("classes") or [str(i) for i in range(info.get("num_classes") or 0)]
        row_labels = [names[i] if i < len(names) else str(i) for i in labels]
        captions = None
        if info.get("captions"):
            from .data import fashion_caption

            captions = [fashion_caption(int(c), 0) for c in y]
            row_labels, y = [fashion_caption(i, 0) for i in labels], None
    else:
        y, captions, row_labels = grid_labels(info, per_class, s.rows)
    n = len(y) if y is not None else len(captions) if captions is not None else per_class * s.rows
    C, (H, W), T = info["channels"], info["image_size"], info.get("num_frames")
    shape = (n, C, T, H, W) if T else (n, C, H, W)
    g = torch.Generator().manual_seed(s.seed if seed is None else seed)
    noise = torch.randn(shape, generator=g)
    x, _ = generate(model, transport, shape=shape, labels=y, captions=captions, noise=noise.to(device),
                    generator=g, sampler=sampler or s.sampler, steps=steps or s.steps,
                    cfg_scale=s.cfg_scale if cfg_scale is None else cfg_scale, atol=s.atol, rtol=s.rtol)
    x = _decode(x, info)  # pixels (latents decoded): sizes may differ from the model's (C, H, W)
    if T:  # video: one clip per row, frames left to right
        x = _frames(x)  # (n*T, C, H, W)
        nrow = T
        row_labels = ([lab for lab in row_labels for _ in range(per_class)] if row_labels else None)
    else:
        nrow = per_class if (y is not None or captions is not None) else per_class
    scale = max(1, 64 // max(x.shape[-2:]))
    return save_grid(x, path, nrow, scale=scale, row_labels=row_labels)


_AUTOENCODERS: dict[str, Any] = {}


def _autoencoder(info: dict[str, Any]) -> Any:
    """The run's decoder (``data.autoencoder``), built once per process; None for pixel data."""
    spec = info.get("autoencoder")
    if not spec:
        return None
    key = json.dumps([spec, info.get("autoencoder_kwargs") or {}], sort_keys=True)
    if key not in _AUTOENCODERS:
        from .vae import load_autoencoder

        _AUTOENCODERS[key] = load_autoencoder(spec, **(info.get("autoencoder_kwargs") or {})).eval()
    return _AUTOENCODERS[key]


@torch.no_grad()
def _decode(x: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """Samples -> pixels in [-1, 1]: latents go through the run's autoencoder (divided by the dataset's
    scaling factor first), pixel samples are clamped. Videos [N, C, T, h, w] are decoded frame by frame."""
    ae = _autoencoder(info)
    if ae is None:
        return x.clamp(-1, 1)
    video = x.dim() == 5
    z = _frames(x) / float(info.get("scaling_factor") or 1.0)  # (N*T, c, h, w)
    param = next(ae.parameters(), None)
    if param is not None:
        ae.to(z.device)
    img = ae.decode(z).float().clamp(-1, 1)  # (N*T, C, H, W)
    if video:
        N, T = x.shape[0], x.shape[2]
        img = img.reshape(N, T, *img.shape[1:]).transpose(1, 2)  # (N, C, T, H, W)
    return img


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def load_for_sampling(path: str | Path, *, device: str | torch.device = "cpu", weights: str = "ema"
                      ) -> tuple[nn.Module, Any, Config, dict[str, Any], Any]:
    """(model in eval mode, transport, config, data info, checkpoint) from any checkpoint path."""
    from zigscan.backbones import model_from_config

    from .checkpoint import load_checkpoint
    from .trainer import build_transport

    ckpt = load_checkpoint(path, device="cpu", training=False, which=(weights,))
    cfg = config_from_dict(ckpt.config, validate=False)
    mc = dict(ckpt.model_config)
    mc.pop("scan_paths", None) if "schedule" in mc else None
    model = model_from_config(mc)
    state = ckpt.ema if weights == "ema" else ckpt.model
    model.load_state_dict(state)
    model.to(device).eval()
    return model, build_transport(cfg), cfg, ckpt.state.get("data_info", {}), ckpt


def sample_from_checkpoint(path: str | Path, out: str | Path, *, n: int | None = None, cfg_scale: float | None = None,
                           sampler: str | None = None, steps: int | None = None, labels: list[int] | None = None,
                           seed: int | None = None, device: str | torch.device = "cpu") -> Path:
    """Write a labelled grid from a checkpoint; ``n`` = total images (rounded to whole rows)."""
    model, transport, cfg, info, _ = load_for_sampling(path, device=device)
    rows = len(labels) if labels else (info.get("num_classes") or cfg.sample.rows)
    per_class = max(1, math.ceil(n / rows)) if n else None
    return save_sample_grid(model, transport, cfg, info, out, device=device, cfg_scale=cfg_scale, sampler=sampler,
                            steps=steps, per_class=per_class, labels=labels, seed=seed)


# ---------------------------------------------------------------------------------------------------
# Evaluation: FID / KID against the held-out split
# ---------------------------------------------------------------------------------------------------


def _reference_images(cfg: Config, n: int | None) -> torch.Tensor:
    from .trainer import build_eval_dataset

    ds = build_eval_dataset(cfg)
    count = len(ds) if n is None else min(n, len(ds))
    if hasattr(ds, "get_batch"):
        x, _ = ds.get_batch(slice(0, count))
    else:
        x = torch.stack([ds[i][0] for i in range(count)])
    if cfg.data.autoencoder:  # latent references are decoded like the samples, so both are pixels
        info = {"autoencoder": cfg.data.autoencoder, "autoencoder_kwargs": cfg.data.autoencoder_kwargs,
                "scaling_factor": getattr(ds, "scaling_factor", None)}
        x = torch.cat([_decode(x[i : i + 256], info) for i in range(0, len(x), 256)])
    return x


def _frames(x: torch.Tensor) -> torch.Tensor:
    """Videos [N, C, T, H, W] -> frames [N*T, C, H, W]; images pass through."""
    if x.dim() == 5:
        N, C, T, H, W = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(N * T, C, H, W)
    return x


@torch.no_grad()
def evaluate_model(model: nn.Module, transport: Any, cfg: Config, info: dict[str, Any], out_dir: str | Path, *,
                   device: torch.device | str = "cpu", n: int | None = None, progress: bool = False,
                   extractor: Any = None) -> dict[str, Any]:
    """Sample ``n`` (default ``eval.n``) images, compute FID/KID against the held-out split with the
    offline extractor, write ``eval.json`` and ``eval_samples.png`` into ``out_dir``; return the metrics."""
    from .feature_net import FashionFeatureNet
    from .metrics import compute_metrics

    e, s = cfg.eval, cfg.sample
    n = n or e.n
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = info.get("num_classes") or 0
    C, (H, W), T = info["channels"], info["image_size"], info.get("num_frames")
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
        idx = torch.arange(start, start + b)
        y = (idx % k) if k and not info.get("captions") else None
        captions = None
        if info.get("captions") and k:
            from .data import fashion_caption

            captions = [fashion_caption(int(c), int(i)) for c, i in zip(idx % k, idx)]
        shape = (b, C, T, H, W) if T else (b, C, H, W)
        noise = torch.randn(shape, generator=g)
        x, f = generate(model, transport, shape=shape, labels=y, captions=captions, noise=noise.to(device),
                        generator=g, sampler=s.sampler, steps=s.steps, cfg_scale=scale, atol=s.atol, rtol=s.rtol)
        chunks.append(_decode(x, info).cpu())
        nfe += f
    samples = torch.cat(chunks)
    sample_time = time.perf_counter() - t0
    reference = _reference_images(cfg, e.n_reference)
    extractor = extractor or FashionFeatureNet.load_default()
    metrics = dict(compute_metrics(_frames(samples), _frames(reference), extractor, progress=progress))
    metrics = {k2: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v) for k2, v in metrics.items()}
    metrics.update(n_samples=int(n), n_reference=int(len(reference)), sampler=s.sampler, steps=s.steps,
                   cfg_scale=scale, nfe_per_batch=nfe / max(1, len(chunks)), sample_seconds=round(sample_time, 1),
                   extractor=getattr(extractor, "name", type(extractor).__name__))
    (out_dir / "eval.json").write_text(json.dumps(metrics, indent=1))
    nrow = 10 if k else 8
    save_grid(_frames(samples[: nrow * 8]), out_dir / "eval_samples.png", nrow=nrow * (T or 1) if T else nrow,
              scale=max(1, 64 // max(samples.shape[-2:])))
    log.info("eval: %s", ", ".join(f"{k2}={v:.4g}" if isinstance(v, float) else f"{k2}={v}" for k2, v in metrics.items()))
    return metrics
