"""The ``zigscan`` command line.

    zigscan train CONFIG [--set key=value ...] [--out RUN_DIR] [--resume RUN_DIR|CHECKPOINT]
    zigscan sample CHECKPOINT [--set key=value ...] [--n 64] [--cfg 2.0] [--out grid.png] [--sampler heun]
                   [--steps 20] [--labels 0,3,7]
    zigscan eval CHECKPOINT [--set key=value ...] [--n 2000] [--out DIR]
    zigscan mixers list [PATTERN]          zigscan models list [PATTERN]
    zigscan scans ...                      zigscan plugins ...

``--set`` overrides config keys the same way for all three commands: on the config file (train), or on
the checkpoint's saved config (train --resume, sample, eval; sample and eval may change only the keys
that the weights do not fix, ``builder.RUN_OVERRIDABLE``). The sample / eval flags are shorthands for
keys (``--steps`` = ``--set sample.steps=...``) and win over ``--set``.

Also ``python -m zigscan.diffusion.cli ...`` and, for several GPUs,
``torchrun --nproc_per_node=N -m zigscan.diffusion.cli train CONFIG``.

Bad input (unknown names, bad config values, missing files, corrupt checkpoints) and environment faults
(no CUDA, disk full, out of memory, a run folder locked by another trainer, a diverged run) print one
message to stderr naming the file or key and what to do, and exit with status 2; anything else is a bug
in zigscan: one line saying so, status 1. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "tune_openmp_wait"]

# PyTorch's OpenMP workers busy-wait after every op (libgomp's default spin count is 300,000). On a CPU the
# fused Mamba scan (backbones/mixers/cpu_scan.py) runs its own threads between PyTorch ops, and spinning
# workers take their cores: at 30,000 the main job's step on 2 cores was ~15% faster (0.48-0.53 s against
# 0.59-0.65 s, whole network, forward + backward), attention-causal unchanged (benchmarks/RESULTS.md).
OPENMP_SPIN_COUNT = "30000"


def tune_openmp_wait() -> None:
    """Set ``GOMP_SPINCOUNT`` (unless the user set it) before torch is imported; it has no effect after."""
    if "torch" not in sys.modules:
        os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)


tune_openmp_wait()

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
        import torch

        errors.append(torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    try:
        from .runlock import RunLockedError
        from .trainer import NonFiniteLossError

        errors += [RunLockedError, NonFiniteLossError]
    except ImportError:
        pass
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
    from zigscan.scanpaths.registries import UnknownNameError

    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .runlock import RunLockedError
    from .trainer import NonFiniteLossError

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, (ConfigError, CheckpointError, UnknownNameError, FileNotFoundError, RunLockedError,
                            NonFiniteLossError))


def _message(exc: BaseException) -> str:
    import torch

    if type(exc) is KeyError and exc.args:  # KeyError's str() adds quotes
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {exc.filename!r}" if exc.filename else ""
        return (f"the disk is full (no space left on device{where}). Free some space, or write elsewhere with "
                "--out, and run the same command again: files saved earlier are intact (a checkpoint is only "
                "published once complete, so `zigscan train` resumes from the last one)")
    if isinstance(exc, torch.OutOfMemoryError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        return (f"out of memory on the device ({first}). Lower train.batch_size (or eval.batch_size / --n), "
                "use a smaller model, or set train.grad_checkpointing=true")
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        return f"{exc} ({exc.filename})"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------
# train / sample / eval
# ---------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .builder import checkpoint_config
    from .checkpoint import load_checkpoint, resolve_checkpoint
    from .config import load_config
    from .trainer import Trainer

    if args.config is None and args.resume is None:
        raise ValueError("zigscan train needs a CONFIG file (or --resume RUN_DIR to continue a run)")
    if args.config is not None:
        cfg = load_config(args.config, args.set)
    else:  # resume from the run's own saved config
        saved = load_checkpoint(resolve_checkpoint(args.resume), training=False, which=())
        cfg = checkpoint_config(saved, args.set, weights_fixed=False)
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
    """``--device``: auto, cpu, cuda or cuda:N, checked against this machine."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}, "
                         "no usable NVIDIA GPU); use --device cpu or --device auto")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return name


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (>= 1), got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**63), got {value}")
    return value


def _guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a finite guidance scale in [0, 100] (1 = off), got {text}")
    return value


def _labels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"--labels must be comma-separated class indices like 0,3,7, got {text!r}") from None


DEFAULT_SAMPLE_IMAGES = 64  # zigscan sample without --n (and without --set sample.per_class=...)
# sample / eval flags -> the config keys they set (shorthands for --set)
SAMPLE_FLAGS = {"sampler": "sample.sampler", "steps": "sample.steps", "cfg": "sample.cfg_scale", "seed": "sample.seed"}
EVAL_FLAGS = {"sampler": "sample.sampler", "steps": "sample.steps", "cfg": "eval.cfg_scale", "n": "eval.n"}


def _overrides(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """``--set`` overrides, then those of the flags given (so a flag wins over --set of its key)."""
    return list(args.set) + [f"{key}={getattr(args, flag)}" for flag, key in flags.items()
                             if getattr(args, flag) is not None]


def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import sample_from_checkpoint

    n = args.n
    if n is None and not any(o.partition("=")[0].strip() == "sample.per_class" for o in args.set):
        n = DEFAULT_SAMPLE_IMAGES
    out = sample_from_checkpoint(args.checkpoint, args.out, n=n, labels=_labels(args.labels),
                                 overrides=_overrides(args, SAMPLE_FLAGS), device=_device(args.device))
    print(f"sample grid: {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .builder import load_run
    from .sampling import evaluate_model

    device = _device(args.device)
    run = load_run(args.checkpoint, device=device, overrides=_overrides(args, EVAL_FLAGS))
    out = Path(args.out) if args.out else run.checkpoint.path / "eval"
    metrics = evaluate_model(run.model, run.transport, run.cfg, run.data_info, out, device=device, progress=True)
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


def build_parser() -> argparse.ArgumentParser:
    from zigscan.plugins.cli import add_parser as add_plugins_parser
    from zigscan.scanpaths.cli import add_parser as add_scans_parser

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
    _add_set(p, "train.steps=100 --set model.mixer=gla")
    p.add_argument("--out", help="run folder (default: logging.out_dir/name from the config)")
    p.add_argument("--resume", help="resume from a run folder or checkpoint (default: the run folder's latest)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="write a labelled sample grid from a checkpoint (EMA weights)")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    _add_set(p, "sample.per_class=4 --set sample.seed=3")
    p.add_argument("--n", type=_positive_int, default=None,
                   help=f"number of images (rounded up to whole rows; default {DEFAULT_SAMPLE_IMAGES}, or "
                        "sample.per_class a row when --set sample.per_class=K is given)")
    p.add_argument("--cfg", type=_guidance, default=None, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--out", default="grid.png", help="output PNG (default grid.png)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="ODE (euler, heun, dopri5) or sde")
    p.add_argument("--steps", type=_positive_int, default=None, help="integration steps")
    p.add_argument("--labels", default=None, help="class indices, one row each, e.g. 0,3,7")
    p.add_argument("--seed", type=_seed, default=None, help="noise seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="FID/KID of a checkpoint against held-out images (offline extractor)")
    p.add_argument("checkpoint", help="run folder or checkpoint folder")
    _add_set(p, "eval.extractor=torchscript --set eval.extractor_kwargs.path=net.pt")
    p.add_argument("--n", type=_positive_int, default=None, help="generated images (default: the run's eval.n)")
    p.add_argument("--out", default=None, help="output folder (default: CHECKPOINT/eval)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None)
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--cfg", type=_guidance, default=None, help="guidance scale (default: the run's eval scale)")
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

    add_scans_parser(sub)  # zigscan scans ...
    add_plugins_parser(sub)  # zigscan plugins ...
    return parser


def _add_set(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {example} (repeatable)")


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
    except Exception as exc:  # not a user's mistake: a bug; one line unless --debug
        if debug:
            raise
        print(f"zigscan: internal error: {type(exc).__name__}: {_message(exc)}. This is a bug in zigscan (or in a "
              "plugin): please report it with the traceback that `--debug` prints.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
