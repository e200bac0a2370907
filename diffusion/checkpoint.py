"""Checkpoints: one folder per save, written atomically, verified on load.

Layout of a run folder::

    RUN/checkpoints/step_00001000/
        model.safetensors      raw model weights
        ema.safetensors        EMA weights (used for sampling and eval)
        training.pt            optimizer, lr scheduler, grad scaler states   (torch.load weights_only=True)
        rng.pt                 torch / cuda RNG states and the trainer's generators (weights_only=True)
        state.json             step, data position, numpy / python RNG states, resolved config, model config
        manifest.json          size and sha256 of every file above; written last
    RUN/checkpoints/latest     text file naming the newest complete checkpoint folder

A save writes everything into ``step_XXXXXXXX.tmp-<pid>``, fsyncs it, renames the folder into place
with ``os.replace`` and only then rewrites ``latest`` (again temp file + ``os.replace``). A crash at any
moment leaves ``latest`` naming a complete checkpoint; leftover ``*.tmp-*`` folders are ignored and
cleaned by the next successful save. Old checkpoints are deleted (keep the last N) only after the new
one is in place. Loading checks the manifest, so a truncated or corrupted file gives a clear
``CheckpointError`` naming the file and the previous checkpoint to fall back to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "list_checkpoints",
    "checkpoint_root",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)$")
TENSOR_FILES = ("model.safetensors", "ema.safetensors")
TORCH_FILES = ("training.pt", "rng.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, incomplete, truncated or corrupt."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns. ``training`` and ``rng`` are empty when not loaded."""

    path: Path
    step: int
    state: dict[str, Any]  # state.json: step, data position, config, model_config, numpy/python RNG
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.state.get("config", {})

    @property
    def model_config(self) -> dict[str, Any]:
        return self.state.get("model_config", {})


# ---------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_of(path: Path) -> int | None:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders under ``root`` (a checkpoints folder), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None and (p / "manifest.json").exists()]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def _previous_of(path: Path) -> Path | None:
    """The newest checkpoint older than ``path`` in the same folder (the one to fall back to)."""
    step = _step_of(path)
    older = [p for p in list_checkpoints(path.parent) if step is None or (_step_of(p) or 0) < step]
    return older[-1] if older else None


def _fallback_hint(path: Path) -> str:
    prev = _previous_of(path)
    if prev is None:
        return " No earlier checkpoint exists in that folder."
    return f" The previous checkpoint is {str(prev)!r}; use it with --resume {prev} (nothing was deleted)."


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder, a file inside one, a ``checkpoints`` folder or a run folder, and
    return the checkpoint folder (``latest`` where a choice is needed)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {str(p)!r} does not exist (expected a run folder, its checkpoints/ folder "
            "or a checkpoints/step_XXXXXXXX folder)"
        )
    if p.is_file():
        if p.name == "latest":
            return _read_latest(p.parent)
        p = p.parent
    if (p / "manifest.json").exists() or _step_of(p) is not None:
        return p
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if (p / "latest").exists():
        return _read_latest(p)
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    raise CheckpointError(f"no checkpoint found in {str(Path(path))!r} (looked for checkpoints/latest and step_* folders)")


def _read_latest(root: Path) -> Path:
    name = (root / "latest").read_text().strip()
    target = root / name
    if not target.is_dir():
        ckpts = list_checkpoints(root)
        hint = f" The newest complete checkpoint there is {str(ckpts[-1])!r}." if ckpts else ""
        raise CheckpointError(f"{str(root / 'latest')!r} names {name!r}, which does not exist.{hint}")
    return target


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from in a run folder, or None when the run has none."""
    root = checkpoint_root(run_dir)
    if (root / "latest").exists():
        return _read_latest(root)
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage (tied weights) or are not contiguous
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None = None,
    training: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` of the run in ``run_dir`` atomically; return its folder.

    ``training`` and ``rng`` hold tensors and plain Python values (saved with ``torch.save`` and read back
    with ``weights_only=True``); ``state`` must be JSON-serialisable.
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_tensors(model, tmp / "model.safetensors")
        _write_tensors(ema if ema is not None else model, tmp / "ema.safetensors")
        torch.save(training or {}, tmp / "training.pt")
        torch.save(rng or {}, tmp / "rng.pt")
        meta = {"format_version": FORMAT_VERSION, "step": int(step), **(state or {})}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=False))
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            _fsync_file(tmp / name)
        manifest = {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files}
        (tmp / "manifest.json").write_text(json.dumps({"step": int(step), "files": manifest}, indent=1))
        _fsync_file(tmp / "manifest.json")
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
            old = root / f"{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic_text(root / "latest", final.name + "\n")
    _prune(root, keep_last, keep=final)
    return final


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    ckpts = list_checkpoints(root)
    for old in ckpts[: max(0, len(ckpts) - max(1, keep_last))]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.iterdir():  # folders of saves that crashed
        if leftover.is_dir() and (".tmp-" in leftover.name or ".old-" in leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def _verify(path: Path, names: tuple[str, ...]) -> dict[str, Any]:
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is incomplete: {str(mpath)!r} is missing (the save did not finish)."
            + _fallback_hint(path)
        )
    try:
        manifest = json.loads(mpath.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint file {str(mpath)!r} is corrupt (not valid JSON)." + _fallback_hint(path)) from None
    for name in names:
        f = path / name
        if name not in manifest:
            continue
        if not f.exists():
            raise CheckpointError(f"checkpoint file {str(f)!r} is missing." + _fallback_hint(path))
        size = f.stat().st_size
        if size != manifest[name]["size"]:
            raise CheckpointError(
                f"checkpoint file {str(f)!r} is truncated or corrupt ({size} bytes, expected "
                f"{manifest[name]['size']})." + _fallback_hint(path)
            )
        if _sha256(f) != manifest[name]["sha256"]:
            raise CheckpointError(f"checkpoint file {str(f)!r} is corrupt (sha256 mismatch)." + _fallback_hint(path))
    return manifest


def _load_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {str(path)!r} cannot be read ({exc})." + _fallback_hint(path.parent)) from None


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {str(path)!r} cannot be read ({exc})." + _fallback_hint(path.parent)) from None


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", training: bool = True, which: tuple[str, ...] = ("model", "ema")
) -> Checkpoint:
    """Load a checkpoint (any path ``resolve_checkpoint`` accepts) after checking its manifest.

    ``training=False`` skips optimizer and RNG states (sampling, eval); ``which`` picks weight sets.
    """
    ckpt = resolve_checkpoint(path)
    names = ["state.json"] + [f"{w}.safetensors" for w in which] + (list(TORCH_FILES) if training else [])
    _verify(ckpt, tuple(names))
    try:
        state = json.loads((ckpt / "state.json").read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint file {str(ckpt / 'state.json')!r} is corrupt." + _fallback_hint(ckpt)) from None
    out = Checkpoint(path=ckpt, step=int(state.get("step", 0)), state=state)
    if "model" in which:
        out.model = _load_tensors(ckpt / "model.safetensors", device)
    if "ema" in which:
        out.ema = _load_tensors(ckpt / "ema.safetensors", device)
    if training:
        out.training = _load_torch(ckpt / "training.pt")
        out.rng = _load_torch(ckpt / "rng.pt")
    return out
