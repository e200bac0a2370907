"""CPU tests of the pure helpers inside the GPU benchmark scripts (the scripts themselves need a GPU)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

GPU_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", GPU_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# kernel names as torch.profiler reported them on an H200 (torch 2.11), one training step of ZigMa-B/2
@pytest.mark.parametrize(
    ("name", "is_gather"),
    [
        ("void at::native::vectorized_gather_kernel<16, long>(char*, char*, long, long, long)", True),
        ("void at::native::(anonymous namespace)::indexSelectSmallIndex<float, long, unsigned int, 2, 2, -2>(x)", True),
        ("void at::native::_scatter_gather_elementwise_kernel<128, 8, at::native::_cuda_scatter_gather>(int)", True),
        ("void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel>(long, Func)", True),
        # Mamba's conv1d without causal-conv1d: "Index" only in its template arguments
        ("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel_generic<c10::BFloat16, int>"
         "(torch::headeronly::detail::GenericPackedTensorAccessor<c10::BFloat16, 4ul, at::DefaultPtrTraits, int>, "
         "at::detail::IndexBoundsCheck<4ul, int>, c10::BFloat16)", False),
        ("void (anonymous namespace)::elementwise_kernel_with_index<int, at::native::arange_cuda_out>(int, F)", False),
        ("sm90_xmma_wgrad_indexed_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", False),
        ("void selective_scan_bwd_kernel<Selective_Scan_bwd_kernel_traits<128, 16, true>>(SSMParamsBwd)", False),
    ],
)
def test_permutation_kernels_are_told_from_kernels_with_index_in_their_arguments(name, is_gather):
    assert _load("bench_speed").is_permutation_kernel(name) is is_gather


def test_collect_ablation_merges_seeds_from_separate_calls(tmp_path):
    import json

    mod = _load("collect_ablation")
    a = [{"config": "sweep", "seed": 0, "fid": 50.0, "kid": 2.0}, {"config": "sweep", "seed": 1, "error": "cut short"}]
    b = [{"config": "sweep", "seed": 1, "fid": 40.0, "kid": 1.0}, {"config": "dit", "seed": 1, "error": "oom"}]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    rows = mod.merge([tmp_path / "a.json", tmp_path / "b.json"])
    assert [(r["config"], r["seed"], r.get("fid")) for r in rows] == [("dit", 1, None), ("sweep", 0, 50.0), ("sweep", 1, 40.0)]
    mod.write(rows, tmp_path)
    table = (tmp_path / "ablation.md").read_text()
    assert "| sweep | 2 | 45.00 +- 7.07 | 1.500 +- 0.707 |" in table and "| dit | 0 | (no result) | |" in table


def test_check_mixers_merges_per_gpu_results_without_a_gpu(tmp_path, capsys):
    import json

    mod = _load("check_mixers")
    row = {"mixer": "rwkv6", "L": 63, "fp32_out": 2.6e-7, "fp32_dx": 5.7e-7, "fp32_dparam": 5.2e-7, "bf16_out": 9.7e-3,
           "bf16_dx": 2.6e-2, "bf16_dparam": 2.4e-2, "floor_dx": 2.6e-2, "upstream_out": 0.0, "ok": False,
           "at_floor": True}
    (tmp_path / "a.json").write_text(json.dumps({"device": "H200", "checks": [row], "timings": []}))
    (tmp_path / "b.json").write_text(json.dumps({"device": "H200", "checks": [{"mixer": "retnet", "error": "boom"}],
                                                 "timings": [{"mixer": "mamba", "L": 1024, "ms": 3.0, "peak_GiB": 0.2}]}))
    (tmp_path / "c.json").write_text('{"device": "H200", "chec')  # a run killed while writing
    out = tmp_path / "all.json"
    assert mod.main(["--merge", *(str(tmp_path / f) for f in ("a.json", "b.json", "c.json")), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["device"] == "H200" and [r["mixer"] for r in merged["checks"]] == ["rwkv6", "retnet"]
    assert merged["timings"] == [{"mixer": "mamba", "L": 1024, "ms": 3.0, "peak_GiB": 0.2}]
    printed = capsys.readouterr()
    assert "rwkv6" in printed.out and " NO" in printed.out and "retnet           ERROR boom" in printed.out
    assert "skipping" in printed.err and "c.json" in printed.err


def test_speedups_compare_each_zigma_row_with_the_dit_rows_of_its_own_tokens_and_batch(capsys):
    mod = _load("bench_speed")
    rows = [
        {"suite": "main", "preset": "dit-B/2", "mixer": "attention", "schedule": None, "tokens": 16384, "batch": 1,
         "depth": 12, "ms": 100.0, "peak_GiB": 8.0},
        {"suite": "main", "preset": "dit-B/2", "mixer": "attention", "schedule": None, "tokens": 16384, "batch": 1,
         "depth": 24, "ms": 200.0, "peak_GiB": 16.0},
        {"suite": "main", "preset": "dit-B/2", "mixer": "attention", "schedule": None, "tokens": 4096, "batch": 1,
         "depth": 12, "ms": 10.0, "peak_GiB": 2.0},
        {"suite": "main", "preset": "zigma-B/2", "mixer": "mamba", "schedule": "zigzag-8", "tokens": 16384,
         "batch": 1, "depth": 24, "ms": 50.0, "peak_GiB": 12.0, "fused_conv1d": True},
        {"suite": "main", "preset": "zigma-B/2", "mixer": "gla", "schedule": "zigzag-8", "tokens": 16384,
         "batch": 8, "depth": 24, "ms": 50.0, "peak_GiB": 12.0},  # no DiT at batch 8: no ratio
        {"suite": "layer", "preset": "dit-B/2", "mixer": "attention", "tokens": 65536, "batch": 1, "ms": 64.0,
         "peak_GiB": 4.0},
        {"suite": "layer", "preset": "zigma-B/2", "mixer": "mamba", "tokens": 65536, "batch": 1, "ms": 10.0,
         "peak_GiB": 1.0},
    ]
    out = mod.speedups(rows)
    mamba = out[3]
    assert mamba["vs_dit_d12"] == 2.0 and mamba["vs_dit_d24"] == 4.0
    assert mamba["mem_vs_dit_d12"] == 1.5 and mamba["mem_vs_dit_d24"] == 0.75
    assert not any(k.startswith("vs_dit") for k in out[4]) and not any(k.startswith("vs_dit") for k in out[0])
    assert out[6]["vs_dit_layer"] == 6.4 and out[6]["mem_vs_dit_layer"] == 0.25
    assert "vs_dit_d12" not in rows[3]  # the input rows are left as they were
    mod.print_table(rows)
    printed = capsys.readouterr().out.splitlines()
    assert "dit-B/2 d24" in printed[1] and "fused=y" in printed[3]
    assert "2.00x/1.50mem d12 4.00x/0.75mem d24" in printed[3]
    assert "6.40x/0.25mem layer" in printed[6]


def test_zero_initialised_parameters_get_values_so_the_check_compares_something():
    import torch

    from zigscan.backbones.mixers import get_mixer

    mod = _load("check_mixers")
    m = get_mixer("rwkv7", 64, impl="reference")
    x = torch.randn(1, 9, 64)
    assert m(x).abs().max() == 0  # upstream's init: o_proj is zero, the output is exactly 0
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    names = mod.randomize_zero_parameters(m)
    assert "o_proj.weight" in names and all(not before[n].any() for n in names)
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters() if n not in names)  # others untouched
    assert m(x).abs().max() > 0


def test_probe_names_the_innermost_library_frame_of_a_traceback():
    mod = _load("probe_kernel")
    tb = (
        'Traceback (most recent call last):\n'
        '  File "/w/benchmarks/gpu/probe_kernel.py", line 40, in child\n'
        '  File "/usr/lib/python3/site-packages/fla/ops/common/chunk_o.py", line 812, in chunk_bwd_dqkwg\n'
        '  File "/usr/lib/python3/site-packages/triton/runtime/jit.py", line 700, in run\n'
        'RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered\n'
    )
    assert mod.innermost_frame(tb) == "fla/ops/common/chunk_o.py:812 in chunk_bwd_dqkwg"
    assert mod.innermost_frame("no traceback here") == ""


class _FakeMixer:
    """Stand-ins for a kernel-backed mixer, to drive check_mixers.check() on the CPU."""

    @staticmethod
    def factory(*, crash_fp32_kernel=False, upstream_raises=False, zero_output=False):
        import torch
        from torch import nn

        class Fake(nn.Module):
            def __init__(self, d_model, impl="auto", role="ours"):
                super().__init__()
                self.impl, self.role = impl, role
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                if self.role == "upstream" and upstream_raises:
                    raise RuntimeError("CUDA error: an illegal memory access was encountered")
                if self.impl == "kernel" and x.dtype == torch.float32 and crash_fp32_kernel:
                    raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")
                y = self.proj(x).cumsum(1)  # causal
                return y * 0 if zero_output else y

            def build_upstream(self):
                return Fake(self.proj.in_features, role="upstream")

        return lambda name, d_model, impl="auto": Fake(d_model, impl)


def test_check_keeps_bf16_rows_when_the_float32_kernel_faults(monkeypatch):
    mod = _load("check_mixers")
    monkeypatch.setattr(mod, "get_mixer", _FakeMixer.factory(crash_fp32_kernel=True))
    rows = mod.check("fake", 16, [5, 9], device="cpu")
    assert [r["L"] for r in rows] == [5, 9]
    assert all(r["bf16_out"] < 1e-2 and r["floor_out"] < 1e-2 for r in rows)  # bf16 measured before the fault
    assert "crashed in float32 at L=5" in rows[0]["fp32_note"] and rows[0]["cuda_context_lost"]
    assert rows[1]["fp32_note"] == rows[0]["fp32_note"]  # not tried again on a dead context
    assert all("upstream_out" not in r for r in rows)  # nothing more runs after a fault
    assert not any(r["ok"] for r in rows)  # a fault fails the check, though bf16 met its target


def test_check_reports_an_upstream_fault_without_losing_our_rows(monkeypatch):
    mod = _load("check_mixers")
    monkeypatch.setattr(mod, "get_mixer", _FakeMixer.factory(upstream_raises=True))
    rows = mod.check("fake", 16, [5, 9], device="cpu")
    assert all(r["fp32_out"] < 1e-6 and r["fp32_dx"] < 1e-6 for r in rows)
    assert "upstream layer failed" in rows[0]["upstream_note"] and rows[0]["cuda_context_lost"]
    assert rows[0]["ok"] is False and rows[1]["ok"] is True
    assert "upstream_note" not in rows[1] and "upstream_out" not in rows[1]  # stopped at the first fault


def test_check_does_not_pass_a_mixer_whose_output_is_identically_zero(monkeypatch):
    mod = _load("check_mixers")
    monkeypatch.setattr(mod, "get_mixer", _FakeMixer.factory(zero_output=True))
    rows = mod.check("fake", 16, [5], device="cpu")
    assert rows[0]["fp32_out"] == 0 and rows[0]["ref_out_norm"] == 0
    assert rows[0]["ok"] is False  # errors of exactly 0 against a zero output prove nothing

    monkeypatch.setattr(mod, "get_mixer", _FakeMixer.factory())
    assert mod.check("fake", 16, [5], device="cpu")[0]["ok"] is True


def test_plot_speed_draws_every_panel_from_rows_of_several_files(tmp_path):
    import json

    mod = _load("plot_speed")
    main = [{"suite": "main", "preset": "dit-B/2", "mixer": "attention", "schedule": None, "depth": d, "tokens": t,
             "batch": 1, "ms": d * t / 1000, "peak_GiB": d * t / 4096} for d in (12, 24) for t in (1024, 4096)]
    main += [{"suite": "main", "preset": "zigma-B/2", "mixer": "mamba", "schedule": "zigzag-8", "depth": 24,
              "tokens": t, "batch": 1, "ms": t / 100, "peak_GiB": t / 2048, "fused_conv1d": f}
             for t in (1024, 4096) for f in (True, False)]
    layer = [{"suite": "layer", "preset": p, "mixer": m, "tokens": t, "batch": 1, "ms": v, "peak_GiB": 1.0}
             for t in (1024, 4096) for p, m, v in (("dit-B/2", "attention", 4.0), ("zigma-B/2", "mamba", 2.0))]
    order = [{"suite": "order", "kind": k, "K": K, "tokens": 4096, "batch": 1, "ms": 80.0 * (K if k == "parallel" else 1),
              "peak_GiB": 4.0, "mixer": "mamba", "schedule": "sweep"} for k in ("zigzag", "parallel") for K in (1, 2)]
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in main))
    b.write_text("".join(json.dumps(r) + "\n" for r in layer) + json.dumps({**main[0], "ms": float("nan"), "oom": True}) + "\n")
    c.write_text("".join(json.dumps(r) + "\n" for r in order))
    assert len(mod.load([str(a), str(b)])) == len(main) + len(layer)  # the later file's row replaces the earlier
    assert mod.label(main[4]) == "ZigMa-B/2 mamba (zigzag-8)" and "no causal-conv1d" in mod.label(main[5])
    out = tmp_path / "speed.png"
    assert mod.main([str(a), str(b), "--order", str(c), "--out", str(out), "--title", "test"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
