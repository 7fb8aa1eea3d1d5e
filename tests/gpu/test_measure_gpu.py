"""GPU tests of workbench.measure (run on the device: `pytest -m gpu tests/gpu`).

They check the measurements against what must be true: eager PyTorch launches a kernel per op,
a CUDA graph replays the same kernels with one launch call, and FlashAttention moves far fewer
DRAM bytes than attention that materializes the N x N scores.
"""
import importlib.util

import pytest
import torch

from workbench import measure
from workbench.measure.workloads import attention_workload

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

OPS = 20   # iterations of the loop below: 2 element-wise kernels each


def small_loop(x):
    for _ in range(OPS):
        x = x * 1.0001 + 0.5
    return x


def test_eager_loop_launches_kernels():
    x = torch.randn(4096, device="cuda")
    r = measure.count_launches(lambda: small_loop(x), warmup=2, steps=3, label="eager")
    print(r, r.launch_calls_by_api, r.top_kernels[:3])
    assert r.available, r.reason
    assert r.kernels_per_step >= 2 * OPS
    assert r.launch_calls_per_step >= 2 * OPS and r.graph_launches == 0


def test_graph_replay_collapses_launch_calls():
    x = torch.randn(4096, device="cuda")
    eager = measure.count_launches(lambda: small_loop(x), warmup=2, steps=3, label="eager")
    side = torch.cuda.Stream()                  # warm up on a side stream before capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        small_loop(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        small_loop(x)
    graphed = measure.count_launches(graph.replay, warmup=2, steps=3, label="graph replay")
    print(eager, "\n", graphed, graphed.launch_calls_by_api)
    assert graphed.available, graphed.reason
    assert graphed.launch_calls_per_step + graphed.graph_launches_per_step <= 2
    assert graphed.graph_launches_per_step >= 1
    assert graphed.kernels_per_step >= eager.kernels_per_step   # the GPU still runs them all


def test_copy_bandwidth_is_measured():
    r = measure.measure_copy_bandwidth("cuda")
    print(r)
    assert r.available, r.reason
    assert 1e11 < r.bandwidth < 2e13             # between 0.1 and 20 TB/s: a real HBM number


def _ncu_or_skip():
    path, reason = measure.ncu_status()
    if path is None:
        pytest.skip(reason)


def _profile(impl: str, n: int):
    r = measure.measure_hbm_python(attention_workload,
                                   {"impl": impl, "n": n}, nvtx_include="attention/")
    if not r.available and "ERR_NVGPUCTRPERM" in r.reason:
        pytest.skip(r.reason)
    assert r.available, r.reason
    return r


def test_flash_moves_fewer_dram_bytes_than_naive():
    _ncu_or_skip()
    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn-4 not installed (bash .wheels/install.sh)")
    n = 4096
    naive, flash = _profile("naive", n), _profile("flash", n)
    model = measure.attention_traffic_model(n, 16, 128, kv_heads=8)
    print(measure.format_table(naive.kernels, columns=["name", "family", "metrics"]))
    print(f"naive measured {naive.dram_bytes / 1e6:,.1f} MB, {model}")
    print(f"flash measured {flash.dram_bytes / 1e6:,.1f} MB")
    assert flash.dram_bytes < naive.dram_bytes
    # the naive run materializes the scores: at least one N x N bf16 matrix per head written
    assert naive.dram_write_bytes > 16 * n * n * 2


def test_fused_sdpa_moves_fewer_dram_bytes_than_naive():
    """The same lesson without flash-attn-4: torch SDPA's fused kernel (cuDNN or FA2 inside
    torch) keeps the scores on-chip too."""
    _ncu_or_skip()
    n = 4096
    naive, sdpa = _profile("naive", n), _profile("sdpa", n)
    print(f"naive {naive.dram_bytes / 1e6:,.1f} MB, sdpa {sdpa.dram_bytes / 1e6:,.1f} MB")
    print(measure.format_table(sdpa.kernels, columns=["name", "family"]))
    assert sdpa.dram_bytes < naive.dram_bytes / 10


def test_gemv_bandwidth_is_measured_and_below_twice_the_copy():
    """Each GEMV is timed; its bandwidth is real (positive) and not above 2x the copy bandwidth
    (the weights do not fit in L2, so a much higher figure would mean a timing bug)."""
    from workbench.measure.gemv import measure_gemvs
    from workbench.model import ModelConfig
    copy = measure.measure_copy_bandwidth()
    records = measure_gemvs(ModelConfig.from_preset("qwen3-0.6b"), ["cublas"], copy_bandwidth=copy.bandwidth)
    for r in records:
        print(r.name, r.us_per_call, r.of_copy_bandwidth)
        assert r.available, r.reason
        assert 0 < r.of_copy_bandwidth < 2


def test_single_stream_bench_rows_look_inside_a_step(tmp_path):
    """bench_engine's step columns on a GPU: graphs make one launch of many kernels a step, the
    GPU is busy part of the step, and the TPOT cannot beat the bandwidth floor by much."""
    from workbench import Optimizations
    from workbench.measure.bench import bench_engine, make_workload
    from workbench.model import make_checkpoint
    path = make_checkpoint(tmp_path, "qwen3-0.6b", seed=0, dtype="bfloat16")
    load = make_workload("single", 151936, new_tokens=64)
    r = bench_engine(path, Optimizations(attention="flash", fused_kernels=True, cuda_graphs=True), load, repeats=1)
    print(r.kernels_per_step, r.gpu_kernel_us_per_step, r.of_copy_bandwidth)
    assert r.kernels_per_step > 28 * 5   # Qwen3-0.6B: 28 layers of several kernels each
    assert 0 < r.gpu_kernel_us_per_step < r.tpot_ms * 1e3 * 1.5
    assert 0.02 < r.of_copy_bandwidth < 1.2   # a step cannot read its weights faster than a copy


def test_a_live_decode_step_folds_into_its_layers(tmp_path):
    """layer_time.profile_layers on the engine all on: the step folds into the model's 28 layers
    (fold_layers refuses otherwise) of four decode GEMVs each, what the layers add is most of the
    GPU's step (the host's wait before the embedding aside), and a layer's kernels add less than
    their spans sum to (under PDL each starts under the one before)."""
    from workbench import LLM, Optimizations
    from workbench.measure.layer_time import layer_gemv_bytes, profile_layers
    from workbench.model import ModelConfig, random_checkpoint
    path = random_checkpoint("qwen3-0.6b", tmp_path / "q06b")
    with LLM(path, opts=Optimizations.all_on(), max_num_seqs=1, max_model_len=512) as llm:
        fold = profile_layers(llm, layers=28, prompt_len=128)
    print(fold.names, [round(us, 2) for us in fold.added_us], round(fold.median_layer_us, 2), round(fold.step_us, 1))
    assert len(layer_gemv_bytes(fold, ModelConfig.from_hf(path))) == 4   # all on: four decode GEMVs a layer
    assert sum(fold.layer_us) > 0.5 * (fold.step_us - sum(us for _, us in fold.before))   # most of the GPU's step
    assert sum(fold.added_us) < sum(fold.span_us)


def test_the_phase_timer_stamps_every_step_in_order():
    """persistent-ws's phase timer (measure/streamed_chain.py) on a short chain: every stamp written,
    each program's five stamps a step in order on both clocks, the chain's result still right, and
    the folded phases positive and adding up to no more than a step (Hopper only)."""
    from workbench.measure import boundaries, phase_timer, streamed_chain
    why = streamed_chain.why_not(torch.device("cuda"))
    if why:
        pytest.skip(why)
    programs, stages, hidden = 128, 16, 1024
    weights = boundaries.gemv_weights(stages, hidden, "cuda")
    vec = torch.zeros(2, hidden, device="cuda")
    vec[0] = torch.randn(hidden, device="cuda")
    start = vec[0].clone()
    count = torch.zeros(1, dtype=torch.int32, device="cuda")
    stamps = torch.zeros(programs, stages, 2, streamed_chain.PHASES, dtype=torch.int64, device="cuda")
    streamed_chain.streamed_chain("persistent-ws", weights, vec, count, stages, programs)(stamps)
    torch.cuda.synchronize()
    assert boundaries.rel_err(vec[0], boundaries.reference_gemv(weights, start)) < 1e-3
    stamps = stamps.cpu()
    assert (stamps != 0).all(), "every program stamps every phase of every step"
    assert (stamps.diff(dim=-1) >= 0).all(), "a step's stamps in order, on both clocks"
    assert (stamps[:, 1:, :, 0] >= stamps[:, :-1, :, -1]).all(), "a step starts after the one before ends"
    phases = phase_timer.fold(stamps, phase_timer.POLL_POINTS, seen="waited", published="arrival")
    print(phases)
    parts = sum(phases[point] for point in phase_timer.POLL_POINTS[2:])
    assert all(v > 0 for k, v in phases.items() if k != "timer_step_us") and parts <= phases["step"]


def test_the_phase_timer_stamps_the_pdl_chain_in_a_graph():
    """The kernels+pdl chain's phase timer through boundaries.phases (a CUDA graph, as the probe times
    it): the phases positive, the hop and the work after the wait within a step."""
    from workbench.measure import boundaries
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs Hopper or newer")
    programs, stages, hidden = 256, 16, 1024
    weights = boundaries.gemv_weights(stages, hidden, "cuda")
    vec = torch.zeros(2, hidden, device="cuda")
    vec[0] = torch.randn(hidden, device="cuda")
    count = torch.zeros(1, dtype=torch.int32, device="cuda")
    phases = boundaries.phases("kernels+pdl", boundaries.gemv_chain("kernels+pdl", weights, vec, count, stages, programs),
                               programs, stages)
    print(phases)
    assert phases["hop"] > 0 and phases["x read, multiplied, stored"] > 0
    assert phases["hop"] + phases["x read, multiplied, stored"] <= 1.5 * phases["step"]
