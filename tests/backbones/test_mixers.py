"""Generic mixer tests, parametrized over ``list_mixers()``: every registered mixer (built-in or plugin)
gets them for free. Tiny sizes (D=64, L<=40) keep the whole file fast on a CPU."""

from __future__ import annotations

import pytest
import torch

from zigscan.backbones import get_mixer, list_mixers
from zigscan.backbones.mixers import MIXERS, KernelUnavailableError
from zigscan.scanpaths import UnknownNameError

NAMES = list_mixers()
D, L, BATCH = 64, 24, 2


def build(name: str, impl: str = "reference", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_mixer(name, D, impl=impl, **kw)


def randomize_(mixer: torch.nn.Module, seed: int = 1) -> None:
    """Move parameters off their (often symmetric) init so tests see every term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_registry_lists_the_mamba_family():
    for name in ["mamba", "mamba2", "bimamba", *[f"parallel-{k}" for k in range(1, 9)]]:
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_finite(name):
    m = build(name)
    y = m(torch.randn(BATCH, L, D))
    assert y.shape == (BATCH, L, D)
    assert torch.isfinite(y).all()
    assert m(torch.randn(1, 1, D)).shape == (1, 1, D)  # a single token works


@pytest.mark.parametrize("name", [n for n in NAMES if MIXERS.get(n).causal])
def test_causal(name):
    m = build(name)
    randomize_(m)
    x = torch.randn(BATCH, L, D)
    k = L // 2
    x2 = x.clone()
    x2[:, k + 1:] = torch.randn(BATCH, L - k - 1, D)
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, : k + 1], y2[:, : k + 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y[:, k + 1:], y2[:, k + 1:])  # the future does matter after step k


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    m = build(name)
    randomize_(m)
    x = torch.randn(BATCH, L, D, requires_grad=True)
    (m(x) * torch.randn(BATCH, L, D)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    params = dict(m.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients for {bad}"
    zero = [n for n, p in params.items() if not p.grad.abs().sum() > 0]
    assert len(zero) <= max(1, len(params) // 10), f"zero gradients for {zero}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_reference_to_auto(name):
    src = build(name, "reference", seed=0)
    randomize_(src)
    dst = build(name, "auto", seed=123)  # different init: the load must overwrite everything
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(BATCH, L, D)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_is_finite(name):
    m = build(name).to(torch.bfloat16)
    y = m(torch.randn(BATCH, L, D).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (BATCH, L, D)
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_kernel_on_cpu_raises_with_a_hint(name):
    try:
        m = get_mixer(name, D, impl="kernel")
    except KernelUnavailableError as exc:  # package missing (or no kernel at all): says how to fix it
        msg = str(exc)
        assert "install" in msg.lower() or "impl=" in msg, msg
        return
    with pytest.raises(KernelUnavailableError, match="CUDA"):
        m(torch.randn(1, 4, D))  # the package imports here, but the input is on the CPU


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(BATCH, L), (BATCH, L, D + 1), (BATCH, 1, L, D)])
def test_bad_input_shape_raises_value_error(name, shape):
    m = build(name)
    with pytest.raises(ValueError, match=str(D)):
        m(torch.randn(*shape))


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as info:
        get_mixer("mamab", D)
    assert "mamba" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_kwarg_is_a_clear_type_error(name):
    with pytest.raises(TypeError, match="not_an_option"):
        get_mixer(name, D, not_an_option=3)


# --------------------------------------------------------------------------- known upstream kernel bugs
def test_fla_hopper_gated_bwd_bug_rule():
    """fla #640: gated chunk backward is wrong on sm_90 with Triton 3.4.0-3.7.0 unless tilelang is there."""
    from zigscan.backbones.mixers.base import fla_hopper_gated_bwd_bug as bug

    x = torch.zeros(1, 4, 8)
    hopper = dict(capability=(9, 0), tilelang=False)
    assert "#640" in bug(x, triton_version="3.6.0", **hopper)
    assert "#640" in bug(x, triton_version="3.4.0+git1234", **hopper)
    assert bug(x, triton_version="3.7.1", **hopper) is None
    assert bug(x, triton_version="3.3.1", **hopper) is None
    assert bug(x, triton_version="3.6.0", capability=(8, 0), tilelang=False) is None  # A100: fine
    assert bug(x, triton_version="3.6.0", capability=(9, 0), tilelang=True) is None  # fla uses tilelang
    with torch.no_grad():  # the forward is right: sampling keeps the kernel
        assert bug(x, triton_version="3.6.0", **hopper) is None
    assert bug(x) is None  # a CPU tensor never takes a kernel


@pytest.mark.parametrize("name", ["simple-gla", "gated-deltanet"])
def test_gated_fla_mixers_declare_the_hopper_bug(name, monkeypatch):
    m = get_mixer(name, 32, impl="reference")
    seen = []
    mod = __import__(type(m).__module__, fromlist=["x"])
    monkeypatch.setattr(mod, "fla_hopper_gated_bwd_bug", lambda x, **kw: seen.append(x) or "bug")
    x = torch.zeros(1, 3, 32)
    assert m.kernel_blocked(x) == "bug" and seen == [x]
