"""The kernel-verification record (backbones/mixers/verification.py) and the ``impl="auto"`` rule built on it.

No GPU here: a tensor subclass that reports ``is_cuda`` stands in for CUDA input and ``kernel_available`` is
patched to say the package imports, so the dispatch decision is tested exactly; the two forward paths are
replaced by markers, since only which one runs is under test (kernel numerics: benchmarks/gpu/check_mixers.py).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from zigscan.backbones import get_mixer, list_mixers
from zigscan.backbones.mixers import MIXERS, Mixer, MixerSpec
from zigscan.backbones.mixers import base as base_mod
from zigscan.backbones.mixers.verification import KERNEL_CHECKS, GpuRun, unverified, verified
from zigscan.diffusion.cli import main

ROOT = Path(__file__).resolve().parents[2]
DIST = {"mamba_ssm": "mamba-ssm", "fla": "fla"}  # kernel_package -> its name in GpuRun.versions


class FakeCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: all that ``Mixer.use_kernel`` reads of the input (``is_cuda``,
    and ``device.type``, the key of the cached per-device choice)."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda")


def cuda_like(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape).as_subclass(FakeCuda)


@pytest.fixture
def kernels_import(monkeypatch):
    """Every kernel package "imports"; the once-per-class log memory starts empty."""
    monkeypatch.setattr(base_mod, "kernel_available", lambda package: (True, ""))
    monkeypatch.setattr(base_mod, "_logged", set())


def mark_paths(m: Mixer) -> list[str]:
    calls: list[str] = []
    m.forward_kernel = lambda x: calls.append("kernel") or x  # instance attributes shadow the methods
    m.forward_reference = lambda x: calls.append("reference") or x
    return calls


UNVERIFIED = [n for n, c in KERNEL_CHECKS.items() if not c.verified]  # today: rwkv7, retnet, simple-gla, gated-deltanet


def builtin_kernel_mixers() -> list[str]:
    return [n for n in list_mixers() if MIXERS.source(n) == "zigscan" and MIXERS.get(n).kernel_package]


# --------------------------------------------------------------------------- the record
def test_every_builtin_kernel_mixer_has_a_record():
    names = builtin_kernel_mixers()
    assert {"mamba", "rwkv7", "retnet", "simple-gla"} <= set(names)
    missing = [n for n in names if MIXERS.get(n).kernel_check is None]
    assert not missing, f"add a row to verification.KERNEL_CHECKS for {missing}"
    assert set(KERNEL_CHECKS) <= set(list_mixers()), "a KERNEL_CHECKS row names no registered mixer"


@pytest.mark.parametrize("name", sorted(KERNEL_CHECKS))
def test_records_say_where_and_what(name):
    check = KERNEL_CHECKS[name]
    if not check.verified:
        assert len(check.note) > 20, "an unverified record says why (the fallback warning shows it)"
        return
    assert (ROOT / check.evidence).is_file(), check.evidence
    if check.run is None:  # no GPU check applies (attention: the kernel is the reference's own call)
        assert check.checked
        return
    versions = dict(check.run.versions)
    pkg = MIXERS.get(name).kernel_package
    assert {"torch", "triton", DIST[pkg]} <= set(versions), versions
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", check.run.date) and check.run.card.startswith("NVIDIA")
    assert check.lengths and check.dtypes
    rows = evidence_rows(ROOT / check.evidence)
    for L in check.lengths:  # an equivalence row of this mixer (or of the one covering it) at each length
        row = next((r for r in rows if r.get("mixer") == (check.via or name) and r.get("L") == L
                    and "bf16_dx" in r), None)
        assert row is not None, (name, L, check.evidence)
        assert row["bf16_out"] > 0 and row["bf16_dx"] > 0, f"{name} L={L}: an error of exactly 0 is a vacuous check"


def evidence_rows(path: Path) -> list[dict]:
    """The result rows of a check_mixers.py JSON (``checks``) or of a session log (one JSON object a line)."""
    if path.suffix == ".json":
        return json.loads(path.read_text())["checks"]
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith('{"mixer"')]


# --------------------------------------------------------------------------- impl="auto" and impl="kernel"
@pytest.mark.skipif(not UNVERIFIED, reason="every built-in kernel is verified")
def test_auto_takes_the_reference_for_an_unverified_kernel_and_warns_once(kernels_import, caplog):
    name = UNVERIFIED[0]
    m = get_mixer(name, 64)
    calls = mark_paths(m)
    with caplog.at_level(logging.INFO, logger="zigscan.mixers"):
        m(cuda_like(1, 5, 64))
        m(cuda_like(2, 3, 64))
    assert calls == ["reference", "reference"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    msg = warnings[0].getMessage()
    assert f"'{name}'" in msg and "not verified" in msg and "impl='kernel'" in msg and "model.impl=kernel" in msg


@pytest.mark.parametrize("name", UNVERIFIED)
def test_every_unverified_builtin_falls_back_and_kernel_still_runs(name, kernels_import):
    auto = get_mixer(name, 64)
    calls = mark_paths(auto)
    auto(cuda_like(1, 4, 64))
    assert calls == ["reference"]
    forced = get_mixer(name, 64, impl="kernel")
    calls = mark_paths(forced)
    torch.set_grad_enabled(False)  # simple-gla / gated-deltanet refuse training only on Hopper (fla #640)
    try:
        forced(cuda_like(1, 4, 64))
    finally:
        torch.set_grad_enabled(True)
    assert calls == ["kernel"]


@pytest.mark.parametrize("name", ["mamba", "gla", "rwkv6", "parallel-2"])
def test_auto_takes_a_verified_kernel(name, kernels_import):
    m = get_mixer(name, 64)  # parallel-K has its own forward: ask the dispatch itself
    assert m.use_kernel(cuda_like(1, 4, 64)) is True
    assert m.use_kernel(torch.zeros(1, 4, 64)) is False  # a CPU tensor still takes the reference


def test_direct_construction_reads_the_same_record(kernels_import):
    from zigscan.backbones.mixers.gla import GatedLinearAttention
    from zigscan.backbones.mixers.rwkv7 import RWKV7

    for cls, name in ((RWKV7, "rwkv7"), (GatedLinearAttention, "gla")):
        m = cls(64)
        calls = mark_paths(m)
        m(cuda_like(1, 4, 64))
        assert calls == (["kernel"] if KERNEL_CHECKS[name].verified else ["reference"])


class _Toy(Mixer):
    """A plugin-style mixer with a (stand-in) kernel package."""

    kernel_package = "toy_kernels"

    def forward_reference(self, x):
        return x

    def forward_kernel(self, x):
        return x


RUN = GpuRun("NVIDIA H200", (("torch", "2.11.0"), ("triton", "3.6.0")), "2026-12-01")


@pytest.mark.parametrize(("record", "path"), [
    (None, "reference"),  # no record: not verified
    (unverified("not checked yet"), "reference"),
    (verified(RUN, evidence="results.json"), "kernel"),  # the one-line flip
])
def test_a_plugin_spec_carries_its_own_record(record, path, kernels_import, caplog):
    spec = MixerSpec("toy", _Toy, kernel_package="toy_kernels", kernel_check=record)
    m = spec.build(8)
    calls = mark_paths(m)
    with caplog.at_level(logging.WARNING, logger="zigscan.mixers"):
        m(cuda_like(1, 3, 8))
    assert calls == [path]
    if record is None:
        assert "no verification record" in caplog.text and "'toy'" in caplog.text


def test_builtin_record_is_not_inherited_by_a_foreign_factory_of_the_same_name():
    assert MixerSpec("rwkv7", _Toy, kernel_package="toy_kernels").kernel_check is None
    assert MixerSpec("rwkv7", MIXERS.get("rwkv7").factory).kernel_check is KERNEL_CHECKS["rwkv7"]


# --------------------------------------------------------------------------- zigscan mixers list
def test_mixers_list_shows_the_state_and_where(capsys):
    assert main(["mixers", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in builtin_kernel_mixers():
        i = next(i for i, line in enumerate(lines) if line.startswith(name + " "))
        check = lines[i + 1]
        assert check.strip().startswith("GPU check:") and KERNEL_CHECKS[name].short() in check, (name, check)
        if KERNEL_CHECKS[name].verified and KERNEL_CHECKS[name].run:
            assert KERNEL_CHECKS[name].run.card in check and "2026" in check
        else:
            assert "NOT verified" in check or KERNEL_CHECKS[name].run is None
    assert ("GPU check: NOT verified" in "\n".join(lines)) == bool(UNVERIFIED)
    pure = next(i for i, line in enumerate(lines) if line.startswith("attention "))
    assert not lines[pure + 1].strip().startswith("GPU check")  # pure PyTorch: nothing to verify
