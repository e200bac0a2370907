"""zigscan's rwkv6 and rwkv7 references against BlinkDL's own runtime, the ``rwkv`` package (an independent oracle).

``rwkv`` (PyPI, BlinkDL's inference runtime for the official RWKV-LM checkpoints) runs the time mixing of
RWKV-6 and RWKV-7 as TorchScript: a per-token loop over one unbatched sequence, float32 here, no backward.
It shares no code with fla or zigscan, so agreement checks our parameterisation against the authors' own.
Each test writes a one-layer checkpoint in the official format from a zigscan mixer's state dict (the mapping
below is the whole correspondence), loads it with the package's loader (its own transposes and renames),
calls the package's time-mixing function exactly as its ``forward`` does, and compares with our reference.

What the comparison finds (float32, random non-degenerate weights, T = 9 tokens; max |difference| against
outputs of mean magnitude 0.2-0.7):
* rwkv6: 4e-7 once ``norm_eps`` is the official group-norm eps ``64e-5`` (= 1e-5 * head_size_divisor**2,
  head_size_divisor = 8); with the default ``1e-5`` (fla's, kept so trained weights keep their behaviour) 3e-3
  (asserted below). The mixes differ only in order: fla/zigscan r, w, k, v, g; official w, k, v, r, g.
* rwkv7: 2e-6 at the default head_dim 64, where fla's eps rule ``head_dim * norm_eps`` gives the official
  ``64e-5``. The official runtime uses ``64e-5`` at every head size, so at another head_dim zigscan (like fla)
  differs: 5e-4 at head_dim 32; ``norm_eps = 64e-5 / head_dim`` matches (6e-7; asserted below). The decay,
  a/k/v/g LoRAs, kk normalisation, k update, bonus and layer-0 ``v_first`` agree.

The package changes process-wide state when imported (TorchScript autocast off, TF32 flags) and picks RWKV-6 or
RWKV-7 by environment variable at import time, so each version is loaded as its own module copy with the
environment set, and the global state is restored afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zigscan.backbones import get_mixer
from zigscan.backbones.mixers.rwkv6 import OFFICIAL_NORM_EPS

T = 9  # tokens
ORDER_OFFICIAL = "wkvrg"  # RWKV-6 time_maa_w1/w2 blocks; fla/zigscan x_proj blocks are "rwkvg"


# ----------------------------------------------------------------------------------------------------------
# the oracle: rwkv/model.py loaded once per version, with its environment, without leaking global state
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def rwkv_environment(v7: bool) -> Iterator[None]:
    """The package's environment (read at import and in its constructors); global state restored on exit."""
    env = {"RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_V7_ON": "1" if v7 else "0"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
                   torch.backends.cuda.matmul.allow_tf32)
    autocast = torch._C._jit_set_autocast_mode(True)  # returns the previous value
    torch._C._jit_set_autocast_mode(autocast)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved_flags
        torch._C._jit_set_autocast_mode(autocast)


def _load_rwkv_model(v7: bool):
    """A private copy of ``rwkv.model`` for one version (the package picks RWKV-6 or RWKV-7 at import)."""
    origin = importlib.util.find_spec("rwkv.model").origin
    with rwkv_environment(v7):
        spec = importlib.util.spec_from_file_location(f"_rwkv_oracle_v{7 if v7 else 6}", origin)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rwkv6_runtime():
    return _load_rwkv_model(v7=False)


@pytest.fixture(scope="module")
def rwkv7_runtime():
    return _load_rwkv_model(v7=True)


def randomize(mixer: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random and non-zero (upstream zero-initialises o_proj, LoRA down-projections, mixes and
    the bonus, which would leave parts of the map unchecked); norm weights near 1. Scale 0.1 keeps RWKV-6's
    log decays in a trained model's range (-7 .. -0.2 here); at 0.3 they reach -4800, where our float32
    chunked reference itself drifts by 1e-4 relative from its float64 run (the official loop does not)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if name.startswith("g_norm.weight") else 0.1 * noise)
    return mixer.eval()


def _common_keys(C: int, ffn: int = 8) -> dict[str, torch.Tensor]:
    """Parts of a one-layer checkpoint outside the time mixing (the loaders need them; unused here)."""
    z = torch.zeros
    return {"emb.weight": torch.randn(4, C), "blocks.0.ln0.weight": torch.ones(C), "blocks.0.ln0.bias": z(C),
            "blocks.0.ln1.weight": torch.ones(C), "blocks.0.ln1.bias": z(C), "blocks.0.ln2.weight": torch.ones(C),
            "blocks.0.ln2.bias": z(C), "ln_out.weight": torch.ones(C), "ln_out.bias": z(C),
            "head.weight": torch.randn(4, C), "blocks.0.ffn.key.weight": torch.randn(ffn, C),
            "blocks.0.ffn.value.weight": torch.randn(C, ffn)}


def _ours(mixer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Our reference on one sequence [T, C] -> [T, C] (batch of 1), float32."""
    with torch.no_grad():
        y = mixer.forward_reference(x[None])[0]
    assert y.abs().mean() > 1e-2, "the output is ~0: the comparison would hold for anything"
    return y


# ----------------------------------------------------------------------------------------------------------
# RWKV-6
# ----------------------------------------------------------------------------------------------------------
def rwkv6_checkpoint(mixer) -> dict[str, torch.Tensor]:
    """zigscan / fla ``RWKV6Attention`` state dict -> RWKV-LM x060 ``blocks.0.att.*`` (one layer).

    Needs ``expand_k = expand_v = 1`` (the official layer has one head size for keys and values)."""
    sd, C, H = mixer.state_dict(), mixer.d_model, mixer.num_heads
    R = mixer.proj_low_rank_dim
    perm = ["rwkvg".index(c) for c in ORDER_OFFICIAL]  # official block n = zigscan block perm[n]
    w1 = sd["x_proj.0.linear.weight"].view(5, R, C)[perm].reshape(5 * R, C)  # (5R, C), official order
    w2 = sd["x_proj.2.weight"].view(C, 5, R).permute(1, 2, 0)[perm]  # (5, R, C)
    att = {
        "time_maa_x": sd["x_proj.0.mu"], "time_maa_w1": w1.t(), "time_maa_w2": w2,
        **{f"time_maa_{c}": sd["x_bias"]["rwkvg".index(c)] for c in "wkvrg"},
        "time_decay": sd["w_proj.linear.lora.2.bias"], "time_decay_w1": sd["w_proj.linear.lora.0.weight"].t(),
        "time_decay_w2": sd["w_proj.linear.lora.2.weight"].t(), "time_faaaa": sd["bonus"].view(H, C // H),
        "receptance.weight": sd["r_proj.linear.weight"], "key.weight": sd["k_proj.linear.weight"],
        "value.weight": sd["v_proj.linear.weight"], "gate.weight": sd["g_proj.linear.weight"],
        "output.weight": sd["o_proj.weight"], "ln_x.weight": sd["g_norm.weight"], "ln_x.bias": sd["g_norm.bias"],
    }
    att = {k: (v.view(1, 1, C) if k.startswith("time_maa_") and v.dim() == 1 or k == "time_decay" else v)
           for k, v in att.items()}
    ckpt = {f"blocks.0.att.{k}": v.clone() for k, v in att.items()}
    ckpt.update({"blocks.0.ffn.time_maa_k": torch.zeros(1, 1, C), "blocks.0.ffn.time_maa_r": torch.zeros(1, 1, C),
                 "blocks.0.ffn.receptance.weight": torch.zeros(C, C)})
    return {**_common_keys(C), **ckpt}


def official_rwkv6(runtime, path: Path, x: torch.Tensor) -> torch.Tensor:
    """The package's RWKV-6 time mixing of x [T, C] (its att_seq_v6_0, called as its forward calls it)."""
    with rwkv_environment(v7=False):
        model = runtime.RWKV(str(path), "cpu fp32", verbose=False)
    assert model.version == 6.0
    w, a, b = model.w, "blocks.0.att.", "blocks.0."
    H, C = model.args.n_head, x.shape[1]
    mats = [w[a + f"{n}.weight"] for n in ("key", "value", "receptance", "gate", "output")]
    out, _, _ = model.att_seq_v6_0(
        x, torch.zeros(C), torch.zeros(H, C // H, C // H),
        w[b + "ln1.weight"], w[b + "ln1.bias"], w[a + "ln_x.weight"], w[a + "ln_x.bias"],
        *(w[a + f"time_maa_{c}"] for c in "xwkvrg"),
        w[a + "time_maa_w1"], w[a + "time_maa_w2"], w[a + "time_decay_w1"], w[a + "time_decay_w2"],
        w[a + "time_decay"], w[a + "time_first"], *mats, *([x] * 20),  # 20 int8 placeholders, unused in fp32
    )
    return out - x  # it returns the residual x + mix(ln1(x)); ln1 is the identity layer norm here


@pytest.fixture(scope="module")
def rwkv6_case(rwkv6_runtime, tmp_path_factory):
    """(our mixer, official mix of x, the input already through ln1) for one random mixer."""
    torch.manual_seed(0)
    mixer = randomize(get_mixer("rwkv6", 64, num_heads=2, expand_k=1.0, norm_eps=OFFICIAL_NORM_EPS), seed=1)
    path = tmp_path_factory.mktemp("rwkv6") / "x060.pth"
    torch.save(rwkv6_checkpoint(mixer), path)
    x = torch.randn(T, 64)
    return mixer, official_rwkv6(rwkv6_runtime, path, x), F.layer_norm(x, (64,))


def test_rwkv6_reference_equals_the_official_runtime(rwkv6_case):
    mixer, official, x = rwkv6_case
    torch.testing.assert_close(_ours(mixer, x), official, rtol=1e-5, atol=1e-5)


def test_rwkv6_default_eps_is_not_the_official_one(rwkv6_case):
    """fla's (and zigscan's default) norm_eps 1e-5 is not official RWKV-6's 64e-5: the outputs differ."""
    mixer, official, x = rwkv6_case
    mixer.g_norm.eps = 1e-5
    try:
        err = (_ours(mixer, x) - official).abs().max().item()
    finally:
        mixer.g_norm.eps = OFFICIAL_NORM_EPS
    assert err > 1e-4, err  # ~20x the tolerance above


def test_rwkv6_official_eps_option():
    m = get_mixer("rwkv6", 64, norm_eps="official")
    assert OFFICIAL_NORM_EPS == 64e-5 and m.norm_eps == m.g_norm.eps == OFFICIAL_NORM_EPS
    assert get_mixer("rwkv6", 64).g_norm.eps == 1e-5  # the default is unchanged (trained weights keep behaving)
    with pytest.raises(ValueError, match="official"):
        get_mixer("rwkv6", 64, norm_eps="64e-5")


# ----------------------------------------------------------------------------------------------------------
# RWKV-7
# ----------------------------------------------------------------------------------------------------------
def rwkv7_checkpoint(mixer) -> dict[str, torch.Tensor]:
    """zigscan / fla ``RWKV7Attention(layer_idx=0)`` state dict -> RWKV-LM x070 ``blocks.0.att.*`` (one layer)."""
    sd, C = mixer.state_dict(), mixer.d_model
    row = lambda t: t.reshape(1, 1, C)  # noqa: E731
    att = {f"x_{c}": sd[f"x_{c}"] for c in "rwkvag"}
    for lora, (down, up, bias) in {"w": ("w1", "w2", "w0"), "a": ("a1", "a2", "a0"), "g": ("g1", "g2", None)}.items():
        att[down] = sd[f"{lora}_lora.lora.0.weight"].t()  # (C, rank)
        att[up] = sd[f"{lora}_lora.lora.2.weight"].t()  # (rank, C)
        if bias:
            att[bias] = row(sd[f"{lora}_lora.lora.2.bias"])
    att.update({"k_k": row(sd["k_k"]), "k_a": row(sd["k_a"]), "r_k": sd["r_k"],
                "receptance.weight": sd["r_proj.weight"], "key.weight": sd["k_proj.weight"],
                "value.weight": sd["v_proj.weight"], "output.weight": sd["o_proj.weight"],
                "ln_x.weight": sd["g_norm.weight"], "ln_x.bias": sd["g_norm.bias"]})
    return {**_common_keys(C), **{f"blocks.0.att.{k}": v.clone() for k, v in att.items()}}


def official_rwkv7(runtime, path: Path, x: torch.Tensor) -> torch.Tensor:
    """The package's RWKV-7 time mixing of x [T, C] (RWKV_x070_TMix_seq at layer 0, as its forward_seq calls it)."""
    with rwkv_environment(v7=True):
        model = runtime.RWKV(str(path.with_suffix("")), "cpu fp32")  # this loader appends ".pth"
    z, a = model.z, "blocks.0.att."
    H, N = model.n_head, model.head_size
    out, _, _, _ = runtime.RWKV_x070_TMix_seq(
        0, H, N, x, torch.zeros(H * N), torch.empty_like(x), torch.zeros(H, N, N),
        *(z[a + n] for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "w1", "w2", "a0", "a1", "a2",
                             "v0", "v1", "v2", "g1", "g2", "k_k", "k_a", "r_k", "receptance.weight", "key.weight",
                             "value.weight", "output.weight", "ln_x.weight", "ln_x.bias")))
    return out


@pytest.mark.parametrize(("d_model", "kwargs"), [
    (128, {}),  # head_dim 64 (the default): fla's eps rule head_dim * 1e-5 is the official 64e-5
    (64, {"head_dim": 32, "norm_eps": 64e-5 / 32}),  # other head sizes match only with this eps
], ids=["head64-default", "head32-official-eps"])
def test_rwkv7_reference_equals_the_official_runtime(rwkv7_runtime, tmp_path, capsys, d_model, kwargs):
    torch.manual_seed(0)
    mixer = randomize(get_mixer("rwkv7", d_model, **kwargs), seed=2)
    assert mixer.g_norm.eps == pytest.approx(64e-5)
    torch.save(rwkv7_checkpoint(mixer), tmp_path / "x070.pth")
    x = torch.randn(T, d_model)
    official = official_rwkv7(rwkv7_runtime, tmp_path / "x070.pth", x)
    capsys.readouterr()  # the loader prints what it loads
    torch.testing.assert_close(_ours(mixer, x), official, rtol=1e-5, atol=1e-5)


def test_rwkv7_default_eps_differs_from_the_official_one_at_other_head_sizes(rwkv7_runtime, tmp_path, capsys):
    """fla (and zigscan) scale the group-norm eps with the head size; the official runtime does not."""
    torch.manual_seed(0)
    mixer = randomize(get_mixer("rwkv7", 64, head_dim=32), seed=2)
    assert mixer.g_norm.eps == pytest.approx(32e-5)  # vs the official 64e-5
    torch.save(rwkv7_checkpoint(mixer), tmp_path / "x070.pth")
    x = torch.randn(T, 64)
    official = official_rwkv7(rwkv7_runtime, tmp_path / "x070.pth", x)
    capsys.readouterr()
    assert (_ours(mixer, x) - official).abs().max().item() > 1e-4

