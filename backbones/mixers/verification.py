"""Which kernel paths have been verified on a GPU: the one table ``impl="auto"`` and ``zigscan mixers list`` read.

A mixer's kernel path (``forward_kernel``: mamba-ssm, flash-linear-attention) counts as verified when
``benchmarks/gpu/check_mixers.py`` has compared it on a GPU with the pure-PyTorch reference and the upstream
layer (outputs, input and parameter gradients; float32 and bf16; odd and long sequence lengths) and the
result is recorded here with its evidence. ``impl="auto"`` runs only verified kernels; an unverified one
falls back to the reference with one WARNING naming the mixer and the opt-in (``impl="kernel"``, or
``--set model.impl=kernel``), which still runs it.

Flipping a mixer after a GPU run is one line in ``KERNEL_CHECKS``::

    "rwkv7": verified(H200_FLA060, lengths=FULL, evidence="benchmarks/results/check_mixers_runN_h200.json"),

(a new ``GpuRun`` when the card or a version differs). Plugins pass their own ``kernel_check`` to
``MixerSpec``; a kernel mixer with no record at all counts as unverified.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Mixer
    from .registry import MixerSpec

__all__ = ["GpuRun", "KernelCheck", "KERNEL_CHECKS", "verified", "unverified", "spec_of", "unverified_reason"]

CHECK_MIXERS = ("check_mixers.py: kernel vs pure-PyTorch reference (outputs, input and parameter gradients; "
                "float32 < 1e-3, bf16 kernel vs float32 reference < 1e-2) and outputs vs the upstream layer "
                "(strict state-dict load)")
FULL = (63, 1000, 4096)  # the lengths check_mixers.py runs: one odd below a chunk, two long ones
BOTH = ("float32", "bfloat16")


@dataclass(frozen=True)
class GpuRun:
    """Where a check ran: the card and the versions that matter to the kernels."""

    card: str  # e.g. "NVIDIA H200"
    versions: tuple[tuple[str, str], ...]  # (("torch", "2.11.0+cu130"), ("triton", "3.6.0"), ...)
    date: str  # ISO date of the results commit

    def describe(self) -> str:
        return f"{self.card}, " + ", ".join(f"{k} {v}" for k, v in self.versions) + f", {self.date}"


@dataclass(frozen=True)
class KernelCheck:
    """What is known about one mixer's kernel path on a GPU.

    Attributes:
        verified: the kernel matched the reference on a GPU (``impl="auto"`` may run it).
        run: where it was checked (``None`` if never, or if no GPU check applies: see ``via``).
        lengths, dtypes: what was checked (sequence lengths L; tensor dtypes).
        checked: how (default: ``check_mixers.py``'s comparison).
        evidence: the raw results in the repository (JSON / session log), rows named by mixer.
        via: the mixer whose GPU check covers this kernel path (``parallel-K`` runs ``mamba``'s), if not itself.
        note: caveats of a verified record; for an unverified one, why (shown in the fallback warning).
    """

    verified: bool
    run: GpuRun | None = None
    lengths: tuple[int, ...] = ()
    dtypes: tuple[str, ...] = ()
    checked: str = CHECK_MIXERS
    evidence: str = ""
    via: str | None = None
    note: str = ""

    def summary(self) -> str:
        """One line for listings and logs: ``verified on NVIDIA H200, torch ..., 2026-11-27; L=63/1000/4096;
        float32+bfloat16; <note>``, or ``NOT verified on a GPU: <why>``."""
        if not self.verified:
            return "NOT verified on a GPU" + (f": {self.note}" if self.note else "")
        head = "verified" + (f" through {self.via}'s check" if self.via else "")
        head += f" on {self.run.describe()}" if self.run else ""
        parts = [head]
        if self.lengths:
            parts.append("L=" + "/".join(map(str, self.lengths)))
        if self.dtypes:
            parts.append("+".join(self.dtypes))
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


    def short(self) -> str:
        """The state and where, for ``zigscan mixers list``: ``verified on NVIDIA H200 (torch ..., fla 0.6.0;
        2026-11-27)``, or ``NOT verified on a GPU (impl=auto runs the reference)``."""
        if not self.verified:
            return "NOT verified on a GPU (impl=auto runs the reference; impl=kernel opts in)"
        where = "verified" + (f" through {self.via}'s check" if self.via else "")
        if self.run is None:
            return f"{where} ({self.checked})"
        return f"{where} on {self.run.card} ({', '.join(f'{k} {v}' for k, v in self.run.versions)}; {self.run.date})"


def verified(run: GpuRun | None, *, evidence: str, lengths: tuple[int, ...] = FULL,
             dtypes: tuple[str, ...] = BOTH, via: str | None = None, note: str = "",
             checked: str = CHECK_MIXERS) -> KernelCheck:
    """A verified record (see ``KernelCheck``)."""
    return KernelCheck(True, run, lengths, dtypes, checked, evidence, via, note)


def unverified(why: str, *, evidence: str = "") -> KernelCheck:
    """A record of a kernel with no GPU equivalence result yet; ``why`` is shown in the fallback warning."""
    return KernelCheck(False, None, evidence=evidence, note=why)


# ----------------------------------------------------------------------------------------------------------
# where the checks ran (benchmarks/RESULTS.md, the raw outputs in benchmarks/results/)
# ----------------------------------------------------------------------------------------------------------
_TORCH, _TRITON = ("torch", "2.11.0+cu130"), ("triton", "3.6.0")
H100_MAMBA = GpuRun("NVIDIA H100 80GB HBM3", (_TORCH, _TRITON, ("mamba-ssm", "2.3.2.post1"),
                                             ("causal-conv1d", "not installed")), "2026-11-27")
H100_FLA060 = GpuRun("NVIDIA H100 80GB HBM3", (_TORCH, _TRITON, ("fla", "0.6.0")), "2026-11-27")
H200_FLA060 = GpuRun("NVIDIA H200", (_TORCH, _TRITON, ("fla", "0.6.0")), "2026-11-27")
H200_MAMBA_CONV = GpuRun("NVIDIA H200", (_TORCH, _TRITON, ("mamba-ssm", "2.3.2.post1"), ("causal-conv1d", "1.7.0")),
                         "2026-11-27")

H200_FLA060_DEC = GpuRun("NVIDIA H200", (_TORCH, _TRITON, ("fla", "0.6.0")), "2026-12-01")

_R = "benchmarks/results/"
_MAMBA_UNFUSED = ("checked on the unfused path (PyTorch conv1d + selective_scan_fn, no causal-conv1d); the fused "
                  "path taken when causal-conv1d is installed (zigscan's mamba_inner custom op) was checked against "
                  "the reference on an H200 on 2026-12-01 at L=63/1000/16384 (outputs and all gradients within the "
                  "bf16 floor; benchmarks/results/2026-12-01_h200/gpu_tests_call1.log)")
_MAMBA = verified(H100_MAMBA, evidence=_R + "2026-11-27_h100/check_mixers.json", note=_MAMBA_UNFUSED)
_PARALLEL = verified(H100_MAMBA, evidence=_R + "2026-11-27_h100/check_mixers.json", via="mamba",
                     note="runs mamba's kernel path once per direction; the permutation wiring is the reference's "
                          "(CPU test with stand-in kernels); " + _MAMBA_UNFUSED)
_SDPA = verified(None, evidence="backbones/mixers/attention.py", lengths=(), dtypes=(),
                 checked="forward_kernel is forward_reference: one torch scaled_dot_product_attention call",
                 note="no separate kernel: PyTorch picks the SDPA backend")

# Built-in mixers by registry name. Every built-in with a kernel_package has a row (a test checks it).
KERNEL_CHECKS: dict[str, KernelCheck] = {
    "attention": _SDPA,
    "attention-causal": _SDPA,
    "mamba": _MAMBA,
    "bimamba": verified(H100_MAMBA, evidence=_R + "2026-11-27_h100/check_mixers.json",
                        note="no upstream layer to compare with; " + _MAMBA_UNFUSED),
    **{f"parallel-{k}": _PARALLEL for k in range(1, 9)},
    "mamba2": verified(H200_MAMBA_CONV, evidence=_R + "2026-11-27_h200/check_mixers.json",
                       note="fused path (mamba_split_conv1d_scan_combined); float32 ~1e-4 (Triton tf32 dots)"),
    "gla": verified(H100_FLA060, evidence=_R + "2026-11-27_h100/gpu_checks_gla.log",
                    note="float32 5e-4 at L >= 1000 (fla's tf32 intra-chunk dots)"),
    "hgrn2": verified(H200_FLA060, evidence=_R + "2026-11-27_4xh200/check_mixers_hgrn2_rwkv6_rwkv7.json"),
    "rwkv6": verified(H200_FLA060, evidence=_R + "2026-11-27_4xh200/check_mixers_rwkv6.json",
                      note="bf16 gradients 2.5-2.8e-2, at the bf16 floor of the reference itself: train under "
                           "bf16 autocast with float32 weights"),
    "deltanet": verified(H100_FLA060, evidence=_R + "2026-11-27_h100/gpu_checks_deltanet.log",
                         dtypes=("float32 at L=63 (the chunk kernel refuses float32)", "bfloat16"),
                         note="bf16 input gradient 1.06-1.08e-2 at L >= 1000, 6-8% over the 1e-2 target"),
    "rwkv7": verified(H200_FLA060_DEC, evidence=_R + "2026-12-01_h200/check_mixers_rwkv7.json",
                      note="float32 <= 9e-4; bf16 gradients 1.06-1.12e-2, under the bf16 floor of the reference "
                           "itself (1.16-1.33e-2); equal to fla's own RWKV7Attention"),
    "retnet": unverified("the GPU check fails: fla 0.6.0's retention kernel gives bf16 input and parameter "
                         "gradients 54-67% off the reference at L=63, then an illegal memory access at L=1000",
                         evidence=_R + "2026-12-01_h200/check_mixers_retnet.json"),
    "simple-gla": unverified("no GPU equivalence result: fla 0.6.0 refuses its backward on Hopper with Triton "
                             "3.4-3.7.0 (wrong gradients, fla issue #640), which stopped the check",
                             evidence=_R + "2026-11-27_h100/check_mixers_timings.json"),
    "gated-deltanet": unverified("no GPU equivalence result (fla issue #640 on Hopper with Triton 3.4-3.7.0 "
                                 "blocks its backward as for simple-gla)"),
}


# ----------------------------------------------------------------------------------------------------------
# lookup from a built module
# ----------------------------------------------------------------------------------------------------------
def spec_of(mixer: Mixer) -> MixerSpec | None:
    """The registry entry a mixer was built from: the one ``MixerSpec.build`` attached, else the built-in
    whose factory is exactly this class (a direct ``RWKV7(64)``). Subclasses and unregistered classes: None."""
    spec = mixer.__dict__.get("_mixer_spec")
    return spec if spec is not None else _builtin_spec(type(mixer))


@cache
def _builtin_spec(cls: type) -> MixerSpec | None:
    # no import: a mixer exists, so its package (which imports this module through registry) is loaded already
    builtin_mixers = sys.modules[__package__].builtin_mixers
    return next((s for s in builtin_mixers() if s.factory is cls), None)


def unverified_reason(mixer: Mixer) -> str | None:
    """Why ``mixer``'s kernel path has no GPU verification on record, or None if it is verified."""
    spec = spec_of(mixer)
    name = spec.name if spec is not None else type(mixer).__name__
    check = spec.kernel_check if spec is not None else None
    if check is None:
        return f"mixer {name!r}: its {mixer.kernel_package} kernel has no verification record"
    if not check.verified:
        return f"mixer {name!r}: its {mixer.kernel_package} kernel is not verified on a GPU: {check.note}"
    return None

