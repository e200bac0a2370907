"""Mixer dispatch is decided once per (device type, grad mode), not on every call: forward reads a plain dict
(no import, no kernel_available(), no logging there), ``.to()`` re-decides, the choice is logged once."""

from __future__ import annotations

import logging

import pytest
import torch

from zigscan.backbones import get_mixer
from zigscan.backbones.mixers import base
from zigscan.backbones.mixers.base import KernelUnavailableError


def test_decided_once_then_read_from_the_cache(monkeypatch):
    m = get_mixer("mamba", 16)
    x = torch.randn(1, 5, 16)
    m(x)
    assert m._kernel_for[("cpu", True)] is False
    monkeypatch.setattr(base, "kernel_available", lambda pkg: pytest.fail("probed on a later call"))
    monkeypatch.setattr(type(m), "_decide", lambda self, x: pytest.fail("decided again"))
    m(x)
    with torch.no_grad():
        m._kernel_for[("cpu", False)] = False  # (grad mode is part of the key)
        m(x)


def test_to_redecides_for_the_parameters_device(monkeypatch):
    m = get_mixer("gla", 16)
    m._kernel_for[("cpu", True)] = True  # stale
    seen = []
    monkeypatch.setattr(type(m), "_decide_auto", lambda self, x: (seen.append((x.device.type, torch.is_grad_enabled()))
                                                                  or (False, "test")))
    m.to(torch.float64)
    assert sorted(seen) == [("cpu", False), ("cpu", True)]
    assert m._kernel_for == {("cpu", True): False, ("cpu", False): False}


def test_grad_mode_is_part_of_the_decision(monkeypatch):
    m = get_mixer("gla", 16, impl="reference")
    m.impl = "auto"
    m._kernel_for = {}
    monkeypatch.setattr(type(m), "_decide_auto", lambda self, x: (not torch.is_grad_enabled(), "test"))
    monkeypatch.setattr(type(m), "forward_kernel", lambda self, x: x * 0)  # marks the kernel path
    x = torch.randn(1, 4, 16)
    assert m(x).abs().sum() > 0  # training: reference
    with torch.no_grad():
        assert m(x).abs().sum() == 0  # sampling: "kernel"
    assert m._kernel_for == {("cpu", True): False, ("cpu", False): True}


def test_choice_logged_once(caplog):
    base._logged.clear()
    m = get_mixer("mamba", 16)
    with caplog.at_level(logging.INFO, logger="zigscan.mixers"):
        for _ in range(3):
            m(torch.randn(1, 3, 16))
        get_mixer("mamba", 16)(torch.randn(1, 3, 16))
    assert len([r for r in caplog.records if "Mamba: using the pure-PyTorch reference" in r.getMessage()]) == 1


def test_kernel_impl_off_cuda_raises_on_every_call(monkeypatch):
    monkeypatch.setattr(base, "kernel_available", lambda pkg: (True, ""))  # as if mamba-ssm were installed
    m = get_mixer("mamba", 16, impl="kernel")
    assert m._kernel_for == {}  # nothing cached for a device the kernel cannot run on
    for _ in range(2):
        with pytest.raises(KernelUnavailableError):
            m(torch.randn(1, 3, 16))
