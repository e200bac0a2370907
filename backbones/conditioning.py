"""Conditioning of the ZigMa network: timestep, class-label and text embedders, and text encoders.

Read top to bottom: helpers -> timestep -> labels -> text tokenizer -> text encoders (a small trainable
caption encoder, local CLIP) -> the text embedder that projects, drops and pools text tokens.

Every embedder turns its input into vectors of the network width D; the network adds them into one
conditioning vector ``c`` [B, D] that drives adaLN. Text tokens [B, N, D] also feed cross-attention.
Conditioning tokens are never mixed into the spatial scan.

Classifier-free guidance: labels are dropped to a learned null label (index ``num_classes``); captions
are dropped to a learned null caption (one learned token, whatever the encoder). Both are dropped with
their probability while training, and on request (``force_drop``) for the unconditional half of
``forward_with_cfg``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "TimestepEmbedder",
    "LabelEmbedder",
    "WordTokenizer",
    "DEFAULT_VOCAB",
    "build_vocab",
    "CaptionEncoder",
    "CLIPTextEncoder",
    "TextEmbedder",
    "CrossAttention",
    "TEXT_ENCODERS",
]

# Text encoder kinds the network accepts (``text_encoder=`` of ``ZigMa``).
TEXT_ENCODERS: tuple[str, ...] = ("precomputed", "caption", "clip", "open_clip")


#################################################################################
#                               Timestep embedding                              #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Embeds scalar times t in [0, 1] into vectors [B, D] (DiT's embedder, t scaled by ``time_scale``).

    ``time_scale`` maps t in [0, 1] to DiT's [0, 1000] so the sinusoid frequencies resolve it.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.time_scale = float(time_scale)

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """Sinusoidal embedding: t [B] (float) -> [B, dim]."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t * self.time_scale, self.frequency_embedding_size)  # (B, F)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (B, D)


#################################################################################
#                                 Class labels                                  #
#################################################################################


class LabelEmbedder(nn.Module):
    """Class labels [B] -> [B, D]. Row ``num_classes`` is the learned null label (classifier-free guidance).

    While training, labels are replaced by the null label with probability ``dropout_prob``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = float(dropout_prob)

    def token_drop(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """Replace labels by the null label: at random while training, and where ``force_drop`` [B] is True."""
        drop = torch.zeros_like(labels, dtype=torch.bool)
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        if force_drop is not None:
            drop = drop | force_drop.to(labels.device, torch.bool)
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None) -> torch.Tensor:
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"class labels must be an integer tensor [B], got dtype {labels.dtype}")
        # range check on CPU tensors only: on CUDA it would cost a device sync every step
        if not labels.is_cuda and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes - 1}] (or {self.num_classes} = the null label), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        return self.embedding_table(self.token_drop(labels.long(), force_drop))  # (B, D)


#################################################################################
#                                Word tokenizer                                 #
#################################################################################

_SPECIALS = ("<pad>", "<unk>", "<bos>")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")

# A fixed small vocabulary for captions of small data sets (digits, Fashion-MNIST, CIFAR-10, colours).
DEFAULT_VOCAB: tuple[str, ...] = tuple(
    """a an the of and with in on photo picture image drawing sketch small large big tiny dark light bright
    black white gray grey red green blue yellow orange purple pink brown striped plain
    zero one two three four five six seven eight nine digit number handwritten
    t-shirt t shirt top trouser trousers pullover dress coat sandal shirt sneaker bag ankle boot
    airplane automobile car bird cat deer dog frog horse ship truck , . -""".split()
)


def build_vocab(captions: Iterable[str], *, min_count: int = 1, max_size: int | None = None) -> list[str]:
    """Word vocabulary from captions: words seen at least ``min_count`` times, most frequent first."""
    counts = Counter(w for c in captions for w in _WORD.findall(c.lower()))
    words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    return words[:max_size] if max_size is not None else words


class WordTokenizer:
    """Lower-cases, splits into words and punctuation, maps words to ids. Every caption starts with <bos>,
    so an empty caption is one valid token (never an all-padding row)."""

    def __init__(self, vocab: Sequence[str], max_len: int = 32) -> None:
        words = [w for w in dict.fromkeys(vocab) if w not in _SPECIALS]
        self.itos: list[str] = [*_SPECIALS, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.max_len = int(max_len)
        self.pad_id, self.unk_id, self.bos_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, texts: Sequence[str], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """list of B captions -> ids [B, N] (long), mask [B, N] (bool, True = real token); N <= max_len."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"captions must be a list of strings, got {type(texts).__name__}")
        rows = [[self.bos_id] + [self.stoi.get(w, self.unk_id) for w in _WORD.findall(t.lower())] for t in texts]
        rows = [r[: self.max_len] for r in rows]
        n = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids.to(device), (ids != self.pad_id).to(device)  # (B, N), (B, N)


#################################################################################
#                                 Text encoders                                 #
#################################################################################


class TextLayer(nn.Module):
    """Pre-norm transformer layer over caption tokens [B, N, C] with a key padding mask [B, N]."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, H, N, hd)
        x = x + self.proj(a.transpose(1, 2).reshape(B, N, C))  # (B, N, C)
        return x + self.mlp(self.norm2(x))  # (B, N, C)


class CaptionEncoder(nn.Module):
    """A small trainable caption encoder: word tokenizer + embedding + pre-norm transformer layers.

    Part of the network (it trains with it and is saved with it). ``forward(captions)`` returns
    tokens [B, N, width] and mask [B, N] (True = real token).
    """

    def __init__(self, vocab: Sequence[str], *, width: int = 256, depth: int = 2, num_heads: int = 4,
                 max_len: int = 32) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"caption encoder: text_width={width} is not divisible by text_heads={num_heads}")
        self.tokenizer = WordTokenizer(vocab, max_len)
        self.dim = width
        self.token_embed = nn.Embedding(len(self.tokenizer), width)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, width))
        self.layers = nn.ModuleList([TextLayer(width, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)

    def forward(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(captions, self.token_embed.weight.device)  # (B, N), (B, N)
        h = self.token_embed(ids) + self.pos_embed[:, : ids.shape[1]]  # (B, N, C)
        for layer in self.layers:
            h = layer(h, mask)  # (B, N, C)
        return self.norm(h), mask  # (B, N, C), (B, N)


class CLIPTextEncoder:
    """A frozen CLIP text tower loaded from local files only (transformers or open_clip); never downloads.

    Not an ``nn.Module`` of the network: its weights are not saved with the model, only its path.
    ``kind``: ``"clip"`` (transformers ``CLIPTextModel`` from a local folder or cached name) or
    ``"open_clip"`` (``path`` = ``"ARCH:/path/to/weights.bin"``).
    """

    def __init__(self, path: str | None, kind: str = "clip", max_len: int = 77) -> None:
        if not path:
            raise ValueError(
                f"text_encoder={kind!r} needs text_encoder_path: a local folder with CLIP weights "
                "(e.g. a saved openai/clip-vit-base-patch32). Nothing is downloaded."
            )
        self.kind, self.path, self.max_len = kind, path, max_len
        if kind == "clip":
            try:
                from transformers import CLIPTextModel, CLIPTokenizer
            except ImportError as exc:
                raise ImportError(
                    "text_encoder='clip' needs the package transformers (pip install transformers) and "
                    f"CLIP weights on disk; import failed: {exc}"
                ) from None
            try:
                self.tokenizer = CLIPTokenizer.from_pretrained(path, local_files_only=True)
                self.model = CLIPTextModel.from_pretrained(path, local_files_only=True).eval()
            except Exception as exc:
                raise FileNotFoundError(
                    f"could not load CLIP weights from {path!r} with local_files_only=True ({exc}). "
                    "Save them once with CLIPTextModel.from_pretrained(...).save_pretrained(folder) on a machine "
                    "with internet, then pass that folder."
                ) from None
            self.dim = int(self.model.config.hidden_size)
        elif kind == "open_clip":
            try:
                import open_clip
            except ImportError as exc:
                raise ImportError(
                    f"text_encoder='open_clip' needs the package open_clip_torch; import failed: {exc}"
                ) from None
            arch, _, weights = path.partition(":")
            if not weights:
                raise ValueError(f"open_clip text_encoder_path must be 'ARCH:/path/to/weights', got {path!r}")
            try:
                model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=weights)
            except Exception as exc:
                raise FileNotFoundError(f"could not load open_clip weights {weights!r} for {arch!r}: {exc}") from None
            self.model = model.eval()
            self.tokenizer = open_clip.get_tokenizer(arch)
            self.dim = int(model.token_embedding.weight.shape[1])
        else:
            raise ValueError(f"unknown CLIP kind {kind!r}; expected 'clip' or 'open_clip'")
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, captions: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.to(device)
        if self.kind == "clip":
            enc = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_len,
                                 return_tensors="pt").to(device)
            out = self.model(**enc).last_hidden_state  # (B, N, C)
            return out, enc["attention_mask"].bool()
        ids = self.tokenizer(list(captions)).to(device)  # (B, 77)
        m = self.model
        x = m.token_embedding(ids) + m.positional_embedding  # (B, N, C)
        x = m.transformer(x, attn_mask=m.attn_mask)
        return m.ln_final(x), torch.ones_like(ids, dtype=torch.bool)


#################################################################################
#                      Text embedder (projection, null caption)                 #
#################################################################################


class TextEmbedder(nn.Module):
    """Text tokens [B, N, C] -> tokens [B, N, D] for cross-attention and a pooled vector [B, D] for adaLN.

    Captions are dropped (classifier-free guidance) to a learned null caption: one learned token, the
    rest padding. Dropping happens with ``dropout_prob`` while training and where ``force_drop`` is True.
    """

    def __init__(self, text_dim: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.dropout_prob = float(dropout_prob)
        self.proj = nn.Sequential(nn.Linear(text_dim, hidden_size), nn.GELU(approximate="tanh"),
                                  nn.Linear(hidden_size, hidden_size))
        self.null_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pool = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor,
                force_drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = tokens.shape
        h = self.proj(tokens)  # (B, N, D)
        drop = torch.zeros(B, dtype=torch.bool, device=h.device)
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(B, device=h.device) < self.dropout_prob
        if force_drop is not None:
            drop = drop | force_drop.to(h.device, torch.bool)
        first = torch.arange(N, device=h.device) == 0  # (N,)
        null = torch.where(first[None, :, None], self.null_token.to(h.dtype), torch.zeros_like(h[:1]))  # (1, N, D)
        h = torch.where(drop[:, None, None], null, h)  # (B, N, D)
        mask = torch.where(drop[:, None], first[None, :], mask)  # (B, N)
        w = mask.to(h.dtype).unsqueeze(-1)  # (B, N, 1)
        pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)
        return h, mask, self.pool(pooled)  # (B, N, D), (B, N), (B, D)


class CrossAttention(nn.Module):
    """Multi-head cross-attention from image tokens [B, L, D] to text tokens [B, N, D] with a padding mask."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"cross-attention: hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        N, H = text.shape[1], self.num_heads
        q = self.q(x).view(B, L, H, D // H).transpose(1, 2)  # (B, H, L, hd)
        k, v = self.kv(text).view(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N), True = attend
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)
