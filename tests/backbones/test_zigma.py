"""The ZigMa network: shapes, zero init, gradients, guidance, scan bookkeeping, save / load, presets.

Small models on the CPU. Core tests use ``attention-causal`` (a causal mixer that exists everywhere, so
the scan order matters); the mixer x schedule matrix covers every mixer the project promises and FAILS
while one is missing, on purpose.
"""

from __future__ import annotations

import json

import pytest
import torch

from zigscan.backbones import (
    ModelFileError,
    build_vocab,
    create_model,
    list_models,
    load_model,
    model_from_config,
    save_model,
)
from zigscan.backbones import zigma as zigma_mod
from zigscan.scanpaths.registries import UnknownNameError

CAUSAL = "attention-causal"


def tiny(**kw):
    """A 3-layer, width-32 ZigMa on an 8x8 image with 3 channels and 5 classes."""
    base = dict(mixer=CAUSAL, hidden_size=32, depth=3, input_size=8, in_channels=3, num_classes=5)
    return create_model("zigma-T/2", **{**base, **kw})


def perturb_zero_init(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every all-zero parameter (adaLN-Zero, final layer, biases) small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def inputs(B=2, C=3, size=(8, 8), classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *size, generator=g)
    t = torch.rand(B, generator=g)
    y = torch.randint(0, classes, (B,), generator=g)
    return x, t, y


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(8, 8), (8, 12), (6, 16)])
def test_image_shapes_any_divisible_size(size):
    model = tiny()
    perturb_zero_init(model)
    x, t, y = inputs(size=size)
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("schedule", ["video-sst", "video-zigzag"])
def test_video_shapes(schedule):
    model = tiny(num_frames=4, schedule=schedule, temporal_patch_size=2)
    perturb_zero_init(model)
    x = torch.randn(2, 3, 4, 8, 6)
    out = model(x, torch.rand(2), torch.tensor([0, 4]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_zero_init_returns_zeros():
    model = tiny(mlp_ratio=2.0)
    x, t, y = inputs()
    out = model(x, t, y)
    assert torch.equal(out, torch.zeros_like(x))


# ----------------------------------------------------------------------------- gradients / guidance


def caption_model(**kw):
    caps = ["a red shirt", "two blue boots", "a small dark bag"]
    return tiny(text_encoder="caption", text_vocab=build_vocab(caps), text_width=32, text_depth=1,
                text_heads=2, mlp_ratio=2.0, **kw), caps


def test_gradients_reach_every_parameter():
    model, caps = caption_model()
    perturb_zero_init(model)
    x, t, y = inputs()
    # guided forward uses the conditional AND the null label / null caption, so every parameter is used
    out = model.forward_with_cfg(x, t, y, 3.0, text=caps[:2])
    out.pow(2).mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reached: {dead}"


@pytest.mark.parametrize("cond", ["label", "caption", "embeddings"])
def test_cfg_scale_one_equals_conditional_forward(cond):
    if cond == "label":
        model, kw = tiny(), {}
    elif cond == "caption":
        model, caps = caption_model(num_classes=0)
        kw = {"text": caps[1:]}
    else:
        model = tiny(num_classes=0, text_encoder="precomputed", text_dim=16)
        kw = {"text": torch.randn(2, 5, 16), "text_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()}
    perturb_zero_init(model)
    model.eval()
    x, t, y = inputs()
    y = y if cond == "label" else None
    with torch.no_grad():
        cond_out = model(x, t, y, **kw)
        guided1 = model.forward_with_cfg(x, t, y, 1.0, **kw)
        guided3 = model.forward_with_cfg(x, t, y, 3.0, **kw)
        uncond = model(x, t, None)  # null label / null caption
    torch.testing.assert_close(guided1, cond_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided3, uncond + 3.0 * (cond_out - uncond), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cond_out, uncond, atol=1e-4), "conditioning has no effect"


def test_caption_conditioning_trains_and_depends_on_text():
    model, caps = caption_model(num_classes=0)
    perturb_zero_init(model)
    model.eval()
    x, t, _ = inputs()
    with torch.no_grad():
        a = model(x, t, text=[caps[0], caps[0]])
        b = model(x, t, text=[caps[0], caps[2]])
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1], atol=1e-5)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.text_encoder.named_parameters()}
    loss = (model(x, t, text=caps[:2]) - x).pow(2).mean()
    loss.backward()
    opt.step()
    changed = [n for n, p in model.text_encoder.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "the caption encoder did not train"


# ----------------------------------------------------------------------------- scan bookkeeping


def test_schedule_changes_output_not_parameter_count():
    """The paper's zero-parameter claim: another scan schedule, same parameters, different function."""
    outs, counts = [], []
    for schedule in ["sweep", "zigzag-8", "hilbert-8"]:
        torch.manual_seed(0)
        model = tiny(schedule=schedule).eval()
        perturb_zero_init(model)
        counts.append(n_params(model))
        outs.append(model(*inputs()))
    assert len(set(counts)) == 1
    assert not torch.allclose(outs[0], outs[1], atol=1e-5)
    assert not torch.allclose(outs[1], outs[2], atol=1e-5)


@pytest.mark.parametrize(
    "schedule,video",
    [("zigzag-8", False), ("hilbert-8", False), ("random-8", False), (["sweep", "zigzag-s3", "zigzag-s3"], False),
     ("video-sst", True), ("video-zigzag", True)],
)
def test_one_gather_per_boundary_equals_naive(schedule, video, monkeypatch):
    kw = dict(num_frames=3) if video else {}
    model = tiny(schedule=schedule, depth=4, mlp_ratio=2.0, **kw).eval()  # eval: no label dropout
    perturb_zero_init(model)
    x = torch.randn(2, 3, 3, 6, 8) if video else torch.randn(2, 3, 6, 10)
    t, y = torch.rand(2), torch.tensor([1, 3])
    calls = []
    real = zigma_mod._gather
    monkeypatch.setattr(zigma_mod, "_gather", lambda h, idx: calls.append(idx is not None) or real(h, idx))
    fast = model(x, t, y)
    assert len(calls) == model.config["depth"] + 1  # arrange, one per boundary, rearrange
    model.naive_scan = True
    naive = model(x, t, y)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-6)
    if video and schedule == "video-sst":  # the temporal layers fold H*W segments into the batch
        plan = model.scan_plan(model.x_embedder.grid(x), x.device)
        assert max(plan.segments) > 1


@pytest.mark.parametrize("path,video", [("zigzag-s3", False), ("hilbert-s5", False), ("temporal", True),
                                        ("spatial-zigzag-s2", True)])
def test_mixer_runs_along_the_scan_path(path, video):
    """One causal layer with patch 1: a change at scan step k may reach only steps >= k of the same segment
    (the whole stack is per-token except the mixer), so the influence pattern reveals the order used."""
    kw = dict(num_frames=3, temporal_patch_size=1) if video else {}
    model = tiny(schedule=[path], depth=1, patch_size=1, input_size=(3, 4), num_classes=0, **kw).eval()
    perturb_zero_init(model)
    grid = (3, 3, 4) if video else (3, 4)
    scan = model.scan_paths[0]
    order, seg_len = scan.order(grid), scan.numel(grid) // scan.segments(grid)
    x, t = torch.randn(1, 3, *grid), torch.tensor([0.5])
    with torch.no_grad():
        base = model(x, t).flatten(2)  # (1, C, L), raster order
        for k in range(order.numel()):
            xp = x.flatten(2).clone()
            xp[..., order[k]] += 1.0
            diff = (model(xp.view_as(x), t).flatten(2) - base).abs().amax(1)[0]  # (L,)
            hit = scan.inverse(grid)[torch.nonzero(diff > 1e-6).flatten()]  # scan steps that changed
            assert hit.min() == k, f"step {k} influenced earlier steps {hit.tolist()}"
            assert (hit // seg_len == k // seg_len).all(), "influence crossed a segment"
            if k % seg_len < seg_len - 1:
                assert k + 1 in hit.tolist()


def test_parallel_mixers_are_told_the_grid():
    """parallel-K scans its own zigzags over a raster-ordered grid: it gets the grid under `sweep`;
    under another schedule it gets None (its forward/reverse fallback) and a warning."""
    model = tiny(mixer="parallel-2", schedule="sweep", depth=2)
    model(*inputs(size=(8, 12)))
    assert all(blk.mixer.shape == (4, 6) for blk in model.blocks)
    model = tiny(mixer="parallel-2", schedule=["sweep", "zigzag-s1"], depth=2)
    with pytest.warns(UserWarning, match="sweep"):
        model(*inputs(size=(8, 12)))
    assert model.blocks[0].mixer.shape == (4, 6) and model.blocks[1].mixer.shape is None


# ----------------------------------------------------------------------------- save / load / config


@pytest.mark.parametrize("schedule", ["zigzag-8", "random-8"])
def test_save_load_round_trip(tmp_path, schedule):
    model, caps = caption_model(schedule=schedule)
    perturb_zero_init(model, seed=3)
    model.eval()
    x, t, y = inputs()
    with torch.no_grad():
        ref = model(x, t, y, text=caps[:2])
    save_model(model, tmp_path / "m")
    json.loads((tmp_path / "m" / "config.json").read_text())  # plain JSON
    loaded = load_model(tmp_path / "m").eval()
    assert loaded.config == model.config
    assert [p.name for p in loaded.scan_paths] == [p.name for p in model.scan_paths]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y, text=caps[:2]), ref, rtol=0, atol=0)


def test_config_is_json_and_rebuilds():
    model = tiny(schedule="random-8", mixer_kwargs={"num_heads": 2}, pos_embed="learned")
    cfg = json.loads(json.dumps(model.config))
    again = model_from_config(cfg)
    assert again.config == model.config
    assert n_params(again) == n_params(model)
    assert cfg["scan_paths"] == ["random", "random@1", "random@2"]


def test_corrupt_and_mismatched_files(tmp_path):
    model = tiny()
    folder = save_model(model, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(folder)
    save_model(model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(folder)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")


# ----------------------------------------------------------------------------- errors


def test_errors_for_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match="not divisible by 2"):
        model(torch.randn(1, 3, 8, 7), torch.rand(1))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 4, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="num_frames"):
        model(torch.randn(1, 3, 2, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="does not divide into patches"):
        tiny(input_size=9)
    with pytest.raises(ValueError, match="no text conditioning"):
        model(torch.randn(1, 3, 8, 8), torch.rand(1), text=["a cat"])
    with pytest.raises(ValueError, match="video"):
        tiny(schedule="video-sst")
    with pytest.raises(ValueError, match="learned"):
        tiny(pos_embed="learned")(torch.randn(1, 3, 8, 12), torch.rand(1))
    with pytest.raises(TypeError, match="Accepted: .*input_size"):
        create_model("zigma-T/2", hidden_sise=64)
    with pytest.raises(UnknownNameError, match="zigma-T/2"):
        create_model("zigma-T2")
    with pytest.raises(FileNotFoundError, match="local_files_only|weights"):
        try:
            tiny(text_encoder="clip", text_encoder_path="/nonexistent/clip")
        except ImportError as exc:  # transformers not installed: the error must say so
            assert "transformers" in str(exc)
            raise FileNotFoundError("weights") from exc


def test_none_overrides_are_dropped():
    model = create_model("zigma-T/2", mixer=CAUSAL, hidden_size=None, depth=2, num_frames=None)
    assert model.config["hidden_size"] == 128 and model.config["depth"] == 2


# ----------------------------------------------------------------------------- mixers x schedules

MATRIX_MIXERS = ["mamba", "mamba2", "gla", "rwkv6", "rwkv7", "attention"]
MATRIX_SCHEDULES = ["sweep", "zigzag-8", "hilbert-8"]


@pytest.mark.parametrize("schedule", MATRIX_SCHEDULES)
@pytest.mark.parametrize("mixer", MATRIX_MIXERS)
def test_every_mixer_and_schedule_trains_one_step(mixer, schedule):
    torch.manual_seed(0)
    model = create_model("zigma-T/2", mixer=mixer, schedule=schedule, hidden_size=64, depth=2,
                         input_size=16, in_channels=3, num_classes=5)  # 8x8 token grid
    perturb_zero_init(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, y = inputs(size=(16, 16))
    loss = (model(x, t, y) - x).pow(2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- presets


def test_presets_listed():
    names = list_models()
    for n in ["zigma-T/2", "zigma-S/2", "zigma-S/4", "zigma-B/2", "zigma-B/4", "zigma-L/2", "zigma-XL/2",
              "dit-S/2", "dit-B/2", "dit-L/2", "dit-XL/2"]:
        assert n in names
    assert list_models("dit-*") == ["dit-B/2", "dit-L/2", "dit-S/2", "dit-XL/2"]


@pytest.mark.parametrize("name", ["dit-S/2", "dit-XL/2"])
def test_dit_presets_match_published_size(name):
    """DiT-S/2 33M, DiT-XL/2 675M (DiT predicts 2C channels for learned sigma; we predict C: ~0.1% less)."""
    with torch.device("meta"):
        model = create_model(name)
    published = {"dit-S/2": 33.0e6, "dit-XL/2": 675.0e6}[name]
    assert abs(n_params(model) - published) / published < 0.01


@pytest.mark.parametrize("name", ["zigma-T/2", "zigma-S/4", "zigma-B/2"])
def test_zigma_presets_build_on_meta(name):
    with torch.device("meta"):
        model = create_model(name)
    assert n_params(model) > 0
    assert model.config["mixer"] == "mamba" and model.config["schedule"] == "zigzag-8"


# ----------------------------------------------------------------------------- edge inputs: clear errors
@pytest.mark.parametrize("shape,fragment", [
    ((0, 3, 8, 8), "empty batch"),
    ((2, 3, 0, 8), "zero-length side"),
    ((2, 3, 8, 0), "zero-length side"),
])
def test_empty_inputs_get_clear_errors(shape, fragment):
    model = tiny()
    with pytest.raises(ValueError, match=fragment):
        model(torch.randn(shape), torch.rand(max(shape[0], 1))[: shape[0]], torch.zeros(shape[0], dtype=torch.long))


def test_dtype_mismatch_and_integer_input_get_clear_errors():
    model = tiny()
    with pytest.raises(TypeError, match=r"float16 but the model's weights are torch.float32.*autocast"):
        model(torch.randn(2, 3, 8, 8).half(), torch.rand(2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.rand(2), torch.tensor([0, 1]))
    out = model.half()(torch.randn(2, 3, 8, 8).half(), torch.rand(2).half(), torch.tensor([0, 1]))  # matching: fine
    assert out.dtype == torch.float16 and out.shape == (2, 3, 8, 8)


@pytest.mark.parametrize("size", [0, -4, (8, 0)])
def test_input_size_must_be_positive(size):
    with pytest.raises(ValueError, match="input_size must be positive"):
        tiny(input_size=size)


def test_a_raising_mixer_factory_names_the_mixer_and_its_registrant():
    from zigscan.backbones import register_mixer
    from zigscan.backbones.mixers.registry import MIXERS

    @register_mixer("test-broken-factory", description="raises")
    def broken(d_model, impl="auto"):
        raise RuntimeError("no kernel today")

    try:
        with pytest.raises(zigma_mod.MixerBuildError, match=r"mixer 'test-broken-factory' \(registered by 'user'\).*no kernel today"):
            tiny(mixer="test-broken-factory")
    finally:
        MIXERS.unregister("test-broken-factory")
