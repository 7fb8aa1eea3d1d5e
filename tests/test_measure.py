"""CPU tests of workbench.measure: roofline arithmetic by hand, the ncu CSV parser, and the
"unavailable, never a number" paths.

tests/data/ncu_sample.csv was produced on the device (H100, ncu 2025.3.1) by the same command
run_ncu builds: naive attention, N=4096, 16/8 heads, head_dim 128, bf16, `--nvtx-include
attention/`. The lead may regenerate it on the device; the expected numbers below then change
with it. Other unit spellings and junk lines are tested on a small inline sample (SYNTHETIC).
"""
import dataclasses
import json
import stat
from pathlib import Path

import pytest
import torch

from workbench import measure
from workbench.measure import hbm, roofline
from workbench.measure.workloads import attention_workload
from workbench.model import ModelConfig

SAMPLE = Path(__file__).parent / "data" / "ncu_sample.csv"

# A tiny model whose numbers are easy to check by hand.
TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=100, tie_word_embeddings=True)


# --- roofline (modelled) ------------------------------------------------------------------------

def test_param_count_by_hand():
    p = roofline.count_params(TINY)
    # q: 64x(4*16)=4096, k and v: 64x(2*16)=2048 each, o: 64x64=4096 -> 12288 per layer
    assert p.attention_per_layer == 12288
    # gate, up, down: 3 x 64 x 128 = 24576 per layer
    assert p.mlp_per_layer == 24576
    # 2 RMSNorms of 64 per layer (2 layers) + final norm 64 = 320
    assert p.norms == 320
    # embedding 100 x 64 = 6400; tied, so no separate LM head
    assert (p.embedding, p.lm_head) == (6400, 0)
    # 2 x (12288 + 24576) + 320 + 6400 = 80448
    assert p.total == 80448
    # matmul weights per token: layers 73728 + LM head (the tied table) 6400
    assert p.layer_matmul == 73728 and p.matmul_per_token == 80128
    assert p.modelled


def test_qwen3_0_6b_param_count():
    p = roofline.count_params(ModelConfig.from_preset("qwen3-0.6b"))
    # Per layer: attn 1024*(2048+2*1024) + 2048*1024 = 6,291,456; mlp 3*1024*3072 = 9,437,184;
    # norms 2*1024 + q/k norm 2*128 = 2,304 -> 15,730,944; x28 + final norm 1024 + embedding
    # 151936*1024 = 155,582,464 -> 596,049,920 ("0.6B", 0.44B without embeddings).
    assert p.total == 596_049_920
    assert p.total - p.embedding == 440_467_456


def test_decode_step_by_hand():
    step = roofline.decode_step(TINY, context_lens=[10, 30], dtype_bytes=2)
    # weights: 80448 params x 2 bytes (tied table read whole as LM head)
    assert step.weight_bytes == 160_896
    # KV per token: 2 (K,V) x 2 layers x 2 kv heads x 16 x 2 bytes = 256 bytes
    assert roofline.kv_bytes_per_token(TINY, 2) == 256
    assert step.kv_read_bytes == 256 * 40        # sum of context lengths = 40
    assert step.kv_write_bytes == 256 * 2        # one new token per sequence
    assert step.bytes == 160_896 + 10_240 + 512
    # FLOPs: 2 x 80128 x 2 tokens = 320,512; attention 4 x 2 layers x 4 heads x 16 x 40 = 20,480
    assert step.flops == 320_512 + 20_480
    assert step.modelled and str(step).startswith("[modelled]")
    assert step.roofline_time_s is None          # no ceiling given: no time invented


def test_roofline_time_and_bound():
    step = roofline.decode_step(TINY, [10, 30], 2, bandwidth=1e6, peak_flops=1e7, source="test")
    # memory: 171,648 B / 1e6 B/s = 0.171648 s; compute: 340,992 / 1e7 = 0.0340992 s
    assert step.memory_time_s == pytest.approx(0.171648)
    assert step.compute_time_s == pytest.approx(0.0340992)
    assert step.roofline_time_s == pytest.approx(0.171648) and step.bound == "memory"
    assert step.tokens_per_s_ceiling == pytest.approx(2 / 0.171648)
    flipped = step.with_roofline(1e9, 1e6)
    assert flipped.bound == "compute" and flipped.roofline_time_s == pytest.approx(0.340992)


def test_prefill_step_by_hand():
    step = roofline.prefill_step(TINY, prompt_lens=[8], dtype_bytes=2)
    # 8 tokens through 73,728 layer weights: 2*73728*8 = 1,179,648; LM head for the last token
    # only: 2*100*64 = 12,800; causal attention: 8*9/2 = 36 (query, key) pairs ->
    # 4 x 2 x 4 x 16 x 36 = 18,432
    assert step.flops == 1_179_648 + 12_800 + 18_432
    # weights 160,896 + K/V written once (8 x 256) + read once by attention (8 x 256)
    assert step.bytes == 160_896 + 2_048 + 2_048


def test_untied_embedding_reads_only_gathered_rows():
    untied = dataclasses.replace(TINY, tie_word_embeddings=False)
    p = roofline.count_params(untied)
    assert p.total == 80448 + 6400               # a separate LM head
    # everything but the embedding table, plus 3 gathered rows of 64
    assert roofline.weight_bytes_read(untied, 2, tokens=3) == (80448 + 3 * 64) * 2


def test_shape_from_any_object():
    class Cfg:   # e.g. a workbench ModelConfig
        hidden_size, num_layers, num_heads, num_kv_heads, head_dim = 64, 2, 4, 2, 16
        intermediate_size, vocab_size, tie_word_embeddings, rms_norm_eps = 128, 100, True, 1e-6
        qk_norm, attention_bias = False, False
    assert roofline.count_params(Cfg()).total == 80448


def test_attention_traffic_by_hand():
    t = roofline.attention_traffic_model(4, heads=2, head_dim=8, dtype_bytes=2, kv_heads=1)
    # Q, O: 4x2x8x2 = 128 B; K, V: 4x1x8x2 = 64 B; one N x N matrix per head: 2x4x4x2 = 64 B
    assert t.flash_bytes == 128 + 64 + 64 + 128
    # naive: q 128 + o 128 + scores w,r + probs w,r (4 x 64) + mask pass (2 x 64 + 16 bool)
    # + GQA repeat (read K,V 64 each, write 128 each = 384) + matmuls read repeated K,V (2 x 128)
    assert t.naive_bytes == 128 + 128 + 256 + 144 + 384 + 256
    assert t.modelled and "[modelled]" in str(t)


def test_copy_bandwidth_needs_cuda():
    r = roofline.measure_copy_bandwidth("cpu")
    assert not r.available and "no CUDA" in r.reason and r.bandwidth is None
    with pytest.raises(ValueError):
        roofline.measure_copy_bandwidth("cpu", nbytes=2**20)


# --- batch-1 GEMVs -------------------------------------------------------------------------------

def test_gemv_shapes_by_hand():
    from workbench.measure.gemv import gemv_shapes
    # TINY: q = 4 x 16 = 64, kv = 2 x 16 = 32 -> qkv 64 + 2 x 32 = 128; gate_up 2 x 128
    assert gemv_shapes(TINY) == {"qkv_proj": (64, 128), "o_proj": (64, 64), "gate_up_proj": (64, 256),
                                 "down_proj": (128, 64), "lm_head": (64, 100)}
    qwen = gemv_shapes(ModelConfig.from_preset("qwen3-0.6b"))
    assert qwen["qkv_proj"] == (1024, 4096) and qwen["gate_up_proj"] == (1024, 6144)
    assert qwen["lm_head"] == (1024, 151_936)


def test_gemv_without_cuda_says_why(monkeypatch):
    from workbench.measure.gemv import measure_gemvs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    records = measure_gemvs(TINY)
    assert len(records) == 15 and not any(r.available for r in records)   # 5 shapes x 3 impls
    assert all("no CUDA" in r.reason and r.us_per_call is None for r in records)
    with pytest.raises(ValueError, match="cublas"):
        measure_gemvs(TINY, ["cutlass"])


# --- ncu CSV parser --------------------------------------------------------------------------------

def test_parse_device_sample():
    kernels = hbm.parse_ncu_csv(SAMPLE.read_text())    # "==PROF==" lines before the header
    assert [k.id for k in kernels] == list(range(7))
    k = {k.id: k for k in kernels}
    # thousands separators, base units ("byte", "ns" -> seconds)
    assert k[3].metrics["dram__bytes_write.sum"] == 511_739_136        # q @ k^T writes the scores
    assert k[5].metrics["gpu__time_duration.sum"] == pytest.approx(1_218_912e-9)
    assert k[5].units["gpu__time_duration.sum"] == "second"
    assert k[0].name == "at::elementwise_kernel[direct_copy_kernel_cuda]"   # repeat_interleave
    assert k[2].name == "at::vectorized_elementwise_kernel[MulFunctor]"      # q * scale
    assert k[4].name == "at::elementwise_kernel[masked_fill_kernel]"
    assert k[5].name == "at::cunn_SoftMaxForwardReg"
    assert {i: k[i].family for i in k} == {0: "elementwise", 1: "elementwise", 2: "elementwise",
                                           3: "matmul", 4: "elementwise", 5: "attention",
                                           6: "matmul"}


def test_device_sample_totals_and_families():
    r = hbm.HbmRecord.from_kernels(hbm.parse_ncu_csv(SAMPLE.read_text()))
    # read: 8,411,648 x 2 + 16,783,616 + 34,960,896 + 731,951,360 + 536,887,808 + 562,824,704
    assert r.dram_read_bytes == 1_900_231_680
    # write: 559,616 + 7,680 + 134,912 + 511,739,136 + 515,047,680 + 518,858,752 + 10,527,232
    assert r.dram_write_bytes == 1_556_875_008
    assert r.dram_bytes == 1_900_231_680 + 1_556_875_008
    # time: 23,616 + 23,776 + 11,808 + 220,512 + 852,416 + 1,218,912 + 209,952 ns
    assert r.gpu_time_s == pytest.approx(2_560_992e-9)
    assert r.by_family["matmul"]["kernels"] == 2
    assert r.by_family["matmul"]["dram__bytes_read.sum"] == 34_960_896 + 562_824_704
    assert r.by_family["attention"]["dram__bytes_read.sum"] == 536_887_808
    assert r.by_family["elementwise"]["kernels"] == 4


HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream",'
          '"Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit",'
          '"Metric Value"')


def _row(kid, kernel, metric, unit, value):
    cells = [kid, 7, "python3", "host", kernel, 1, 7, "(128, 1, 1)", "(64, 1, 1)", 0, "9.0",
             "Command line profiler metrics", metric, unit, value]
    return ",".join(f'"{c}"' for c in cells)


SYNTHETIC = "\n".join([
    "==PROF== Connected to process 7 (/usr/bin/python3)",
    "the application's own print, before the header",
    "==WARNING== a warning line, with, commas",
    HEADER,
    _row(0, "void (anonymous namespace)::softmax_kernel<float>(T *)", "dram__bytes_read.sum",
         "Mbyte", "1.5"),
    _row(0, "void (anonymous namespace)::softmax_kernel<float>(T *)", "gpu__time_duration.sum",
         "usecond", "2.5"),
    "==PROF== a stray line after the header",
    _row(1, "nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "dram__bytes_read.sum", "Kbyte", "1,024"),
    _row(1, "nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "gpu__time_duration.sum", "msecond", "0.125"),
    _row(2, "triton_red_fused_rms_norm_0", "dram__bytes_read.sum", "Gbyte", "0.5"),
    _row(2, "triton_red_fused_rms_norm_0", "gpu__time_duration.sum", "nsecond", "n/a"),
])


def test_parse_units_and_junk():
    k = {k.id: k for k in hbm.parse_ncu_csv(SYNTHETIC)}
    assert sorted(k) == [0, 1, 2]
    assert k[0].metrics == pytest.approx({"dram__bytes_read.sum": 1.5e6,
                                          "gpu__time_duration.sum": 2.5e-6})
    assert k[1].metrics["dram__bytes_read.sum"] == 1_024_000           # "1,024" Kbyte
    assert k[1].metrics["gpu__time_duration.sum"] == pytest.approx(125e-6)
    assert k[2].metrics == {"dram__bytes_read.sum": 0.5e9}             # "n/a" is no number
    assert (k[0].name, k[0].family) == ("softmax_kernel", "attention")
    assert (k[1].family, k[2].family) == ("matmul", "norm")
    r = hbm.HbmRecord.from_kernels(list(k.values()))
    assert r.dram_read_bytes == pytest.approx(1.5e6 + 1_024_000 + 0.5e9)
    assert r.dram_write_bytes is None and r.dram_bytes is None          # not collected: no number


def test_parse_without_header_is_empty():
    assert hbm.parse_ncu_csv("==PROF== Connected\n==WARNING== No kernels were profiled.\n") == []


def test_classify_kernel_names():
    assert hbm.classify_kernel("void cutlass::Kernel2<cutlass_80_tensorop_bf16_gemm>(T1)") == "matmul"
    assert hbm.classify_kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert hbm.classify_kernel("_gemv_kernel") == "matmul"   # the decode GEMV (decode_gemv switch)
    assert hbm.classify_kernel("void pytorch_flash::flash_fwd_kernel<Traits>(Params)") == "attention"
    assert hbm.classify_kernel("_rms_norm_kernel") == "norm"
    assert hbm.classify_kernel("triton_poi_fused_add_0") == "elementwise"


# --- unavailable paths ----------------------------------------------------------------------------

@pytest.fixture
def no_ncu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))              # an empty folder: no ncu on PATH
    monkeypatch.delenv("WORKBENCH_NCU", raising=False)
    monkeypatch.setattr(hbm, "NCU_FALLBACK_DIRS", [])


def test_ncu_missing(no_ncu):
    path, reason = hbm.ncu_status()
    assert path is None and "command not found" in reason
    r = hbm.run_ncu(["true"])
    assert not r.available and "command not found" in r.reason
    assert r.dram_read_bytes is None and r.kernels == [] and r.totals == {}
    r = hbm.measure_hbm_python(attention_workload, {"n": 128})
    assert not r.available and r.workload["result"] is None


def _fake_ncu(tmp_path, body: str) -> Path:
    script = tmp_path / "ncu"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_fake_ncu_output_is_parsed(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_NCU", str(_fake_ncu(
        tmp_path, f'[ "$1" = "--version" ] && echo "Version 0.0 (fake)" && exit 0\ncat "{SAMPLE}"\n')))
    r = hbm.run_ncu(["python", "-c", "pass"], nvtx_include="attention/")
    assert r.available and len(r.kernels) == 7
    assert "--nvtx-include" in r.command and "attention/" in r.command
    assert r.dram_read_bytes == 1_900_231_680


def test_warm_l2_keeps_the_cache_and_says_so(monkeypatch, tmp_path, capsys):
    """`measure hbm --warm-l2` (what l2_prefetch changes: bytes a kernel finds in L2) runs ncu with
    --cache-control none and labels the record and the row so; without it, ncu's default (flushed)
    and the default note. The engine fields reach the workload."""
    import json

    from workbench.__main__ import main
    seen = tmp_path / "args.txt"
    monkeypatch.setenv("WORKBENCH_NCU", str(_fake_ncu(
        tmp_path, f'[ "$1" = "--version" ] && echo "Version 0.0 (fake)" && exit 0\necho "$@" >> "{seen}"\ncat "{SAMPLE}"\n')))
    warm = hbm.run_ncu(["python", "-c", "pass"], warm_l2=True)
    cold = hbm.run_ncu(["python", "-c", "pass"])
    assert warm.notes == hbm.WARM_L2_NOTES and cold.notes == hbm.NCU_NOTES
    out = tmp_path / "hbm.json"
    assert main(["measure", "hbm", "--preset", "tiny", "--workdir", str(tmp_path), "--settings", "decode_kernels",
                 "--engine", "l2_prefetch=true", "--warm-l2", "--json", str(out)]) == 0
    calls = seen.read_text().splitlines()
    assert "--cache-control none" not in calls[1] and "--cache-control none --replay-mode application" in calls[-1]
    spec = json.loads(calls[-1][calls[-1].index("{"):calls[-1].rindex("}") + 1])
    assert spec["kwargs"]["engine"] == {"l2_prefetch": True}
    row = json.loads(out.read_text())[0]
    assert row["l2"] == "kept between kernels" and row["setting"] == "decode_kernels l2_prefetch=True"
    assert len(row["per_kernel"]) == 7
    capsys.readouterr()
    assert main(["measure", "hbm", "--preset", "tiny", "--workdir", str(tmp_path), "--settings", "bogus"]) != 0
    assert "--settings: bogus unknown" in capsys.readouterr().err
    assert main(["measure", "hbm", "--preset", "tiny", "--workdir", str(tmp_path), "--engine", "l2_prefetch=true"]) != 0
    assert "use --settings decode_kernels" in capsys.readouterr().err


def test_fake_ncu_permission_error(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_NCU", str(_fake_ncu(tmp_path, (
        '[ "$1" = "--version" ] && exit 0\n'
        'echo "==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA '
        'GPU Performance Counters on the target device 0."\nexit 1\n'))))
    r = hbm.run_ncu(["python", "-c", "pass"])
    assert not r.available and "ERR_NVGPUCTRPERM" in r.reason and "root" in r.reason
    assert r.dram_read_bytes is None


def test_fake_ncu_no_kernels(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_NCU", str(_fake_ncu(
        tmp_path, 'echo "==WARNING== No kernels were profiled."\nexit 0\n')))
    r = hbm.run_ncu(["python", "-c", "pass"], nvtx_include="attention/")
    assert not r.available and "no kernels" in r.reason


def test_short_gaps_between_kernels_by_hand():
    from workbench.measure.launches import short_gaps_us
    # kernels at 0-10, 11-20 (gap 1), then the host's turn (30 us), 50-60, 62-70 (gap 2)
    assert short_gaps_us([(50, 60), (0, 10), (62, 70), (11, 20)]) == 3
    assert short_gaps_us([(0, 10), (5, 12), (13, 14)]) == 1   # overlap: no negative gap
    assert short_gaps_us([]) == 0


def test_launches_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = measure.count_launches(lambda: torch.ones(4) + 1, label="eager")
    assert not r.available and r.reason == "no CUDA: kernel launches need a GPU"
    assert r.kernels == 0 and "unavailable" in str(r)


# --- workloads and the worker on CPU -------------------------------------------------------------

def test_naive_attention_matches_sdpa_on_cpu():
    from workbench.measure import workloads
    torch.manual_seed(0)
    q, k, v = torch.randn(12, 4, 8), torch.randn(12, 2, 8), torch.randn(12, 2, 8)
    naive = workloads.make_attention("naive", 12, "cpu")(q, k, v)
    sdpa = workloads.make_attention("sdpa", 12, "cpu")(q, k, v)
    torch.testing.assert_close(naive, sdpa, atol=1e-5, rtol=1e-5)
    # and both are causal attention: query 0 sees key 0 alone, so it returns v[0] (per GQA group)
    torch.testing.assert_close(naive[0], v[0].repeat_interleave(2, dim=0), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n, block_size", [(12, 4), (12, 5)])   # a view, and a zero-padded last block
def test_attention_experiment_calls_the_engines_backends(monkeypatch, n, block_size):
    from workbench.attention.naive import NaiveAttention
    from workbench.attention.sdpa import SdpaAttention
    from workbench.measure import workloads
    calls = []
    for cls in (NaiveAttention, SdpaAttention):
        original = cls.__call__

        def counting(self, q, k_cache, v_cache, meta, scale, original=original):
            calls.append((self.name, tuple(k_cache.shape), meta.max_seqlen_k))
            return original(self, q, k_cache, v_cache, meta, scale)
        monkeypatch.setattr(cls, "__call__", counting)
    torch.manual_seed(0)
    q, k, v = torch.randn(n, 4, 8), torch.randn(n, 2, 8), torch.randn(n, 2, 8)
    outs = {impl: workloads.make_attention(impl, n, "cpu", block_size)(q, k, v) for impl in ("naive", "sdpa")}
    blocks = -(-n // block_size)
    assert calls == [(impl, (blocks, block_size, 2, 8), n) for impl in ("naive", "sdpa")]
    reference = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True).transpose(0, 1)
    for out in outs.values():
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_worker_runs_a_workload(tmp_path):
    from workbench.measure import hbm_worker
    out = tmp_path / "r.json"
    spec = {**hbm.workload_address(attention_workload),
            "kwargs": {"impl": "naive", "n": 16, "heads": 4, "kv_heads": 2, "head_dim": 8,
                       "device": "cpu", "dtype": "float32"}, "out": str(out)}
    assert hbm_worker.main([json.dumps(spec)]) == 0
    result = json.loads(out.read_text())
    assert result["out_shape"] == [16, 4, 8] and "time_s" not in result


# --- records ----------------------------------------------------------------------------------------

def test_records_round_trip_json(no_ncu):
    records = [
        roofline.count_params(TINY),
        roofline.decode_step(TINY, [10, 30], bandwidth=3e12, peak_flops=989e12, source="test"),
        roofline.attention_traffic_model(1024, 16, 128, kv_heads=8),
        roofline.measure_copy_bandwidth("cpu"),
        hbm.HbmRecord.from_kernels(hbm.parse_ncu_csv(SAMPLE.read_text()), command=["x"]),
        hbm.run_ncu(["true"]),
        measure.LaunchRecord("eager", False, "no CUDA: kernel launches need a GPU"),
    ]
    for r in records:
        d = r.to_dict()
        assert json.loads(json.dumps(d)) == d
    table = measure.format_table(records[:3])
    assert "modelled" in table and len(table.splitlines()) == 5


def test_format_table_marks_measured_and_unavailable():
    rows = [measure.LaunchRecord("eager", False, "no CUDA: kernel launches need a GPU")]
    table = measure.format_table(rows, columns=["label", "available", "reason"])
    assert "no CUDA" in table and "measured" in table


def test_hbm_workloads_are_passed_as_functions():
    assert hbm.workload_address(attention_workload) == {"module": "workbench.measure.workloads",
                                                         "name": "attention_workload"}
    for bad in ("workbench.measure.workloads.attention_workload", lambda: None):
        with pytest.raises(ValueError, match="top level of an importable module"):
            hbm.workload_address(bad)
