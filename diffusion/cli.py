"""The ``zigscan`` command line.

    zigscan train CONFIG [--set key=value ...] [--out RUN_DIR] [--resume RUN_DIR|CHECKPOINT]
    zigscan sample CHECKPOINT [--n 64] [--cfg 2.0] [--out grid.png] [--sampler heun] [--steps 20] [--labels 0,3,7]
    zigscan eval CHECKPOINT [--n 2000] [--out DIR]
    zigscan mixers list [PATTERN]          zigscan models list [PATTERN]
    zigscan scans ...                      zigscan plugins ...

Also ``python -m zigscan.diffusion.cli ...`` and, for several GPUs,
``torchrun --nproc_per_node=N -m zigscan.diffusion.cli train CONFIG``.

Bad input (unknown names, bad config values, missing files, corrupt checkpoints) prints one message
to stderr and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

log = logging.getLogger("zigscan.cli")


# ---------------------------------------------------------------------------------------------------
# Logging and errors
# ---------------------------------------------------------------------------------------------------


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm when it is importable, so log lines do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            super().emit(record)


def setup_logging(level: int = logging.INFO) -> None:
    logger = logging.getLogger("zigscan")
    if not any(getattr(h, "_zigscan", False) for h in logger.handlers):
        handler = _TqdmHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        handler._zigscan = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line, exit status 2."""
    errors: list[type[BaseException]] = [ValueError, TypeError, KeyError, OSError, ImportError]
    try:
        from zigscan.backbones.mixers.base import KernelUnavailableError

        errors.append(KernelUnavailableError)
    except ImportError:
        pass
    try:
        from zigscan.plugins.manager import PluginError

        errors.append(PluginError)
    except ImportError:
        pass
    try:
        from .feature_net import WeightsError

        errors.append(WeightsError)
    except ImportError:
        pass
    return tuple(errors)


def _is_input_error(exc: BaseException) -> bool:
    """Errors whose message is the whole story (no traceback hint needed)."""
    from zigscan.scanpaths.registry import UnknownNameError

    from .checkpoint import CheckpointError
    from .config import ConfigError

    return isinstance(exc, (ConfigError, CheckpointError, UnknownNameError, FileNotFoundError))


def _message(exc: BaseException) -> str:
    if type(exc) is KeyError and exc.args:  # KeyError's str() adds quotes
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------
# train / sample / eval
# ---------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .config import config_from_dict, load_config
    from .trainer import Trainer

    if args.config is None and args.resume is None:
        raise ValueError("zigscan train needs a CONFIG file (or --resume RUN_DIR to continue a run)")
    if args.config is not None:
        cfg = load_config(args.config, args.set)
    else:  # resume from the run's own saved config
        from .config import apply_overrides

        saved = load_checkpoint(resolve_checkpoint(args.resume), training=False, which=()).config
        cfg = config_from_dict(apply_overrides(saved, args.set))
    run_dir = Path(args.out) if args.out else None
    if run_dir is None and args.resume is not None:  # continue in the resumed run's folder
        run_dir = resolve_checkpoint(args.resume).parent.parent
    trainer = Trainer(cfg, run_dir, resume=args.resume if args.resume is not None else "auto")
    try:
        result = trainer.train()
        final = trainer.finish()
    finally:
        trainer.close()
    if trainer.dist.is_main:
        print(f"run folder: {trainer.run_dir}")
        print(f"steps: {result['step']}" + (f"  final loss: {result['loss']:.4f}" if "loss" in result else ""))
        if "grid" in final:
            print(f"sample grid: {final['grid']}")
        if "metrics" in final:
            m = final["metrics"]
            print(_metrics_line(m))
            print(f"metrics: {trainer.run_dir / 'eval.json'}")
    return 0


def _metrics_line(m: dict[str, Any]) -> str:
    parts = []
    for key in ("fid", "kid", "kid_std", "precision", "recall", "accuracy"):
        if key in m and isinstance(m[key], (int, float)):
            parts.append(f"{key.upper() if key in ('fid', 'kid') else key} {m[key]:.4g}")
    tail = f" ({m.get('n_samples')} samples vs {m.get('n_reference')} held-out images, {m.get('extractor')} features)"
    return "  ".join(parts) + tail


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _labels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"--labels must be comma-separated class indices like 0,3,7, got {text!r}") from None


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import sample_from_checkpoint

    out = sample_from_checkpoint(args.checkpoint, args.out, n=args.n, cfg_scale=args.cfg, sampler=args.sampler,
                                 steps=args.steps, labels=_labels(args.labels), seed=args.seed,
                                 device=_device(args.device))
    print(f"sample grid: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import resolve_checkpoint
    from .sampling import evaluate_model, load_for_sampling

    device = _device(args.device)
    model, transport, cfg, info, ckpt = load_for_sampling(args.checkpoint, device=device)
    if args.sampler:
        cfg.sample.sampler = args.sampler
    if args.steps:
        cfg.sample.steps = args.steps
    if args.cfg is not None:
        cfg.eval.cfg_scale = args.cfg
    out = Path(args.out) if args.out else resolve_checkpoint(args.checkpoint) / "eval"
    metrics = evaluate_model(model, transport, cfg, info, out, device=device, n=args.n, progress=True)
    print(_metrics_line(metrics))
    print(f"metrics: {out / 'eval.json'}  samples: {out / 'eval_samples.png'}")
    return 0


# ---------------------------------------------------------------------------------------------------
# mixers / models
# ---------------------------------------------------------------------------------------------------


def cmd_mixers_list(args: argparse.Namespace) -> int:
    from zigscan.backbones.mixers.base import kernel_available
    from zigscan.backbones.mixers.registry import MIXERS

    names = MIXERS.names(args.pattern)
    if not names:
        raise ValueError(f"no mixer matches {args.pattern!r}; run `zigscan mixers list` to see all names")
    width = max(len(n) for n in names)
    for name in names:
        spec = MIXERS.get(name)
        if spec.kernel_package:
            ok, _ = kernel_available(spec.kernel_package)
            kern = f"kernel: {spec.kernel_package} ({'installed' if ok else 'not installed, reference only'})"
        else:
            kern = "pure PyTorch"
        src = MIXERS.source(name)
        origin = f" [plugin {src}]" if src not in ("zigscan", "user") else ""
        print(f"{name:<{width}}  {spec.description}  [{kern}]{origin}")
        if spec.kernel_package:  # whether impl=auto runs that kernel on a GPU (backbones/mixers/verification.py)
            check = spec.kernel_check
            state = check.short() if check else "no verification record (impl=auto runs the reference)"
            why = f": {check.note}" if check and not check.verified and check.note else ""
            print(f"{'':<{width}}  GPU check: {state}{why}")
    return 0


def _param_count(name: str) -> int | None:
    """Parameters of a preset, without allocating it: built on the meta device at depth 1 and 2, then
    extrapolated (every block has the same size), so XL presets count in a blink."""
    import torch

    from zigscan.backbones import create_model
    from zigscan.backbones.presets import MODELS

    try:
        depth = int(MODELS.get(name).kwargs.get("depth", 1))
        counts = []
        for d in (1, 2):
            with torch.device("meta"):
                model = create_model(name, depth=d)
            counts.append(sum(p.numel() for p in model.parameters()))
        return counts[0] + (depth - 1) * (counts[1] - counts[0])
    except Exception:
        return None


def cmd_models_list(args: argparse.Namespace) -> int:
    from zigscan.backbones.presets import MODELS

    names = MODELS.names(args.pattern)
    if not names:
        raise ValueError(f"no model preset matches {args.pattern!r}; run `zigscan models list` to see all names")
    width = max(len(n) for n in names)
    for name in names:
        spec = MODELS.get(name)
        n = _param_count(name)
        count = f"{n / 1e6:8.2f}M" if n is not None else "       ?"
        print(f"{name:<{width}}  {count}  {spec.description}")
    return 0


# ---------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------


def _add_group(subparsers: Any, module: str) -> None:
    """Add a subcommand group from ``module.add_parser`` when that module exists (other packages)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return
        raise
    add = getattr(mod, "add_parser", None)
    if callable(add):
        add(subparsers)


def build_parser() -> argparse.ArgumentParser:
    from .config import SAMPLERS

    parser = argparse.ArgumentParser(
        prog="zigscan",
        description="Scan orders x sequence mixers for diffusion models (a ZigMa reimplementation).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a config file (resumes automatically)")
    p.add_argument("config", nargs="?", help="YAML or TOML config (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=100 --set model.mixer=gla (repeatable)")
    p.add_argument("--out", help="run folder (default: logging.out_dir/name from the config)")
    p.add_argument("--resume", help="resume from a run folder or checkpoint (default: the run folder's latest)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="write a labelled sample grid from a checkpoint (EMA weights)")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--n", type=int, default=64, help="number of images (rounded up to whole rows; default 64)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--out", default="grid.png", help="output PNG (default grid.png)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="ODE (euler, heun, dopri5) or sde")
    p.add_argument("--steps", type=int, default=None, help="integration steps")
    p.add_argument("--labels", default=None, help="class indices, one row each, e.g. 0,3,7")
    p.add_argument("--seed", type=int, default=None, help="noise seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="FID/KID of a checkpoint against held-out images (offline extractor)")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    p.add_argument("--n", type=int, default=None, help="generated images (default: the run's eval.n)")
    p.add_argument("--out", default=None, help="output folder (default: CHECKPOINT/eval)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's eval scale)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("mixers", help="sequence mixers")
    msub = p.add_subparsers(dest="mixers_command", metavar="ACTION")
    q = msub.add_parser("list", help="list mixers (shell-style PATTERN)")
    q.add_argument("pattern", nargs="?", default="*")
    q.set_defaults(func=cmd_mixers_list)
    p.set_defaults(func=_group_help(p))

    p = sub.add_parser("models", help="model presets")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    q = msub.add_parser("list", help="list presets with parameter counts (shell-style PATTERN)")
    q.add_argument("pattern", nargs="?", default="*")
    q.set_defaults(func=cmd_models_list)
    p.set_defaults(func=_group_help(p))

    _add_group(sub, "zigscan.scanpaths.cli")
    _add_group(sub, "zigscan.plugins.cli")
    return parser


def _group_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    setup_logging(logging.DEBUG if debug else logging.WARNING if ("-q" in argv or "--quiet" in argv) else logging.INFO)
    try:
        parser = build_parser()
        # --debug / --quiet are accepted anywhere on the line (zigscan train X --debug)
        args = parser.parse_args([a for a in argv if a not in ("--debug", "-q", "--quiet")])
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("zigscan: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if debug:
            raise
        hint = "" if _is_input_error(exc) else " (run with --debug for the traceback)"
        print(f"zigscan: error: {_message(exc)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
