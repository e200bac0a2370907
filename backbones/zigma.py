"""The ZigMa network: a DiT whose attention is any sequence mixer run along per-layer scan paths.

Read top to bottom: helpers (modulation, sin-cos position embeddings, patch sizes) -> patch embedding ->
scan plan (the gathers between layers) -> block -> final layer -> model.

    x [B, C, H, W] (or video [B, C, T, H, W])
      -> patch embedding, raster tokens [B, L, D] (+ position embedding)
      -> arrange into layer 0's scan order (one gather)
      -> block_i in Omega_i order; between block i and i+1 ONE gather, inv_i[order_(i+1)]
      -> rearrange to raster order after the last block (one gather)
      -> final layer (adaLN) -> unpatchify -> same shape as x

Conditioning (timestep + class label or pooled text) is one vector c [B, D] driving adaLN-Zero; text
tokens enter only through cross-attention, never into the spatial scan. Factorized video paths
(``segments`` S > 1) fold their segments into the batch around the mixer: [B*S, L/S, D].

``naive_scan=True`` runs the plain reference instead: every layer arranges from raster order, scans and
rearranges back (paper Eq. 1-3); the test suite holds the two paths together.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from zigscan.scanpaths.apply import fold_segments, permute_tokens, transition_index, unfold_segments
from zigscan.scanpaths.base import ScanPath
from zigscan.scanpaths.registry import SCANPATHS
from zigscan.scanpaths.schedules import SCHEDULES, get_schedule, get_schedule_names

from .conditioning import (
    TEXT_ENCODERS,
    CaptionEncoder,
    CLIPTextEncoder,
    CrossAttention,
    LabelEmbedder,
    TextEmbedder,
    TimestepEmbedder,
)
from .mixers import get_mixer

__all__ = ["ZigMa", "ZigMaBlock", "FinalLayer", "PatchEmbed", "sincos_pos_embed", "POS_EMBEDS", "MixerBuildError"]

PosEmbed = Literal["sincos", "learned", "none"]
POS_EMBEDS: tuple[str, ...] = ("sincos", "learned", "none")


#################################################################################
#                                    Helpers                                    #
#################################################################################


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, L, D], shift/scale [B, D] -> [B, L, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos [M] -> [M, dim]: half sin, half cos (MAE/DiT); an odd dim gets one zero column."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))  # (half,)
    out = pos.double()[:, None] * omega[None]  # (M, half)
    emb = torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, 2*half)
    return torch.cat([emb, torch.zeros(len(pos), dim - 2 * half, dtype=torch.float64)], dim=1)  # (M, dim)


def sincos_pos_embed(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """Fixed sin-cos position embedding for a 2D (H, W) or 3D (T, H, W) grid, raster order: [L, dim].

    2D: half the channels encode the row, half the column (DiT). 3D: the channels are split in three
    (time gets the remainder) and each part encodes one axis.
    """
    if len(grid) == 2:
        dims = [dim // 2, dim - dim // 2]
    else:
        d = (dim // 3) // 2 * 2
        dims = [dim - 2 * d, d, d]
    axes = torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")  # each (*grid)
    parts = [_sincos_1d(d, a.reshape(-1)) for d, a in zip(dims, axes)]  # each (L, d)
    return torch.cat(parts, dim=1).float()  # (L, dim)


class MixerBuildError(ValueError):
    """A registered mixer's factory raised: names the mixer and who registered it (a plugin, often)."""


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise TypeError(f"{what} must be an int or (H, W), got {size!r}")
    if min(size) < 1:
        raise ValueError(f"{what} must be positive (an image side of at least one patch), got {size!r}")
    return size  # type: ignore[return-value]


def _build_mixer(name: str | None, hidden_size: int, impl: str, kwargs: dict[str, Any]) -> nn.Module:
    """``get_mixer``, with a factory's own failure reported as the mixer's and its registrant's."""
    from zigscan.scanpaths.registries import UnknownNameError

    try:
        return get_mixer(name, hidden_size, impl=impl, **kwargs)
    except (UnknownNameError, MixerBuildError):
        raise
    except Exception as exc:
        from .mixers.registry import MIXERS

        try:
            source = MIXERS.source(name)
        except Exception:
            source = "?"
        who = "built in" if source == "zigscan" else f"registered by {source!r}"
        fix = f" To run without that plugin, set ZIGSCAN_DISABLE_PLUGINS={source}." if source not in ("zigscan", "user", "?") else ""
        raise MixerBuildError(f"mixer {name!r} ({who}) failed to build for width {hidden_size} with {kwargs or 'no options'}: "
                              f"{type(exc).__name__}: {exc}.{fix}") from exc


def _default_heads(hidden_size: int) -> int:
    h = max(1, hidden_size // 64)
    while hidden_size % h:
        h -= 1
    return h


Perm = tuple[torch.Tensor, torch.Tensor]  # (index, inverse index) of a token permutation


def _gather(x: torch.Tensor, perm: Perm | None) -> torch.Tensor:
    """Permute tokens: x [B, L, D] -> x[:, index] (``None`` = identity, no copy); backward is a gather too."""
    return x if perm is None else permute_tokens(x, *perm)  # (B, L, D)


#################################################################################
#                                Patch embedding                                #
#################################################################################


class PatchEmbed(nn.Module):
    """Image [B, C, H, W] or video [B, C, T, H, W] -> raster tokens [B, L, D] and the token grid."""

    def __init__(self, patch: tuple[int, ...], in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch = patch
        conv = nn.Conv2d if len(patch) == 2 else nn.Conv3d
        self.proj = conv(in_channels, hidden_size, kernel_size=patch, stride=patch)

    def grid(self, x: torch.Tensor) -> tuple[int, ...]:
        """The token grid of an input; clear errors for wrong ranks, channels or sizes."""
        nd = len(self.patch)
        what = "[B, C, H, W] images" if nd == 2 else "[B, C, T, H, W] videos"
        if x.dim() != nd + 2:
            hint = " This is a video model: give [B, C, T, H, W]." if nd == 3 else (
                " This is an image model; build a video model with num_frames=T." if x.dim() == 5 else "")
            raise ValueError(f"expected {what}, got a tensor of shape {tuple(x.shape)}.{hint}")
        if x.shape[1] != self.proj.in_channels:
            raise ValueError(f"expected {self.proj.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        sizes = tuple(x.shape[2:])
        names = ("H", "W") if nd == 2 else ("T", "H", "W")
        bad = [f"{n}={s} is not divisible by {p}" for n, s, p in zip(names, sizes, self.patch) if s % p]
        if bad:
            raise ValueError(
                f"input size {sizes} does not divide into patches {self.patch}: {'; '.join(bad)}. "
                "Crop or pad the input, or choose another patch size."
            )
        return tuple(s // p for s, p in zip(sizes, self.patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, L, D), raster order


#################################################################################
#                                   Scan plan                                   #
#################################################################################


@dataclass(frozen=True)
class ScanPlan:
    """The gathers of one forward pass on one grid: ``first`` arranges raster tokens into layer 0's order;
    ``moves[i]`` takes layer i's order to layer i+1's (the last one back to raster). ``None`` = identity."""

    first: Perm | None
    moves: tuple[Perm | None, ...]
    segments: tuple[int, ...]
    raster: tuple[bool, ...]  # layer i sees the whole grid in raster order (its path is the identity, S = 1)

    @staticmethod
    def build(paths: Sequence[ScanPath], grid: tuple[int, ...], device: torch.device) -> ScanPlan:
        def is_identity(idx: torch.Tensor) -> bool:
            return torch.equal(idx, torch.arange(idx.numel(), device=idx.device))

        def perm(idx: torch.Tensor, inv: torch.Tensor) -> Perm | None:
            return None if is_identity(idx) else (idx, inv)

        first = perm(paths[0].order(grid, device=device), paths[0].inverse(grid, device=device))
        moves = [perm(transition_index(a, b, grid, device), transition_index(b, a, grid, device))
                 for a, b in zip(paths[:-1], paths[1:])]
        moves.append(perm(paths[-1].inverse(grid, device=device), paths[-1].order(grid, device=device)))
        segments = tuple(p.segments(grid) for p in paths)
        raster = tuple(S == 1 and is_identity(p.order(grid, device=device)) for p, S in zip(paths, segments))
        return ScanPlan(first, tuple(moves), segments, raster)


#################################################################################
#                                  ZigMa block                                  #
#################################################################################


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (timm's Mlp, as DiT uses it)."""

    def __init__(self, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ZigMaBlock(nn.Module):
    """Pre-norm block with adaLN-Zero: scan mixer (gated residual), optional cross-attention on text
    tokens, optional MLP (gated residual). Tokens arrive in this layer's scan order."""

    def __init__(self, hidden_size: int, mixer: nn.Module, *, mlp_ratio: float = 0.0,
                 cross_attn_heads: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mixer = mixer
        self.cross_attn = CrossAttention(hidden_size, cross_attn_heads) if cross_attn_heads else None
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6) if cross_attn_heads else None
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio)) if mlp_ratio > 0 else None
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6) if self.mlp else None
        self.n_mod = 6 if self.mlp is not None else 3
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.n_mod * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, *, segments: int = 1, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        mod = self.adaLN_modulation(c).chunk(self.n_mod, dim=1)  # n_mod x (B, D)
        h = modulate(self.norm1(x), mod[0], mod[1])  # (B, L, D)
        h = fold_segments(h, segments) if segments > 1 else h  # (B*S, L/S, D)
        h = self.mixer(h)  # (B*S, L/S, D)
        h = unfold_segments(h, segments) if segments > 1 else h  # (B, L, D)
        x = x + mod[2].unsqueeze(1) * h  # (B, L, D)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), text, text_mask)  # (B, L, D)
        if self.mlp is not None:
            x = x + mod[5].unsqueeze(1) * self.mlp(modulate(self.norm2(x), mod[3], mod[4]))  # (B, L, D)
        return x


class FinalLayer(nn.Module):
    """adaLN norm, then a linear map to patch pixels: [B, L, D] -> [B, L, prod(patch) * C]."""

    def __init__(self, hidden_size: int, patch_numel: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_numel * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, L, P*C)


#################################################################################
#                                 ZigMa network                                 #
#################################################################################


class ZigMa(nn.Module):
    """ZigMa / DiT-style diffusion backbone with any mixer and any per-layer scan schedule.

    Called as ``model(x, t, y=None, *, text=None, text_mask=None)``: x [B, C, H, W] (or [B, C, T, H, W]
    when ``num_frames`` is set), t [B] floats in [0, 1], y [B] class labels (``num_classes`` = null label;
    ``None`` = unconditional), text a list of B captions or embeddings [B, N, text_dim] with mask [B, N].
    Returns a tensor of x's shape. Any H, W (and T) divisible by the patch size work, unless
    ``pos_embed="learned"`` (fixed to ``input_size``).

    Args (DiT's names where DiT has them):
        input_size: int or (H, W) of the inputs (sets the learned position embedding's grid).
        patch_size, in_channels, hidden_size, depth, num_classes (0 = no labels), class_dropout_prob.
        num_frames: frames T of a video model (None = image model); temporal_patch_size: patch along T.
        mixer, mixer_kwargs, mixer_impl: the sequence mixer, by registry name (``zigscan mixers list``).
        schedule: scan schedule name (``zigzag-8``), a scan-path name used in every layer
            (``video-zigzag``), or a list of path names cycled over depth.
        mlp_ratio: MLP sub-block width ratio (0 = none, ZigMa; 4 = DiT).
        pos_embed: ``"sincos"`` (fixed, for the actual grid), ``"learned"`` or ``"none"``.
        time_scale: t in [0, 1] is multiplied by this before the sinusoidal embedding.
        text_encoder: None, ``"precomputed"`` (tensors of width ``text_dim``), ``"caption"`` (a small
            trainable encoder over ``text_vocab`` words, None = a fixed small vocabulary), ``"clip"`` or
            ``"open_clip"`` (frozen, from ``text_encoder_path`` on disk only).
        text_width, text_depth, text_heads, text_max_len: the caption encoder's size.
        caption_dropout_prob: probability of the null caption while training (classifier-free guidance).
        cross_attn_heads: heads of the text cross-attention (default width // 64).
        name: the preset name, informational.
    """

    def __init__(
        self,
        *,
        input_size: int | Sequence[int] = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 768,
        depth: int = 24,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        num_frames: int | None = None,
        temporal_patch_size: int = 1,
        mixer: str = "mamba",
        mixer_kwargs: dict[str, Any] | None = None,
        mixer_impl: Literal["auto", "kernel", "reference"] = "auto",
        schedule: str | Sequence[str] = "zigzag-8",
        mlp_ratio: float = 0.0,
        pos_embed: PosEmbed = "sincos",
        time_scale: float = 1000.0,
        text_encoder: str | None = None,
        text_dim: int | None = None,
        text_vocab: Sequence[str] | None = None,
        text_width: int = 256,
        text_depth: int = 2,
        text_heads: int = 4,
        text_max_len: int = 32,
        text_encoder_path: str | None = None,
        caption_dropout_prob: float = 0.1,
        cross_attn_heads: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        H, W = _pair(input_size, "input_size")
        is_video = num_frames is not None
        for what, v in (("patch_size", patch_size), ("in_channels", in_channels), ("hidden_size", hidden_size),
                        ("depth", depth), ("temporal_patch_size", temporal_patch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be a positive int, got {v!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 = no class labels), got {num_classes!r}")
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if text_encoder is not None and text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be None or one of {TEXT_ENCODERS}, got {text_encoder!r}")
        patch = (temporal_patch_size, patch_size, patch_size) if is_video else (patch_size, patch_size)
        size = (num_frames, H, W) if is_video else (H, W)
        bad = [f"{s} % {p} != 0" for s, p in zip(size, patch) if s % p]
        if bad:
            raise ValueError(
                f"input_size {size} (num_frames, H, W) does not divide into patches {patch}: {', '.join(bad)}. "
                "Choose input_size/num_frames that are multiples of the patch size."
            )
        self.in_channels = in_channels
        self.patch = patch
        self.input_grid = tuple(s // p for s, p in zip(size, patch))
        self.num_classes = num_classes
        self.naive_scan = False  # True: per-layer arrange / scan / rearrange (the reference path)

        # scan schedule: one path per layer, all of the data's dimensionality
        if isinstance(schedule, str) and schedule not in SCHEDULES and schedule in SCANPATHS:
            schedule_names = [schedule] * depth  # a single path name: that path in every layer
        else:
            schedule_names = get_schedule_names(schedule if isinstance(schedule, str) else list(schedule), depth)
        self.scan_paths: list[ScanPath] = get_schedule(schedule_names, depth)
        if self.scan_paths[0].ndim != len(patch):
            kind = "video (T, H, W)" if self.scan_paths[0].ndim == 3 else "image (H, W)"
            raise ValueError(
                f"schedule {schedule!r} is for {kind} grids but this is an "
                f"{'video' if is_video else 'image'} model; use "
                f"{'video-sst or video-zigzag' if is_video else 'zigzag-8, sweep, hilbert-8, ...'}"
            )
        self._plans: dict[tuple, ScanPlan] = {}
        self._warned_shape = False

        # embedders
        self.x_embedder = PatchEmbed(patch, in_channels, hidden_size)
        num_tokens = math.prod(self.input_grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size)) if pos_embed == "learned" else None
        self._sincos: dict[tuple, torch.Tensor] = {}
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None

        # text: an encoder (trainable module, frozen external CLIP, or none) + projection / null caption
        self.text_encoder: CaptionEncoder | None = None
        self._frozen_text_encoder: CLIPTextEncoder | None = None
        if text_encoder == "caption":
            from .conditioning import DEFAULT_VOCAB

            text_vocab = list(text_vocab) if text_vocab is not None else list(DEFAULT_VOCAB)
            self.text_encoder = CaptionEncoder(text_vocab, width=text_width, depth=text_depth,
                                               num_heads=text_heads, max_len=text_max_len)
            text_dim = text_width
        elif text_encoder in ("clip", "open_clip"):
            self._frozen_text_encoder = CLIPTextEncoder(text_encoder_path, kind=text_encoder)
            text_dim = self._frozen_text_encoder.dim
        elif text_encoder == "precomputed" and not (isinstance(text_dim, int) and text_dim > 0):
            raise ValueError(f"text_encoder='precomputed' needs text_dim (the width of your embeddings), got {text_dim!r}")
        self.text_embedder = TextEmbedder(text_dim, hidden_size, caption_dropout_prob) if text_encoder else None
        if text_encoder and cross_attn_heads is None:
            cross_attn_heads = _default_heads(hidden_size)

        # blocks and output
        mixer_kwargs = dict(mixer_kwargs or {})
        self.blocks = nn.ModuleList([
            ZigMaBlock(hidden_size, _build_mixer(mixer, hidden_size, mixer_impl, mixer_kwargs),
                       mlp_ratio=mlp_ratio, cross_attn_heads=cross_attn_heads if text_encoder else None)
            for _ in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, math.prod(patch), in_channels)

        self._config: dict[str, Any] = dict(
            input_size=[H, W], patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
            depth=depth, num_classes=num_classes, class_dropout_prob=class_dropout_prob, num_frames=num_frames,
            temporal_patch_size=temporal_patch_size, mixer=mixer, mixer_kwargs=mixer_kwargs, mixer_impl=mixer_impl,
            schedule=schedule if isinstance(schedule, str) else list(schedule), mlp_ratio=mlp_ratio,
            pos_embed=pos_embed, time_scale=time_scale, text_encoder=text_encoder,
            text_dim=text_dim if text_encoder == "precomputed" else None,
            text_vocab=list(self.text_encoder.tokenizer.itos[3:]) if self.text_encoder is not None else None,
            text_width=text_width, text_depth=text_depth, text_heads=text_heads, text_max_len=text_max_len,
            text_encoder_path=text_encoder_path, caption_dropout_prob=caption_dropout_prob,
            cross_attn_heads=cross_attn_heads if text_encoder else None, name=name,
        )
        self.initialize_weights()

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (JSON-serialisable). ``scan_paths`` records the
        resolved path of every layer (random paths carry their seed in the name, e.g. ``random@3``)."""
        return {**copy.deepcopy(self._config), "scan_paths": [p.name for p in self.scan_paths]}

    @property
    def is_video(self) -> bool:
        return len(self.patch) == 3

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """All of the network's initialisation (DiT). Mixers and the caption encoder keep their own
        (upstream) initialisation; adaLN modulations, text cross-attention outputs and the final layer
        start at zero, so the fresh network returns zeros."""
        own_init = {id(m) for blk in self.blocks for m in blk.mixer.modules()}
        if self.text_encoder is not None:
            own_init |= {id(m) for m in self.text_encoder.modules()}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in own_init:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        w = self.x_embedder.proj.weight  # like nn.Linear
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.text_embedder is not None:
            nn.init.normal_(self.text_embedder.null_token, std=0.02)
        if self.text_encoder is not None:
            nn.init.normal_(self.text_encoder.token_embed.weight, std=0.02)
            nn.init.normal_(self.text_encoder.pos_embed, std=0.02)
        for blk in self.blocks:  # adaLN-Zero
            nn.init.constant_(blk.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(blk.adaLN_modulation[-1].bias, 0)
            if blk.cross_attn is not None:
                nn.init.constant_(blk.cross_attn.proj.weight, 0)
                nn.init.constant_(blk.cross_attn.proj.bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    # ------------------------------------------------------------------ pieces
    def scan_plan(self, grid: tuple[int, ...], device: torch.device) -> ScanPlan:
        """The gathers for a token grid, built once per (grid, device)."""
        key = (grid, str(device))
        if key not in self._plans:
            self._plans[key] = ScanPlan.build(self.scan_paths, grid, device)
        return self._plans[key]

    def position_embedding(self, grid: tuple[int, ...], x: torch.Tensor) -> torch.Tensor | None:
        """[1, L, D] for the token grid (sin-cos built for the actual grid), or None."""
        if self.pos_embed is not None:
            if grid != self.input_grid:
                raise ValueError(
                    f"pos_embed='learned' is fixed to the token grid {self.input_grid} of input_size, got grid "
                    f"{grid}. Feed inputs of the configured size, or build the model with pos_embed='sincos'."
                )
            return self.pos_embed
        if self._config["pos_embed"] == "none":
            return None
        key = (grid, str(x.device), x.dtype)
        if key not in self._sincos:
            self._sincos[key] = sincos_pos_embed(x.shape[-1], grid).to(x.device, x.dtype).unsqueeze(0)
        return self._sincos[key]  # (1, L, D)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Raster tokens [B, L, prod(patch)*C] -> [B, C, H, W] or [B, C, T, H, W]."""
        if self.is_video:
            (r, p, q), (T, H, W) = self.patch, grid
            return rearrange(x, "b (t h w) (r p q c) -> b c (t r) (h p) (w q)", t=T, h=H, w=W, r=r, p=p, q=q)
        (p, q), (H, W) = self.patch, grid
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=H, w=W, p=p, q=q)

    def _times(self, t: torch.Tensor | float, B: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if not t.is_floating_point():
            raise TypeError(f"t must be float times in [0, 1], got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a float tensor [B] = [{B}] (or a scalar), got shape {tuple(t.shape)}")
        return t

    def _embed_text(self, text: Any, text_mask: torch.Tensor | None, B: int, device: torch.device,
                    force_drop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text (captions or embeddings) -> tokens [B, N, D], mask [B, N], pooled [B, D]."""
        te = self.text_embedder
        assert te is not None
        if text is None:  # no caption: the null caption for everyone
            tokens = torch.zeros(B, 1, te.text_dim, device=device)
            mask = torch.ones(B, 1, dtype=torch.bool, device=device)
            force_drop = torch.ones(B, dtype=torch.bool, device=device)
        elif isinstance(text, torch.Tensor):
            if text.dim() != 3 or text.shape[0] != B or text.shape[2] != te.text_dim or text.shape[1] < 1:
                raise ValueError(f"text embeddings must be [B, N, text_dim] = [{B}, N>=1, {te.text_dim}], got {tuple(text.shape)}")
            tokens = text.to(device)
            mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device) if text_mask is None else text_mask
            if mask.shape != text.shape[:2]:
                raise ValueError(f"text_mask must be [B, N] = {list(text.shape[:2])}, got {tuple(mask.shape)}")
            mask = mask.to(device=device, dtype=torch.bool)
            if not bool(mask.any(1).all()):
                raise ValueError("every row of text_mask needs at least one True (real) token; "
                                 "for 'no caption' pass text=None or let forward_with_cfg drop it")
        else:
            if isinstance(text, str) or not isinstance(text, Sequence) or len(text) != B:
                raise ValueError(f"text must be a list of {B} captions or a tensor [B, N, C], got {type(text).__name__}"
                                 f"{'' if isinstance(text, str) else f' of length {len(text)}'}")
            if self.text_encoder is not None:
                tokens, mask = self.text_encoder(list(text))  # (B, N, C), (B, N)
            elif self._frozen_text_encoder is not None:
                tokens, mask = self._frozen_text_encoder(list(text), device)  # (B, N, C), (B, N)
            else:
                raise ValueError("this model takes precomputed text embeddings [B, N, text_dim] (text_encoder="
                                 "'precomputed'), not captions; encode them first or build with text_encoder='caption'")
        return te(tokens.to(self.final_layer.linear.weight.dtype), mask, force_drop)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None, *,
                text: Any = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, (T,) H, W], t [B] in [0, 1], y [B] labels or None -> output of x's shape."""
        return self._forward(x, t, y, text, text_mask, None)

    def _forward(self, x: torch.Tensor, t: Any, y: torch.Tensor | None, text: Any, text_mask: torch.Tensor | None,
                 force_drop: torch.Tensor | None) -> torch.Tensor:
        self._check_input(x)
        grid = self.x_embedder.grid(x)  # (H', W') or (T', H', W')
        B = x.shape[0]
        h = self.x_embedder(x)  # (B, L, D), raster order
        pos = self.position_embedding(grid, h)  # (1, L, D) or None
        h = h + pos if pos is not None else h  # (B, L, D)
        c = self.t_embedder(self._times(t, B, x.device))  # (B, D)
        if self.y_embedder is not None:
            labels = torch.full((B,), self.num_classes, device=x.device, dtype=torch.long) if y is None else (
                torch.as_tensor(y, device=x.device))
            if labels.shape != (B,):
                raise ValueError(f"y must be class labels [B] = [{B}], got shape {tuple(labels.shape)}")
            c = c + self.y_embedder(labels.to(x.device), force_drop)  # (B, D)
        elif y is not None:
            raise ValueError("this model is unconditional on class labels (num_classes=0) but got y; "
                             "build it with num_classes=K to condition on labels")
        txt = txt_mask = None
        if self.text_embedder is not None:
            txt, txt_mask, pooled = self._embed_text(text, text_mask, B, x.device, force_drop)  # (B, N, D), (B, N), (B, D)
            c = c + pooled  # (B, D)
        elif text is not None:
            raise ValueError("this model has no text conditioning; build it with text_encoder='caption' "
                             "(or 'precomputed' / 'clip') to pass text")
        self._tell_mixers_the_grid(grid, h.device)
        run = self._blocks_naive if self.naive_scan else self._blocks
        h = run(h, c, grid, txt, txt_mask)  # (B, L, D), raster order
        h = self.final_layer(h, c)  # (B, L, prod(patch)*C)
        return self.unpatchify(h, grid)  # (B, C, (T,) H, W)

    def _check_input(self, x: torch.Tensor) -> None:
        """Clear errors for inputs that would otherwise fail deep inside torch."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor [B, C, (T,) H, W], got {type(x).__name__}")
        if x.dim() >= 1 and x.shape[0] == 0:
            raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}); give at least one example")
        if x.dim() > 2 and 0 in x.shape[2:]:
            raise ValueError(f"x has a zero-length side (shape {tuple(x.shape)}): there are no tokens to scan")
        want = self.final_layer.linear.weight.dtype
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
        if x.dtype != want and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the model's weights are {want}: convert one of them "
                            f"(x.to({want}) or model.to({x.dtype})), or run under torch.autocast")

    def _tell_mixers_the_grid(self, grid: tuple[int, ...], device: torch.device) -> None:
        """Mixers with a ``shape`` attribute (``parallel-K``) scan their own paths over a raster-ordered grid:
        they get the grid where their layer's tokens are in raster order, else None (their fallback)."""
        plan = self.scan_plan(grid, device)
        for i, blk in enumerate(self.blocks):
            if hasattr(blk.mixer, "shape"):
                blk.mixer.shape = grid if plan.raster[i] else None
                if not plan.raster[i] and not self._warned_shape:
                    self._warned_shape = True
                    warnings.warn(
                        f"mixer {self._config['mixer']!r} scans its own paths over a raster-ordered grid, but layer "
                        f"{i} uses the scan path {self.scan_paths[i].name!r}; it gets shape=None (its fallback). "
                        "Use schedule='sweep' with grid-aware mixers.", stacklevel=3)

    def _blocks(self, h: torch.Tensor, c: torch.Tensor, grid: tuple[int, ...], txt: torch.Tensor | None,
                txt_mask: torch.Tensor | None) -> torch.Tensor:
        """Tokens stay in scan order across layers: one gather per layer boundary (plus arrange / rearrange)."""
        plan = self.scan_plan(grid, h.device)
        h = _gather(h, plan.first)  # (B, L, D), Omega_0 order
        for blk, segments, move in zip(self.blocks, plan.segments, plan.moves):
            h = blk(h, c, segments=segments, text=txt, text_mask=txt_mask)  # (B, L, D), Omega_i order
            h = _gather(h, move)  # (B, L, D), Omega_(i+1) order (raster after the last block)
        return h

    def _blocks_naive(self, h: torch.Tensor, c: torch.Tensor, grid: tuple[int, ...], txt: torch.Tensor | None,
                      txt_mask: torch.Tensor | None) -> torch.Tensor:
        """Reference: every layer arranges from raster order, scans, rearranges back (paper Eq. 1-3)."""
        for blk, path in zip(self.blocks, self.scan_paths):
            hs = h[:, path.order(grid, device=h.device)]  # (B, L, D), scan order
            hs = blk(hs, c, segments=path.segments(grid), text=txt, text_mask=txt_mask)  # (B, L, D)
            h = hs[:, path.inverse(grid, device=h.device)]  # (B, L, D), raster order
        return h

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None,
                         cfg_scale: float = 4.0, *, text: Any = None, text_mask: torch.Tensor | None = None,
                         ) -> torch.Tensor:
        """Classifier-free guidance in one batched call: uncond + s * (cond - uncond), uncond = null label /
        null caption. At ``cfg_scale=1`` this equals ``forward``. Wrap in ``torch.no_grad()`` to sample."""
        if self.y_embedder is None and self.text_embedder is None:
            raise ValueError("forward_with_cfg needs a conditional model (num_classes > 0 or a text encoder)")
        B = x.shape[0]
        t = self._times(t, B, x.device)
        y = torch.as_tensor(y, device=x.device) if y is not None else None
        y2 = torch.cat([y, y]) if y is not None else None
        if isinstance(text, torch.Tensor):
            text2 = torch.cat([text, text])
            mask2 = torch.cat([text_mask, text_mask]) if text_mask is not None else None
        else:
            text2, mask2 = (list(text) * 2 if text is not None else None), None
        drop = torch.arange(2 * B, device=x.device) >= B  # (2B,), the second half unconditional
        out = self._forward(torch.cat([x, x]), torch.cat([t, t]), y2, text2, mask2, drop)  # (2B, ...)
        cond, uncond = out.chunk(2, dim=0)
        return uncond + cfg_scale * (cond - uncond)
