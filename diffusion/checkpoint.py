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
cleaned by the next successful save. Re-saving a step that exists (a run resumed from an earlier
checkpoint reaches it again) first points ``latest`` at the complete temp folder, then moves the old
folder aside, puts a hard-linked copy of the new one in its place and only then points ``latest`` back:
no moment leaves ``latest`` naming a missing folder. Old checkpoints are deleted (keep the last N) only
after the new one is in place, and weights that are not finite (NaN / inf) are never saved, so pruning
can never trade a finite checkpoint for a diverged one. Loading checks the manifest, so a truncated or
corrupted file gives a clear ``CheckpointError`` naming the file and the previous checkpoint to fall
back to; an empty or unreadable ``latest`` falls back to the newest complete checkpoint, with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "NonFiniteWeightsError",
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
_LEFTOVER_RE = re.compile(r"^(step_\d+)\.(tmp|old|new)-.+$")
TENSOR_FILES = ("model.safetensors", "ema.safetensors")
TORCH_FILES = ("training.pt", "rng.pt")


log = logging.getLogger("zigscan.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, incomplete, truncated or corrupt."""


class NonFiniteWeightsError(CheckpointError):
    """A save refused because some weights are NaN or infinite (the run diverged)."""


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


def _latest_name(root: Path) -> str | None:
    """The folder name written in ``root/latest``, or None when the file is missing, empty or not text."""
    try:
        name = (root / "latest").read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name or None


def _read_latest(root: Path) -> Path:
    """The checkpoint ``root/latest`` names. When that file is empty, not text, or names a folder that is
    not a complete checkpoint, fall back to the newest complete one (and say so)."""
    latest = root / "latest"
    name = _latest_name(root)
    target = root / name if name is not None and "/" not in name and name not in (".", "..") else None
    if target is not None and (target / "manifest.json").is_file():
        return target
    ckpts = list_checkpoints(root)
    if name is None:
        problem = "is empty or not text"
    elif target is None or not target.is_dir():
        problem = f"names {name!r}, which does not exist"
    else:
        problem = f"names {name!r}, which is incomplete (no manifest.json)"
    if not ckpts:
        raise CheckpointError(f"{str(latest)!r} {problem}, and no complete checkpoint (step_* folder with a "
                              "manifest.json) is in that folder; there is nothing to resume or sample from.")
    log.warning("%s %s; using the newest complete checkpoint %s instead", latest, problem, ckpts[-1].name)
    return ckpts[-1]


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
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _link_copy(src: Path, dst: Path) -> None:
    """``dst``: a new folder holding the files of ``src`` as hard links (no data copied); files are copied
    where the file system has no hard links."""
    dst.mkdir()
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            shutil.copy2(f, dst / f.name)
            _fsync_file(dst / f.name)
    _fsync_dir(dst)


def _disk_full(exc: BaseException | None, root: Path, step: int, *weights: dict[str, torch.Tensor] | None) -> OSError | None:
    """An ``OSError(ENOSPC)`` for a save that failed because the disk is full but said so in another way
    (safetensors and torch.save raise their own errors); None when ``exc`` is something else."""
    if not isinstance(exc, Exception) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return None
    text = str(exc)
    need = sum(v.numel() * v.element_size() for w in weights if w for v in w.values())
    try:
        short = shutil.disk_usage(root).free < need
    except OSError:
        short = False
    if short or "No space left" in text or "os error 28" in text:
        return OSError(errno.ENOSPC, f"No space left on device while saving checkpoint step {step} "
                       f"({type(exc).__name__}: {text.strip()[:200]})", str(root))
    return None


def _nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
    for what, tensors in (("model", model), ("ema", ema or {})):
        bad = _nonfinite(tensors)
        if bad:
            raise NonFiniteWeightsError(
                f"refusing to save checkpoint step {step}: the {what} weights {', '.join(bad[:3])}"
                f"{' and others' if len(bad) > 3 else ''} hold NaN or inf (the run diverged). The checkpoints "
                "already saved are kept; resume from the last one with a lower optim.lr or with optim.grad_clip set."
            )
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tag = f"{os.getpid()}-{os.urandom(4).hex()}"  # unique: never the leftover that a crashed save's latest names
    tmp, old, staged = (root / f"{final.name}.{kind}-{tag}" for kind in ("tmp", "old", "new"))
    tmp.mkdir()
    resave = False
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
        if final.exists():  # re-saving a step (a run resumed from an earlier checkpoint reached it again)
            resave = True
            _write_atomic_text(root / "latest", tmp.name + "\n")  # latest -> the new copy, complete
            os.replace(final, old)  # the old folder stays whole until the new one is in place
            _link_copy(tmp, staged)
            os.replace(staged, final)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        _write_atomic_text(root / "latest", final.name + "\n")
    except BaseException:
        if resave and not final.exists() and old.exists():  # put the old checkpoint back where it was
            try:
                os.replace(old, final)
            except OSError:
                pass
        if _latest_name(root) == tmp.name and final.exists():
            try:
                _write_atomic_text(root / "latest", final.name + "\n")
            except OSError:
                pass
        shutil.rmtree(staged, ignore_errors=True)
        if _latest_name(root) != tmp.name:  # never delete what latest names
            shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(sys.exc_info()[1], root, step, model, ema)
        if full is not None:
            raise full from sys.exc_info()[1]
        raise
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep_last, keep=final)
    return final


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    ckpts = list_checkpoints(root)
    for old in ckpts[: max(0, len(ckpts) - max(1, keep_last))]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
    named = _latest_name(root)
    leftovers = sorted((p for p in root.iterdir() if p.is_dir() and _LEFTOVER_RE.match(p.name)),
                       key=lambda p: ("tmp", "old", "new").index(_LEFTOVER_RE.match(p.name).group(2)))
    for leftover in leftovers:  # folders of saves that crashed (never the one latest names)
        if leftover.name == named or not leftover.exists():
            continue
        step_name, kind = _LEFTOVER_RE.match(leftover.name).group(1, 2)
        home = root / step_name
        # a re-save killed between moving the old folder aside and putting the new one in place: the
        # complete new copy (tmp) or else the old folder goes back home instead of being deleted
        if kind in ("tmp", "old") and not home.exists() and (leftover / "manifest.json").is_file():
            try:
                os.replace(leftover, home)
                log.warning("recovered checkpoint %s from an interrupted save (%s)", home, leftover.name)
                continue
            except OSError:
                pass
        shutil.rmtree(leftover, ignore_errors=True)
    for stray in root.glob(".latest.tmp-*"):  # a `latest` rewrite that was killed half-way
        stray.unlink(missing_ok=True)


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
        manifest = json.loads(mpath.read_bytes().decode("utf-8"))["files"]
        sizes = {name: int(entry["size"]) for name, entry in manifest.items()}
    except (ValueError, KeyError, TypeError, AttributeError):  # undecodable bytes, bad JSON, wrong layout
        raise CheckpointError(f"checkpoint file {str(mpath)!r} is corrupt (not the JSON manifest a save writes)."
                              + _fallback_hint(path)) from None
    for name in names:
        f = path / name
        if name not in manifest:
            continue
        if not f.exists():
            raise CheckpointError(f"checkpoint file {str(f)!r} is missing." + _fallback_hint(path))
        size = f.stat().st_size
        if size != sizes[name]:
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
        state = json.loads((ckpt / "state.json").read_bytes().decode("utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not a mapping")
    except ValueError:  # bad JSON or undecodable bytes
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
