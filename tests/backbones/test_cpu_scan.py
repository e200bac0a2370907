"""The fused C selective scan (backbones/mixers/cpu_scan.c) against the pure-PyTorch token loop."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from zigscan.backbones.mixers import cpu_scan, ssm_ref

needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler (cc or gcc) on this machine: the fused CPU scan cannot be built here, "
                              "Mamba runs the PyTorch loop (tested in test_mixers_mamba.py)")


def _inputs(b, L, d, n, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(b, L, d, generator=gen, dtype=dtype)
    delta = torch.rand(b, L, d, generator=gen, dtype=dtype) * 0.5
    A = -torch.rand(d, n, generator=gen, dtype=dtype) * 5 - 0.01
    B, C = (torch.randn(b, L, n, generator=gen, dtype=dtype) for _ in range(2))
    return [t.requires_grad_() for t in (u, delta, A, B, C)]


@needs_cc
@pytest.mark.parametrize("b, L, d, n", [(1, 1, 3, 1), (2, 49, 40, 16), (3, 70, 64, 4), (2, 5, 33, 2)])
def test_native_matches_the_token_loop_in_float64(b, L, d, n):
    """Values and every gradient equal the loop's (d not a multiple of the 32-channel block included)."""
    assert cpu_scan.available(torch.float64), cpu_scan.build_error()
    args = _inputs(b, L, d, n, seed=L)
    w = torch.randn(b, L, d, dtype=torch.float64)
    y = cpu_scan.selective_scan_native(*args)
    y_ref = ssm_ref._SelectiveScanLoop.apply(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(torch.autograd.grad((y * w).sum(), args), torch.autograd.grad((y_ref * w).sum(), args)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@needs_cc
def test_native_float32_is_within_float32_rounding():
    args = _inputs(2, 49, 40, 16)
    args32 = [t.detach().float().requires_grad_() for t in args]
    w = torch.randn(2, 49, 40, dtype=torch.float64)
    y, y32 = ssm_ref._SelectiveScanLoop.apply(*args), cpu_scan.selective_scan_native(*args32)
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y, rtol=1e-5, atol=1e-5)
    for g32, g in zip(torch.autograd.grad((y32 * w.float()).sum(), args32), torch.autograd.grad((y * w).sum(), args)):
        torch.testing.assert_close(g32.double(), g, rtol=1e-4, atol=1e-4)


@needs_cc
def test_selective_scan_auto_takes_native_and_can_be_switched_off(monkeypatch):
    u, delta, A, B, C = (t.detach().float() for t in _inputs(2, 20, 16, 4))
    D, z = torch.randn(16), torch.randn(2, 20, 16)
    calls = []
    native = cpu_scan.selective_scan_native
    monkeypatch.setattr(cpu_scan, "selective_scan_native", lambda *a: calls.append(1) or native(*a))
    y = ssm_ref.selective_scan(u, delta, A, B, C, D, z=z, delta_softplus=True)
    assert calls == [1]
    monkeypatch.setenv("ZIGSCAN_NATIVE_SCAN", "0")
    y_loop = ssm_ref.selective_scan(u, delta, A, B, C, D, z=z, delta_softplus=True)
    assert calls == [1]
    torch.testing.assert_close(y, y_loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_loop, ssm_ref.selective_scan(u, delta, A, B, C, D, z=z, delta_softplus=True,
                                                              method="loop"))


def test_a_failed_build_falls_back_to_the_loop_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(cpu_scan, "_libs", {})
    monkeypatch.setattr(cpu_scan, "_error", None)
    monkeypatch.setenv("ZIGSCAN_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="zigscan.mixers"):
        assert not cpu_scan.available(torch.float32)
    assert "pure-PyTorch loop" in caplog.text and cpu_scan.build_error()
    u, delta, A, B, C = (t.detach().float() for t in _inputs(1, 9, 8, 2))
    y = ssm_ref.selective_scan(u, delta, A, B, C)  # still runs, on the loop
    torch.testing.assert_close(y, ssm_ref.selective_scan(u, delta, A, B, C, method="loop"))
    with pytest.raises(RuntimeError, match="available"):
        cpu_scan.selective_scan_native(u, delta, A, B, C)
    assert not list(tmp_path.glob("*.so"))  # nothing half-built left in the cache


@needs_cc
def test_native_rejects_mixed_dtypes():
    u, delta, A, B, C = (t.detach() for t in _inputs(1, 4, 8, 2))
    with pytest.raises(TypeError, match="one dtype"):
        cpu_scan.selective_scan_native(u.float(), delta, A, B, C)
