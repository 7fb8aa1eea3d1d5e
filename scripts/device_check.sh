#!/usr/bin/env bash
# On the GPU machine (no internet), from the repo root:
#   bash scripts/device_check.sh [tests check check-quick check-compile stack stack-single throughput multistep(-single|-throughput) nanovllm-ms nanovllm-fs nanovllm-16k nanovllm-async nanovllm-arrivals nanovllm-plain-prefill nanovllm-eager breakdown-batch breakdown-prefill breakdown-prefill-batch prefill-host rounds-tests async-tests l2-tests peers peers-batch attention breakdown hbm hbm-batch hbm-l2(-off|-on) launches gemv decode-gemv gemv-tests gemv-sweep gemv-parity decode-ab sample-tests sample-ab gemv-bench prefill-tests gsample-tests ws-tests boundary-probe candidate-kernels candidate-engine fdec-tests fused-decode decode-attn dattn-(tests|parity|micro|batch|bench|last|prefetch) pdl(-tests|-bench) sampling timeline labs dashboard-gpu tp notebooks]
# (no argument: tests check stack throughput attention hbm launches -- more than one 10-minute call;
#  split the steps over calls, the slow ones are check and stack)
# Installs the carried wheels (.wheels: flash-attn-4, from ../shared/device/fetch-wheels.sh;
# .jupyter-wheels: the notebook stack, if carried) offline, then runs the named steps.
# Results go to $OUT (the device tool's output folder) or ./runs/device. Each step stops after
# STEP_TIMEOUT seconds (default 540); its log so far stays in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PATH=$PATH:/usr/local/cuda/bin
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4-cache
PY=${PY:-python3}

if [ -f .wheels/install.sh ] && ! $PY -c "import flash_attn.cute" 2>/dev/null; then
  bash .wheels/install.sh || echo "flash-attn-4 install failed: flash runs will be refused"
fi
if [ -d .jupyter-wheels ] && ! $PY -c "import nbclient, ipywidgets" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps .jupyter-wheels/*.whl || echo "jupyter wheels failed"
fi
$PY -m workbench doctor

STEP_TIMEOUT=${STEP_TIMEOUT:-540}   # seconds per step: one slow step must not eat a whole device call
run() {  # run one step, keep going on failure, log to $OUT
  echo "=== $*"; local name=$1; shift
  timeout -k 15 "$STEP_TIMEOUT" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -E "UserWarning|aux_data|warnings.warn" | tail -60
}
W="$PY -m workbench"; P="--preset qwen3-0.6b --workdir /tmp"
steps=${*-tests check stack throughput attention hbm launches}   # an empty "" argument: install only
do_step() {
  case $1 in
    # TP tests skip below 2 GPUs; the 17-setting parity test is the `check` step's job (minutes)
    tests)      run gpu-tests $PY -m pytest -q tests/gpu -p no:cacheprovider -k "not every_switch_combination" ;;
    check)      run check $W check $P --json "$OUT/parity.json" ;;
    check-quick) run check $W check --quick --prompts 16 --max-tokens 32 $P --json "$OUT/parity.json" ;;
    check-compile) run check-compile $W check $P --settings naive+compile,naive+graphs+compile,flash+compile,flash+graphs+compile,flash+fused+graphs+compile --json "$OUT/parity-compile.json" ;;
    stack)      run stack $W bench stack --workloads single,batch $P --repeats 1 --json "$OUT/stack.json" ;;
    # the single-stream ladder alone (~6-7 min on an H200: give it STEP_TIMEOUT >= 480); its JSON
    # grows row by row, so a run cut short still leaves what it measured
    stack-single) run stack-single $W bench stack --workloads single $P --repeats 1 --new-tokens "${STACK_TOKENS:-512}" --json "$OUT/stack-single.json" ;;
    throughput) run throughput $W bench throughput $P --settings all_on --repeats 1 --peers --json "$OUT/throughput.json" ;;
    multistep)  do_step multistep-single; do_step multistep-throughput ;;
    multistep-single) run multistep $W bench single $P --settings all_on --new-tokens 512 --repeats 1 --decode-steps 1,4,8 --json "$OUT/multistep-single.json" ;;
    # session 8: nano-vLLM's workload (temperature 0.6) at 1 and 8 decode steps a round, now that
    # the sampler no longer syncs each step; then where a 256-sequence decode step goes
    nanovllm-ms) run nanovllm-ms $W bench throughput $P --workload nanovllm --settings all_on --repeats 1 --decode-steps 1,8 --json "$OUT/nanovllm-multistep.json" ;;
    # session 10: the fused sampler on nano-vLLM's workload (temperature 0.6, 256 sequences), beside
    # the eager sampler, 8 decode steps a round (run after sample-tests has passed)
    nanovllm-fs) run nanovllm-fs $W bench throughput $P --workload nanovllm --settings all_on --repeats 1 --decode-steps 8 --sampler fused --json "$OUT/nanovllm-fused-sampling.json" ;;
    # nano-vLLM's own engine limit (its Config: max_num_batched_tokens=16384): half the prefill steps
    nanovllm-16k) run nanovllm-16k $W bench throughput $P --workload nanovllm --settings all_on --repeats 1 --decode-steps 8 --max-batched-tokens 16384 --json "$OUT/nanovllm-16k.json" ;;
    # session 13: the next round launched before the running one is read (EngineConfig.async_rounds),
    # against the same engine reading each round first, one run each (16,384 tokens a step: the
    # workload's own since session 13); then with the prefill steps through the plain forward
    nanovllm-async) run nanovllm-async $W bench throughput $P --workload nanovllm --settings all_on --repeats 1 --decode-steps 8 --async-rounds off,on --json "$OUT/nanovllm-async.json" ;;
    # session 13: what async rounds cost a request that arrives while rounds run (TTFT from its
    # arrival, median and p90), 30 requests a second (~2/3 of what the engine serves at once)
    nanovllm-arrivals) run nanovllm-arrivals $W bench throughput $P --workload nanovllm --settings all_on --repeats 1 --decode-steps 8 --async-rounds off,on --arrival-rate "${ARRIVAL_RATE:-30}" --json "$OUT/nanovllm-arrivals.json" ;;
    nanovllm-plain-prefill) run nanovllm-plain-prefill $W bench throughput $P --workload nanovllm --settings all_on --repeats 1 --decode-steps 8 --async-rounds on --engine compile_prefill=false --json "$OUT/nanovllm-plain-prefill.json" ;;
    nanovllm-eager) run nanovllm-eager $W bench throughput $P --workload nanovllm --settings all_on --repeats 1 --decode-steps 8 --sampler eager --json "$OUT/nanovllm-eager-sampling.json" ;;
    breakdown-batch) run breakdown-batch $W measure breakdown $P --batch 256 --settings flash+fused+graphs,flash+fused+gemv+fdec+dattn+graphs+compile+pdl --json "$OUT/breakdown-batch.json" --figure "$OUT/breakdown-batch.png" ;;
    # session 10: where the time to the first token goes (a 128-token prompt's prefill step was
    # 20-50 ms at every rung of the ladder, against ~1 ms of FLOPs and bytes)
    # a batch prefill step of nano-vLLM's size (16 x 512 = 8,192 tokens, one chunk): its kernels
    breakdown-prefill-batch) run breakdown-prefill-batch $W measure breakdown $P --phase prefill --batch 16 --prompt-len 512 --settings flash+fused,flash+fused+gemv+fdec+dattn+graphs+compile+pdl --json "$OUT/breakdown-prefill-batch.json" --figure "$OUT/breakdown-prefill-batch.png" ;;
    # which Python functions spend a prefill step's host time (cProfile; flash+fused and all on)
    prefill-host) run prefill-host $PY scripts/profile_prefill_host.py "$OUT" $P ;;
    breakdown-prefill) run breakdown-prefill $W measure breakdown $P --phase prefill --prompt-len 128 --settings naive,flash+fused,flash+fused+graphs,flash+fused+gemv+fdec+dattn+graphs+compile+pdl --json "$OUT/breakdown-prefill.json" --figure "$OUT/breakdown-prefill.png" ;;
    # session 25: graph_sampling (the sampler recorded in the decode graphs) against the sampler
    # after the replay, and the graph, round and async tests it touches
    ws-tests) run ws-tests $PY -m pytest -q -s tests/gpu/test_measure_gpu.py -p no:cacheprovider -k phase_timer ;;
    gsample-tests) run gsample-tests $PY -m pytest -q -s tests/gpu/test_graph_sampling_gpu.py tests/gpu/test_async_rounds_gpu.py tests/gpu/test_engine_gpu.py -p no:cacheprovider -k "graph_sampling or graph_rounds or graph_replay or async" ;;
    rounds-tests) run rounds-tests $PY -m pytest -q -s tests/gpu/test_engine_gpu.py -p no:cacheprovider -k graph_rounds ;;
    # session 14: l2_prefetch's GPU tests (values bit for bit, eager and replayed, PDL off and on;
    # the engine's tokens); its A/B is decode-ab's variant l2-prefetch
    l2-tests)   run l2-tests $PY -m pytest -q -s tests/gpu/test_gemv_gpu.py -p no:cacheprovider -k l2_prefetch ;;
    # session 13: async_rounds against rounds read one at a time, and multi-step/graph rounds again
    async-tests) run async-tests $PY -m pytest -q -s tests/gpu/test_async_rounds_gpu.py tests/gpu/test_engine_gpu.py -p no:cacheprovider -k "async or graph_rounds or multi_step" ;;
    dattn-prefetch) run dattn-prefetch-tests $PY -m pytest -q -s tests/gpu/test_decode_attention_gpu.py -p no:cacheprovider -k prefetch ;;
    multistep-throughput) run multistep-throughput $W bench throughput $P --settings all_on --repeats 1 --decode-steps 1,8 --json "$OUT/multistep-throughput.json" ;;
    peers)      run peers $W bench single $P --new-tokens 256 --repeats 1 --peers --json "$OUT/peers-single.json" ;;
    # HF's generate_batch beside all off and all on, 64 sequences x 128 new tokens (~2 min)
    peers-batch) run peers-batch $W bench batch $P --num-seqs 64 --new-tokens 128 --repeats 1 --peers --json "$OUT/peers-batch.json" ;;
    attention)  run attention $W measure attention-traffic --n "${ATTN_N:-512,1024,2048,4096,8192}" --json "$OUT/attention.json" ;;
    timeline)   run timeline $W measure breakdown $P --settings naive,flash+fused,flash+fused+gemv+fdec+dattn+graphs+compile+pdl --json "$OUT/breakdown-timeline.json" --timeline-figure "$OUT/timeline.png" ;;
    breakdown)  run breakdown $W measure breakdown $P --json "$OUT/breakdown.json" --figure "$OUT/breakdown.png" --timeline-figure "$OUT/timeline.png" ;;
    labs)       run labs $PY scripts/lab_results.py --out "$OUT/labs.json" ;;
    dashboard-gpu) run dashboard-gpu env WORKBENCH_SAVE_FIGURES="$OUT" $PY -m pytest -q tests/gpu/test_dashboard_gpu.py -p no:cacheprovider ;;
    hbm)        run hbm $W measure hbm $P --json "$OUT/hbm.json" ;;
    # session 14: where l2_prefetch moves the DRAM bytes (L2 kept between kernels: a GEMV's bytes are
    # what it missed; with the switch, each GEMV reads the next one's weights and its own from L2)
    # (two steps, each its own STEP_TIMEOUT: give one call both with STEP_TIMEOUT <= 280)
    hbm-l2)     do_step hbm-l2-off; do_step hbm-l2-on ;;
    hbm-l2-off) run hbm-l2-off $W measure hbm $P --settings decode_kernels --context 512 --warm-l2 --json "$OUT/hbm-l2-off.json" ;;
    hbm-l2-on)  run hbm-l2-on $W measure hbm $P --settings decode_kernels --context 512 --warm-l2 --engine l2_prefetch=true --json "$OUT/hbm-l2-on.json" ;;
    hbm-batch)  run hbm-batch $W measure hbm $P --settings fast --batch 256 --context 600 --json "$OUT/hbm-batch.json" ;;
    launches)   run launches $W measure launches $P --json "$OUT/launches.json" ;;
    gemv)       run gemv $W measure gemv $P --json "$OUT/gemv.json" ;;
    # the decode GEMV (decode_gemv switch), session 5: one call of ~8 min for the first three
    decode-gemv) do_step gemv-tests; do_step gemv-sweep; do_step gemv ;;
    gemv-tests) run gemv-tests $PY -m pytest -q tests/gpu/test_gemv_gpu.py -p no:cacheprovider -k "not engine_parity" ;;
    gemv-sweep) run gemv-sweep $PY scripts/sweep_gemv.py "$OUT/gemv-sweep.json" --budget-s 200 ;;
    gemv-parity) run gemv-parity $PY -m pytest -q -s tests/gpu/test_gemv_gpu.py -p no:cacheprovider -k engine_parity ;;
    # session 8 candidates (GEMV configs, decode attention last-program merge and K/V prefetch),
    # A/B inside the engine, each variant in its own process (~30 s a run: give AB_VARIANTS -- all of
    # them x 2 rounds take ~16 min, past one call; the JSON keeps each finished row)
    # (AB_VARIANTS=current,graph-rounds ... picks variants, AB_ROUNDS the rounds)
    # (AB_CLOCKS=1: nvidia-smi logs SM/memory clocks and power every 50 ms beside it, to clocks.csv)
    # (the logger is stopped after the step: left running, it holds the call's output open to the end)
    decode-ab)  local clocks=""
                if [ -n "${AB_CLOCKS:-}" ]; then
                  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 50 > "$OUT/clocks.csv" 2>&1 < /dev/null &
                  clocks=$!
                fi
                run decode-ab $PY scripts/ab_decode_candidates.py "$OUT/decode-ab.json" --rounds "${AB_ROUNDS:-2}" ${AB_VARIANTS:+--variants "$AB_VARIANTS"} --temperature "${AB_TEMPERATURE:-0}"
                if [ -n "$clocks" ]; then kill "$clocks"; wait "$clocks"; fi 2>/dev/null; true ;;
    # the samplers: their GPU tests, then current (fused, the GPU default) vs eager-sampling at 0.6
    sample-tests) run sample-tests $PY -m pytest -q -s tests/gpu/test_sampler_gpu.py -p no:cacheprovider ;;
    sample-ab)  run sample-tests $PY -m pytest -q -s tests/gpu/test_sampler_gpu.py -p no:cacheprovider
                run sample-ab $PY scripts/ab_decode_candidates.py "$OUT/sample-ab.json" --rounds 2 --variants current,eager-sampling --temperature 0.6 ;;
    # session 18: what one dependent step costs as a kernel, a PDL kernel, a persistent kernel's barrier
    # (PROBE_FORMS=kernels+pdl,kernels+pdl-tagged-head PROBE_PART=1: only those forms, only part 1)
    boundary-probe) run boundary-probe $W measure boundaries ${PROBE_FORMS:+--forms "$PROBE_FORMS"} ${PROBE_PART:+--part "$PROBE_PART"} ${PROBE_HIDDEN:+--hidden "$PROBE_HIDDEN"} --json "$OUT/boundary-probe.json" ;;
    gemv-bench) run gemv-bench $W bench single $P --settings all_on_cublas,all_on --repeats 1 --decode-steps 1,8 --json "$OUT/gemv-single.json" ;;
    # fused_decode (norm and SiLU folded into the GEMV), session 6: kernel + engine tests, then
    # cuBLAS / the decode GEMV unfolded / folded, one row each at 1 and 8 decode steps a round
    prefill-tests) run prefill-tests $PY -m pytest -q -s tests/gpu/test_engine_gpu.py -k prefill_graphs -p no:cacheprovider ;;
    fdec-tests) run fused-decode-tests $PY -m pytest -q -s tests/gpu/test_fused_decode_gpu.py -p no:cacheprovider ;;
    fused-decode) run fused-decode-tests $PY -m pytest -q -s tests/gpu/test_fused_decode_gpu.py -p no:cacheprovider
                run fused-decode-single $W bench single $P --settings all_on_cublas,all_on-fused_decode,all_on --repeats 1 --decode-steps 1,8 --json "$OUT/fused-decode-single.json" ;;
    # decode attention (decode_attention switch), session 6: kernel + graph tests, per-layer
    # microbenchmark, bench; the engine parity (qwen3-0.6b, compile) as its own call
    decode-attn) do_step dattn-tests; do_step dattn-micro; do_step dattn-bench ;;
    dattn-tests) run dattn-tests $PY -m pytest -q tests/gpu/test_decode_attention_gpu.py -p no:cacheprovider -k "not engine_parity" ;;
    dattn-parity) run dattn-parity $PY -m pytest -q -s tests/gpu/test_decode_attention_gpu.py -p no:cacheprovider -k engine_parity ;;
    dattn-micro) run dattn-micro $W measure decode-attention $P --context 128,384,640,2048,8192 --json "$OUT/decode-attn-micro.json" ;;
    # session 7 candidate: merge="last_program" (one launch a layer) -- its GPU tests, then
    # timed beside the two-kernel merge and flash (docs/perf-notes.md has the prediction)
    # (with the per-tile block lookup's test: both lookups vs SDPA, the launched kernels' n_regs/n_spills printed)
    dattn-last) run dattn-last-tests $PY -m pytest -q -s tests/gpu/test_decode_attention_gpu.py -p no:cacheprovider -k "last_program or block_lookups"
                run dattn-last-micro $W measure decode-attention $P --impls flash,triton,triton-last --context 128,640,2048 --json "$OUT/decode-attn-last-micro.json" ;;
    # session 10: decode attention at batch 64 and 256 (nano-vLLM's workload reads ~25 GB of KV a
    # step at batch 256: there attention's bandwidth, not the weights', sets the floor)
    dattn-batch) run dattn-batch $W measure decode-attention $P --batch 64,256 --context 256,843,2048 --json "$OUT/decode-attn-batch.json" ;;
    dattn-bench) run dattn-bench $W bench single $P --settings all_on-decode_attention,all_on --repeats 1 --decode-steps 1,8 --json "$OUT/decode-attn-single.json" ;;
    # programmatic dependent launch (pdl switch), session 6: the GPU tests (kernels on = off bit
    # for bit, a captured step, compile, engine parity), then all_on without and with pdl, 3 repeats
    # session 8: the sampler queues its parameters from pinned memory (no hidden stream sync a
    # step); sync-debug-mode test, then greedy and temperature 0.6 in one call (their ratio)
    sampling)   run sampling-tests $PY -m pytest -q -s tests/gpu/test_sampler_gpu.py -p no:cacheprovider
                run sampling-greedy $W bench single $P --settings all_on --repeats 3 --decode-steps 1,8 --json "$OUT/sampling-greedy.json"
                run sampling-t06 $W bench single $P --settings all_on --repeats 3 --decode-steps 1,8 --temperature 0.6 --json "$OUT/sampling-t06.json" ;;
    # session 23's candidates (docs/perf-notes.md): the kernels alone (no flash-attn needed), then in the
    # engine (all on: carry .wheels)
    candidate-kernels) run candidate-kernels $PY -m pytest -q -s tests/gpu/test_sampler_gpu.py tests/gpu/test_decode_attention_gpu.py -p no:cacheprovider -k "noise_early or tagged_merge_in_the_layer_chain or o_proj_in_the_merge_in" ;;
    candidate-engine)  run candidate-engine $PY -m pytest -q -s tests/gpu/test_sampler_gpu.py tests/gpu/test_decode_attention_gpu.py -p no:cacheprovider -k "in_graph or engine_parity_with_the_tagged_merge or engine_parity_with_o_proj" ;;
    pdl)        do_step pdl-tests; do_step pdl-bench ;;
    pdl-tests)  run pdl-tests $PY -m pytest -q -s tests/gpu/test_pdl_gpu.py -p no:cacheprovider ;;
    pdl-bench)  run pdl-single $W bench single $P --settings all_on-pdl,all_on --repeats 3 --decode-steps 1,8 --json "$OUT/pdl-single.json" ;;
    tp)         # needs a kind with >= 2 GPUs (nvidia-h100-x2): correctness, then the cost of the split
                run tp-tests $PY -m pytest -q -s tests/gpu/test_tensor_parallel_gpu.py -p no:cacheprovider
                run tp $W measure tp $P --tp 2 --batch 1 --steps 16 --json "$OUT/tp.json" ;;
    # needs .jupyter-wheels; NOTEBOOKS="notebooks/07_stack_them_all.ipynb ..." runs those only
    notebooks)  run notebooks $PY scripts/run_notebooks.py "$OUT/notebooks" ${NOTEBOOKS:-}
                # one tar of the figures: the device tool brings back only so many files
                (cd "$OUT/notebooks" && ls *.png >/dev/null 2>&1 && tar -cf ../notebook-figures.tar *.png && rm *.png) ;;
    *)          echo "unknown step $1" ;;
  esac
}
for step in $steps; do do_step "$step"; done
