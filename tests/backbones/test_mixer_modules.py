"""The mixers' shared parts (``backbones/mixers/modules.py``): each part exists once, every mixer uses it, and
each mixer's options are written once (a config dataclass that ``build_upstream`` passes on)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zigscan.backbones import get_mixer
from zigscan.backbones.mixers import _BUILTIN_MODULES, modules
from zigscan.backbones.mixers.modules import (
    GroupNorm,
    LoRA,
    MixerConfig,
    RMSNorm,
    ShortConvolution,
    dt_bias_init,
)

MIXER_DIR = Path(modules.__file__).parent
MIXER_FILES = {name: MIXER_DIR / f"{name}.py" for name in _BUILTIN_MODULES}
SHARED_CLASSES = {"RMSNorm", "FusedRMSNormGated", "GatedRMSNorm", "GroupNorm", "LoRA", "ShortConvolution"}
FLA_NAMES = ["gla", "simple-gla", "retnet", "hgrn2", "rwkv6", "rwkv7", "deltanet", "gated-deltanet"]
CONFIGURED = FLA_NAMES + ["mamba", "mamba2", "bimamba"]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


# ----------------------------------------------------------------------------------------------------------
# one copy of each part
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _BUILTIN_MODULES)
def test_no_mixer_file_defines_a_shared_part(name):
    classes = {n.name for n in ast.walk(_tree(MIXER_FILES[name])) if isinstance(n, ast.ClassDef)}
    assert not classes & SHARED_CLASSES, f"{name}.py defines {classes & SHARED_CLASSES}: use backbones/mixers/modules.py"


@pytest.mark.parametrize("name", _BUILTIN_MODULES)
def test_no_mixer_file_imports_a_private_name_from_a_sibling(name):
    for node in ast.walk(_tree(MIXER_FILES[name])):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module in _BUILTIN_MODULES:
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{name}.py imports {private} from the sibling mixer {node.module}.py"


@pytest.mark.parametrize("name", _BUILTIN_MODULES)
def test_constants_are_not_retyped(name):
    """The kernel packages, install hints and fla's recurrent-mode threshold live in modules.py only."""
    tree = _tree(MIXER_FILES[name])
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [t for t in strings if "pip install 'zigscan[" in t or t in ("fla", "mamba_ssm")]
    compared = [c.value for n in ast.walk(tree) if isinstance(n, ast.Compare)
                for c in (n.left, *n.comparators) if isinstance(c, ast.Constant)]
    assert 64 not in compared, f"{name}.py compares with 64: use modules.FLA_RECURRENT_MAX_LEN"


@pytest.mark.parametrize("name", ["gla", "simple-gla", "retnet", "hgrn2", "rwkv6", "deltanet", "gated-deltanet", "mamba2"])
def test_mixers_use_the_shared_norms(name):
    norms = [m for m in get_mixer(name, 64, impl="reference").modules() if "Norm" in type(m).__name__]
    assert norms and all(type(m) in (RMSNorm, GroupNorm) for m in norms), [type(m) for m in norms]


@pytest.mark.parametrize("name", ["rwkv6", "rwkv7"])
def test_rwkv_mixers_use_the_shared_lora(name):
    loras = [m for m in get_mixer(name, 64, impl="reference").modules() if "LoRA" in type(m).__name__]
    assert loras and all(type(m) is LoRA for m in loras)


@pytest.mark.parametrize("name", ["deltanet", "gated-deltanet"])
def test_delta_mixers_use_the_shared_short_convolution(name):
    convs = [m for m in get_mixer(name, 64, impl="reference").modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 3 and all(type(m) is ShortConvolution for m in convs)


# ----------------------------------------------------------------------------------------------------------
# each option written once
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGURED)
def test_signature_config_and_attributes_agree(name):
    m = get_mixer(name, 64, impl="reference")
    cls = type(m)
    fields = [f.name for f in dataclasses.fields(cls.config_class)]
    assert list(inspect.signature(cls).parameters) == ["d_model", "impl", *fields]
    assert isinstance(m.config, cls.config_class) and isinstance(m.config, MixerConfig)
    for f in fields:
        assert getattr(m, f) == getattr(m.config, f), f


def test_resolved_options_are_stored():
    assert get_mixer("mamba", 64, impl="reference").config.dt_rank == math.ceil(64 / 16)
    assert get_mixer("hgrn2", 64, impl="reference").config.num_heads == 1  # expand_ratio = d_model below 128
    rwkv7 = get_mixer("rwkv7", 96, impl="reference").config
    assert (rwkv7.head_dim, rwkv7.num_heads, rwkv7.value_dim) == (48, 2, 96)  # largest divisor of 96 <= 64
    gdn = get_mixer("gated-deltanet", 128, impl="reference").config
    assert (gdn.num_heads, gdn.num_v_heads) == (2, 2)  # round(0.75 * 128 / 64)


def test_direct_construction_rejects_unknown_options():
    from zigscan.backbones.mixers.gla import GatedLinearAttention

    with pytest.raises(TypeError, match="not_an_option"):
        GatedLinearAttention(64, not_an_option=1)


# what build_upstream passed to the upstream layers before the options were written once (fla 0.6.0,
# mamba-ssm 2.3); the config route must pass the same (or, marked, an equivalent resolved value)
EXPECTED_UPSTREAM = {
    "gla": dict(mode="chunk", hidden_size=64, expand_k=0.5, expand_v=1.0, num_heads=4, use_short_conv=False,
                use_output_gate=True, gate_fn="swish", elementwise_affine=True, norm_eps=1e-5,
                gate_logit_normalizer=16, gate_low_rank_dim=16, clamp_min=None, fuse_norm=True),
    "simple-gla": dict(mode="chunk", hidden_size=64, expand_k=1.0, expand_v=1.0, num_heads=4, use_short_conv=False,
                       gate_fn="swish", elementwise_affine=True, norm_eps=1e-5, gate_logit_normalizer=16,
                       fuse_norm=True),
    "retnet": dict(mode="chunk", hidden_size=64, expand_k=1.0, expand_v=2.0, num_heads=8, use_short_conv=False,
                   use_output_gate=True, gate_fn="swish", elementwise_affine=True, norm_eps=1e-5, fuse_norm=True),
    "hgrn2": dict(mode="chunk", hidden_size=64, num_heads=1, expand_ratio=64, use_short_conv=False,
                  elementwise_affine=True, norm_eps=1e-5),
    "rwkv6": dict(mode="chunk", hidden_size=64, expand_k=0.5, expand_v=1.0, num_heads=4, gate_fn="swish",
                  proj_low_rank_dim=32, gate_low_rank_dim=64, fuse_norm=True, elementwise_affine=True, norm_eps=1e-5),
    "rwkv7": dict(mode="chunk", hidden_size=64, head_dim=64, decay_low_rank_dim=32, gate_low_rank_dim=32,
                  a_low_rank_dim=32, elementwise_affine=True, norm_eps=1e-5, layer_idx=0, fuse_norm=False,
                  value_dim=64, num_hidden_layers=24,
                  num_heads=1),  # resolved; upstream takes head_dim when both are given
    "deltanet": dict(mode="chunk", hidden_size=64, expand_k=1.0, expand_v=1.0, num_heads=4, use_beta=True,
                     use_gate=False, use_short_conv=True, conv_size=4, conv_bias=False, allow_neg_eigval=False,
                     qk_activation="silu", qk_norm="l2", norm_eps=1e-5),
    "gated-deltanet": dict(hidden_size=64, expand_v=2.0, head_dim=64, num_heads=1, num_v_heads=1, mode="chunk",
                           use_gate=True, use_short_conv=True, allow_neg_eigval=False, conv_size=4, conv_bias=False,
                           norm_eps=1e-5, output_gate_activation="swish"),
    "mamba": dict(d_state=16, d_conv=4, expand=2, dt_min=0.001, dt_max=0.1, dt_init="random", dt_scale=1.0,
                  dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True,
                  dt_rank=4),  # resolved from "auto" as upstream does (ceil(64 / 16))
    "mamba2": dict(d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, ngroups=1, A_init_range=(1, 16),
                   D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001, dt_max=0.1,
                   dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False, conv_bias=True, chunk_size=256,
                   use_mem_eff_path=True,
                   d_ssm=128),  # resolved from None as upstream does (expand * d_model)
}
UPSTREAM_MODULES = {
    "fla.layers": ["DeltaNet", "GatedDeltaNet", "RWKV7Attention"], "fla.layers.gla": ["GatedLinearAttention"],
    "fla.layers.simple_gla": ["SimpleGatedLinearAttention"],
    "fla.layers.multiscale_retention": ["MultiScaleRetention"], "fla.layers.hgrn2": ["HGRN2Attention"],
    "fla.layers.rwkv6": ["RWKV6Attention"], "mamba_ssm.modules.mamba_simple": ["Mamba"],
    "mamba_ssm.modules.mamba2": ["Mamba2"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_UPSTREAM))
def test_build_upstream_passes_the_configuration(name, monkeypatch):
    seen = {}

    class StandIn(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            seen.update(args=args, kwargs=kwargs)

    for mod_name in ("fla", "mamba_ssm", "mamba_ssm.modules", *UPSTREAM_MODULES):
        mod = types.ModuleType(mod_name)
        mod.__path__ = []
        for cls in UPSTREAM_MODULES.get(mod_name, []):
            setattr(mod, cls, StandIn)
        monkeypatch.setitem(sys.modules, mod_name, mod)
    get_mixer(name, 64, impl="reference").build_upstream()
    expected = dict(EXPECTED_UPSTREAM[name])
    if name.startswith("mamba"):
        assert seen["args"] == (64,)
    assert seen["kwargs"] == expected


# ----------------------------------------------------------------------------------------------------------
# the parts themselves
# ----------------------------------------------------------------------------------------------------------
def test_rms_norm_plain_gated_and_grouped():
    torch.manual_seed(0)
    x, g = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    w = torch.randn(8, dtype=torch.float64)

    def rms(t, eps=1e-5):
        return t * torch.rsqrt(t.square().mean(-1, keepdim=True) + eps)

    norm = RMSNorm(8).double()
    norm.weight.data.copy_(w)
    torch.testing.assert_close(norm(x), rms(x) * w)
    gated = RMSNorm(8, activation="swish").double()
    gated.weight.data.copy_(w)
    torch.testing.assert_close(gated(x, g), rms(x) * w * F.silu(g))
    sig = RMSNorm(8, activation="sigmoid").double()
    torch.testing.assert_close(sig(x, g), rms(x) * torch.sigmoid(g))
    grouped = RMSNorm(8, activation="silu", gate_first=True, group_size=4).double()
    xg = (x * F.silu(g)).unflatten(-1, (2, 4))
    torch.testing.assert_close(grouped(x, g), rms(xg).flatten(-2))
    assert RMSNorm(8, elementwise_affine=False).weight is None
    with pytest.raises(ValueError, match="needs g"):
        gated(x)
    with pytest.raises(ValueError, match="group_size"):
        RMSNorm(8, group_size=3)
    assert norm(x.to(torch.bfloat16)).dtype == torch.bfloat16  # float32 inside, the input's dtype out


def test_group_norm_is_layer_norm_per_group():
    x = torch.randn(3, 12)
    torch.testing.assert_close(GroupNorm(3, 12)(x), F.group_norm(x, 3, eps=1e-5))


def test_lora_init_and_shapes():
    torch.manual_seed(0)
    lora = LoRA(16, 8, low_rank_dim=32, activation=None)
    assert torch.equal(lora.lora[0].weight, torch.zeros(32, 16))
    up = lora.lora[2].weight  # (8, 32): rank > out, gain 0.1 * sqrt(32 / 8)
    torch.testing.assert_close(up @ up.T, (0.1 * 2) ** 2 * torch.eye(8), atol=1e-6, rtol=0)
    assert lora(torch.randn(4, 16)).shape == (4, 8)
    lora.set_bias_value(torch.ones(8))
    assert torch.equal(lora.lora[2].bias, torch.ones(8))
    with pytest.raises(ValueError, match="activation"):
        LoRA(4, 4, 2, activation="gelu")


def test_dt_bias_init_is_inverse_softplus_of_a_log_uniform_step():
    torch.manual_seed(0)
    b = dt_bias_init(1000, 0.001, 0.1, 1e-4)
    dt = F.softplus(b)
    assert dt.min() >= 0.001 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert 0.005 < dt.log().mean().exp() < 0.02  # geometric mean of U(log 1e-3, log 1e-1) is 1e-2


def test_modules_imports_no_mixer():
    """modules.py is below the mixers: it imports none of them (no cycle)."""
    imported = {n.module for n in ast.walk(_tree(Path(modules.__file__)))
                if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert not imported & set(_BUILTIN_MODULES) and "registry" not in imported


def test_heads_first_is_a_transpose_with_a_contiguous_gradient():
    from zigscan.backbones.mixers.modules import heads_first

    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    y = heads_first(x)
    assert y.is_contiguous() and torch.equal(y, x.transpose(1, 2))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    assert gx.is_contiguous() and torch.equal(gx, g.transpose(1, 2))
