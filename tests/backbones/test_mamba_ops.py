"""mamba-ssm / causal-conv1d kernels as torch.library custom ops (zigscan.backbones.mixers.mamba_ops), on the CPU
with stand-ins of the CUDA entry points (tests/backbones/mamba_standins.py): fake implementations agree with
the real ones (opcheck), outputs and every gradient of the Mamba kernel paths equal the pure-PyTorch
reference, and torch.compile traces a ZigMa through them with no graph break."""

from __future__ import annotations

import mamba_standins
import pytest
import torch

from zigscan.backbones import create_model, get_mixer
from zigscan.backbones.mixers import mamba_ops as ops
from zigscan.backbones.mixers.base import Mixer

F64 = dict(rtol=1e-9, atol=1e-9)


def assert_rel(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9, what: str = "") -> None:
    """||a - b|| / ||b|| < tol (float64 paths that sum in different orders: elementwise tolerances would
    trip on entries that cancel to ~0)."""
    err = float((a - b).norm() / b.norm().clamp_min(1e-300))
    assert err < tol, f"{what}: relative error {err:.2e} >= {tol:.0e}"


def _grads(m: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, path: str):
    x = x.detach().clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = getattr(m, path)(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def _scan_args(b=2, d=6, n=4, L=37, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return dict(u=r(b, d, L), delta=r(b, d, L), A=-torch.rand(d, n, generator=g, dtype=dtype) * 4,
                B=r(b, 1, n, L), C=r(b, 1, n, L), D=r(d), z=r(b, d, L), delta_bias=r(d))


def test_opcheck_scan_and_conv(monkeypatch):
    """Schemas, fake tensors (shapes, strides, dtypes), autograd registration of every op."""
    mamba_standins.install(monkeypatch)
    a = {k: v.requires_grad_() for k, v in _scan_args().items()}
    torch.library.opcheck(torch.ops.zigscan.selective_scan_fwd.default, (*a.values(), True))
    x = torch.randn(2, 6, 19, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    for bias in (torch.randn(6, dtype=torch.float64, requires_grad=True), None):
        torch.library.opcheck(torch.ops.zigscan.causal_conv1d.default, (x, w, bias, True))


@pytest.mark.parametrize("out_bias", [False, True])
def test_opcheck_mamba_inner(monkeypatch, out_bias):
    mamba_standins.install(monkeypatch)
    torch.manual_seed(0)
    b, d, n, r, L, dm = 2, 8, 4, 2, 23, 5
    t = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)
    args = (t(b, 2 * d, L), t(d, 4), t(d), t(r + 2 * n, d), t(d, r), t(dm, d), t(dm) if out_bias else None,
            (-torch.rand(d, n, dtype=torch.float64)).requires_grad_(), t(d), t(d))
    torch.library.opcheck(torch.ops.zigscan.mamba_inner_fwd.default, args)


@pytest.mark.parametrize("conv1d", [True, False], ids=["fused-causal-conv1d", "pytorch-conv1d"])
@pytest.mark.parametrize("name", ["mamba", "bimamba", "parallel-2"])
def test_kernel_path_equals_reference_outputs_and_all_gradients(monkeypatch, name, conv1d):
    """forward_kernel (through the custom ops and the stand-ins' entry points) == forward_reference, outputs,
    input gradients and every parameter gradient: layouts, projections, gates, casts and the hand-written
    backward of mamba_inner (upstream's MambaInnerFn transcribed) are right. float64, except A, D and the dt
    bias, which the kernel path passes in float32 as the CUDA kernels want (hence 1e-6, not 1e-12; a wiring
    error is O(1))."""
    calls = mamba_standins.install(monkeypatch, conv1d=conv1d)
    torch.manual_seed(0)
    m = get_mixer(name, 32, impl="reference", **({"conv_bias": False} if name == "mamba" and conv1d else {})).double()
    for L in (7, 40):
        x, g = torch.randn(2, L, 32, dtype=torch.float64), torch.randn(2, L, 32, dtype=torch.float64)
        calls.clear()
        y_k, dx_k, dp_k = _grads(m, x, g, "forward_kernel")
        assert "selective_scan_fwd" in calls and "selective_scan_bwd" in calls
        assert ("causal_conv1d_fwd" in calls) == conv1d
        y_r, dx_r, dp_r = _grads(m, x, g, "forward_reference")
        assert_rel(y_k, y_r, 1e-6, f"output (L={L})")
        assert_rel(dx_k, dx_r, 1e-6, f"dx (L={L})")
        assert dp_k.keys() == dp_r.keys() and len(dp_k) == len(list(m.parameters()))
        for k in dp_r:
            assert_rel(dp_k[k], dp_r[k], 1e-6, f"d{k} (L={L})")


def test_fused_conv_decision_is_made_once(monkeypatch):
    """prepare_kernel decides fused vs PyTorch conv; forward_kernel reads the attribute, probes nothing."""
    from zigscan.backbones.mixers import mamba as mamba_mod

    mamba_standins.install(monkeypatch)
    m = get_mixer("mamba", 16, impl="reference")
    m.prepare_kernel()
    assert m._fused_conv is True
    monkeypatch.setattr(mamba_mod, "_causal_conv1d_fn", lambda: pytest.fail("probed in forward"))
    m.forward_kernel(torch.randn(1, 5, 16))
    m2 = get_mixer("mamba", 16, impl="reference", use_fast_path=False)
    m2.prepare_kernel()
    assert m2._fused_conv is False


def _take_kernel_on_cpu(model: torch.nn.Module) -> int:
    """Make every mixer's cached dispatch say "kernel" for CPU inputs (the stand-ins run there)."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, Mixer):
            mod._kernel_for = {("cpu", True): True, ("cpu", False): True}
            mod.prepare_kernel()
            n += 1
    return n


@pytest.mark.parametrize("mixer", ["mamba", "attention"])
def test_compiled_zigma_has_no_graph_break(monkeypatch, mixer):
    """A small ZigMa compiles with fullgraph=True through the custom ops (backend aot_eager: no C compiler
    needed); compiled == eager, outputs and gradients. Unconditional (num_classes=0): the label embedder's
    range check reads label values on CPU tensors only (it graph-breaks there, never on CUDA)."""
    calls = mamba_standins.install(monkeypatch)
    torch.manual_seed(0)
    model = create_model("zigma-S/2", mixer=mixer, schedule="zigzag-8", input_size=8, in_channels=4, depth=2,
                         hidden_size=64, num_classes=0)
    if mixer == "mamba":
        assert _take_kernel_on_cpu(model) == 2
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), None

    def step(fn):
        model.zero_grad(set_to_none=True)
        out = fn(x, t, y)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_e, g_e = step(model)  # eager first: builds and caches the scan orders (as a first training step would)
    explain = torch._dynamo.explain(model)(x, t, y)
    assert explain.graph_break_count == 0, [r.reason[:300] for r in explain.break_reasons]
    torch._dynamo.reset()
    calls.clear()
    out_c, g_c = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    if mixer == "mamba":
        assert "selective_scan_bwd" in calls  # the compiled backward ran the kernel's backward
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    assert g_c.keys() == g_e.keys()
    for k in g_e:
        torch.testing.assert_close(g_c[k], g_e[k], rtol=1e-3, atol=1e-5, msg=lambda s, k=k: f"d{k}: {s}")
    torch._dynamo.reset()


def test_scan_op_matches_reference_values_and_grads(monkeypatch):
    mamba_standins.install(monkeypatch)
    a = _scan_args(L=50)
    a3 = dict(a, B=a["B"].squeeze(1), C=a["C"].squeeze(1))
    leaves = {k: v.requires_grad_() for k, v in a3.items()}
    y = ops.selective_scan(**leaves)
    y_ref = mamba_standins._scan(**dict(a3, B=leaves["B"].unsqueeze(1), C=leaves["C"].unsqueeze(1),
                                        u=leaves["u"]), softplus=True)
    torch.testing.assert_close(y, y_ref, **F64)
    gy = torch.randn_like(y)
    for g1, g2 in zip(torch.autograd.grad(y, list(leaves.values()), gy),
                      torch.autograd.grad(y_ref, list(leaves.values()), gy)):
        torch.testing.assert_close(g1, g2, **F64)
