"""GPU tests (marker gpu) of the Mamba kernel paths through zigscan's custom ops: outputs and every gradient
against the pure-PyTorch reference at L = 63, 1000 and 16384 within the bf16 floor, against upstream's own
``mamba_inner_fn`` / ``selective_scan_fn``, and a compiled ZigMa against eager.

Run on a GPU machine with mamba-ssm and causal-conv1d installed: ``pytest -m gpu tests/backbones/test_mamba_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from zigscan.backbones import create_model, get_mixer

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("mamba_ssm")
pytest.importorskip("causal_conv1d")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def run(m: torch.nn.Module, path: str, x: torch.Tensor, g: torch.Tensor, bf16: bool):
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        y = getattr(m, path)(x)
    (y.float() * g).sum().backward()
    grads = {n: p.grad.float().clone() for n, p in m.named_parameters() if p.grad is not None}
    return y.detach().float(), x.grad.float(), grads


@pytest.mark.parametrize("L", [63, 1000, 16384])
@pytest.mark.parametrize("fused", [True, False], ids=["mamba_inner", "selective_scan"])
def test_kernel_path_within_the_bf16_floor_of_the_reference(L, fused):
    """bf16 autocast kernel path vs the float32 reference: no worse than the reference itself under bf16
    autocast (the floor), for the output, the input gradient and each parameter gradient."""
    torch.manual_seed(L)
    m = get_mixer("mamba", 256).cuda()
    m.prepare_kernel()
    m._fused_conv = fused
    x, g = torch.randn(2, L, 256, device="cuda"), torch.randn(2, L, 256, device="cuda")
    yr, dxr, dpr = run(m, "forward_reference", x, g, bf16=False)  # the yardstick
    yf, dxf, dpf = run(m, "forward_reference", x, g, bf16=True)  # the floor
    yk, dxk, dpk = run(m, "forward_kernel", x, g, bf16=True)
    assert dpk.keys() == dpr.keys() == dict(m.named_parameters()).keys()
    pairs = [("out", yk, yf, yr), ("dx", dxk, dxf, dxr)] + [(f"d{n}", dpk[n], dpf[n], dpr[n]) for n in dpr]
    for what, k, f, r in pairs:
        err, floor = rel(k, r), rel(f, r)
        assert err <= max(2.0 * floor, 2e-3), f"{what}: kernel {err:.2e}, bf16 floor {floor:.2e} (L={L})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_custom_op_equals_upstream_mamba_inner_fn(dtype):
    """Our op wiring vs upstream's autograd Function on the same kernels: equal up to summation order."""
    from mamba_ssm.modules.mamba_simple import Mamba as UpstreamMamba

    torch.manual_seed(0)
    m = get_mixer("mamba", 256).cuda().to(dtype)
    up = UpstreamMamba(256).cuda().to(dtype)
    up.load_state_dict(m.state_dict())
    x, g = torch.randn(2, 1000, 256, device="cuda", dtype=dtype), torch.randn(2, 1000, 256, device="cuda")
    ya, dxa, dpa = run(m, "forward", x, g, bf16=False)
    yb, dxb, dpb = run(up, "forward", x, g, bf16=False)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel(ya, yb) < tol and rel(dxa, dxb) < tol
    for n in dpb:
        assert rel(dpa[n], dpb[n]) < tol, n


def test_compiled_zigma_matches_eager():
    torch.manual_seed(0)
    build = lambda: create_model("zigma-S/2", mixer="mamba", schedule="zigzag-8", input_size=32, in_channels=4,
                                 depth=4, num_classes=10).to("cuda")
    model, compiled = build(), build()  # (a deepcopy of a built model fails: it holds a lock)
    compiled.load_state_dict(model.state_dict())
    for block in compiled.blocks:
        block.compile(fullgraph=True)
    x, t, y = torch.randn(2, 4, 32, 32, device="cuda"), torch.rand(2, device="cuda"), torch.randint(0, 10, (2,), device="cuda")

    def step(mod):
        mod.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = mod(x, t, y)
        out.float().square().mean().backward()
        return out.float(), {n: p.grad.float() for n, p in mod.named_parameters() if p.grad is not None}

    oe, ge = step(model)
    oc, gc = step(compiled)
    assert rel(oc, oe) < 2e-2
    assert ge.keys() == gc.keys()
    for n in ge:
        if ge[n].norm() > 0:
            assert rel(gc[n], ge[n]) < 5e-2, n
