"""lab.sim: hand-computed timelines with a constant step time, step models, GPUs, routers."""

import dataclasses

import numpy as np
import pytest

from lab.engine.config import EngineConfig
from lab.metrics import StepRecord
from lab.sim import (
    GPU,
    BatchShape,
    ConstantStepModel,
    FittedStepModel,
    ModelShape,
    RooflineStepModel,
    get_gpu,
    get_model,
    kv_cache_blocks,
    kv_heads_per_gpu,
    shapes_from_trace,
    simulate,
)
from lab.workload import RequestSpec, Uniform, Workload, azure_trace, synthetic

ONE_SECOND = ConstantStepModel(1.0)


def cfg(**kw):
    return EngineConfig(
        **(
            {
                "block_size": 4,
                "num_blocks": 64,
                "max_num_seqs": 4,
                "max_num_batched_tokens": 64,
                "enable_prefix_caching": False,
            }
            | kw
        )
    )


def finish_times(result):
    return {r.request_id: r.finish_s for r in result.requests}


def three_requests():
    return Workload(
        [
            RequestSpec("A", 0.0, prompt_len=4, output_len=3),
            RequestSpec("B", 0.0, prompt_len=4, output_len=1),
            RequestSpec("C", 1.5, prompt_len=4, output_len=2),
        ]
    )


def test_continuous_hand_computed():
    # t=0 [A, B prefill] -> 1: B done. t=1 [A] -> 2. t=2 C has arrived: [A, C] -> 3: A done. t=3 [C] -> 4.
    r = simulate(three_requests(), cfg(), ONE_SECOND)
    assert finish_times(r) == {"A": 3.0, "B": 1.0, "C": 4.0}
    assert [s.batch for s in r.steps] == [[("A", 4), ("B", 4)], [("A", 1)], [("A", 1), ("C", 4)], [("C", 1)]]
    c = r.requests[2]
    assert c.ttft_s == 1.5 and c.token_times_s == [3.0, 4.0] and c.first_scheduled_s == 2.0


def test_static_hand_computed():
    # batch {A, B} runs until A is done at 3 although C arrived at 1.5; then C alone: 3 -> 4 -> 5
    r = simulate(three_requests(), cfg(policy="static", max_num_seqs=2), ONE_SECOND)
    assert finish_times(r) == {"A": 3.0, "B": 1.0, "C": 5.0}
    assert r.steps[1].idle_slots == 1  # B's slot sits idle


def test_static_waits_for_its_timeout_then_flushes():
    # A alone, batch not full: starts after the 0.5 s timeout. B is the last arrival: flush, no wait.
    w = Workload(
        [
            RequestSpec("A", 0.0, prompt_len=4, output_len=2),
            RequestSpec("B", 10.0, prompt_len=4, output_len=1),
        ]
    )
    r = simulate(w, cfg(policy="static", max_num_seqs=2, static_batch_timeout_s=0.5), ONE_SECOND)
    assert finish_times(r) == {"A": 2.5, "B": 11.0}
    assert r.steps[0].start_s == 0.5


def test_chunked_prefill_and_token_budget():
    # 10-token prompt with an 8-token budget: chunk 8 (t=0..1), chunk 2 + first token (1..2), decode (2..3)
    w = Workload([RequestSpec("A", 0.0, prompt_len=10, output_len=2)])
    r = simulate(w, cfg(max_num_batched_tokens=8), ONE_SECOND)
    assert [s.batch for s in r.steps] == [[("A", 8)], [("A", 2)], [("A", 1)]]
    assert r.requests[0].ttft_s == 2.0 and r.requests[0].finish_s == 3.0


def test_preemption_when_blocks_run_out():
    # 4 blocks of 4 tokens: two 7-token prompts fit (2 blocks each) until both grow to 9 tokens
    w = Workload([RequestSpec(x, 0.0, prompt_len=7, output_len=4) for x in "AB"])
    r = simulate(w, cfg(num_blocks=4), ONE_SECOND)
    assert sum(s.num_preempted for s in r.steps) >= 1
    assert all(q.ok and q.output_tokens == 4 for q in r.requests)


def test_prefix_cache_hits_for_equal_token_prompts():
    ids = list(range(1, 18))
    w = Workload(
        [
            RequestSpec("A", 0.0, prompt_token_ids=ids, output_len=1),
            RequestSpec("B", 5.0, prompt_token_ids=ids, output_len=1),
            RequestSpec("C", 9.0, prompt_len=17, output_len=1),
        ]
    )
    r = simulate(w, cfg(enable_prefix_caching=True), ONE_SECOND)
    assert [s.batch for s in r.steps] == [[("A", 17)], [("B", 1)], [("C", 17)]]  # B reuses 4 full blocks


def test_invalid_request_is_recorded_as_failed():
    w = Workload(
        [RequestSpec("big", 0.0, prompt_len=300, output_len=10), RequestSpec("ok", 0.0, prompt_len=4)]
    )
    r = simulate(w, cfg(num_blocks=16), ONE_SECOND)
    big, ok = r.requests
    assert big.status == "error" and "KV cache" in big.error and ok.ok
    assert r.summary()["failed"] == 1


def test_a_prompt_too_big_for_the_cache_names_the_prompt_not_output_len():
    size = cfg(num_blocks=16).block_size * 16
    w = Workload([RequestSpec("prompt", 0.0, prompt_len=size + 1, output_len=1),  # "lower output_len" cannot help
                  RequestSpec("output", 0.0, prompt_len=size - 8, output_len=20)])
    prompt, output = simulate(w, cfg(num_blocks=16), ONE_SECOND).requests
    assert prompt.error.startswith("prompt:") and "KV cache" in prompt.error
    assert output.error.startswith("output_len: prompt + output_len = ") and "KV cache" in output.error
    assert "lower output_len" in output.error and "max_tokens" not in output.error  # a workload has no max_tokens


def test_simulate_argument_errors():
    w = synthetic(2)
    with pytest.raises(ValueError, match="num_blocks"):
        simulate(w, EngineConfig(), ONE_SECOND)
    with pytest.raises(TypeError, match="step_time"):
        simulate(w, cfg(), object())
    with pytest.raises(ValueError, match="router"):
        simulate(w, cfg(), ONE_SECOND, replicas=2, router="random")
    with pytest.raises(TypeError, match="workload: expected a lab.workload.Workload, got list"):
        simulate(list(w), cfg(), ONE_SECOND)  # named before any config error it would otherwise hit


# -- replicas ----------------------------------------------------------------------------------
def test_round_robin_alternates_and_merges():
    w = Workload([RequestSpec(f"r{i}", 0.0, prompt_len=4, output_len=2) for i in range(4)])
    r = simulate(w, cfg(max_num_seqs=1, max_num_batched_tokens=8), ONE_SECOND, replicas=2)
    # each replica serves two requests one after the other: finishes at 2 and 4 on both
    assert sorted(finish_times(r).values()) == [2.0, 2.0, 4.0, 4.0]
    assert {s.replica for s in r.steps} == {0, 1} and len(r.requests) == 4


def test_least_outstanding_avoids_the_busy_replica():
    # long request goes to replica 0; round robin would send the third request back to it
    w = Workload(
        [
            RequestSpec("long", 0.0, prompt_len=4, output_len=10),
            RequestSpec("s1", 0.1, prompt_len=4, output_len=1),
            RequestSpec("s2", 2.0, prompt_len=4, output_len=1),
        ]
    )
    c = cfg(max_num_seqs=1, max_num_batched_tokens=8)
    rr = simulate(w, c, ONE_SECOND, replicas=2, router="round_robin")
    lor = simulate(w, c, ONE_SECOND, replicas=2, router="least_outstanding")
    assert finish_times(rr)["s2"] == 11.0  # queued behind "long" (done at 10), then one step
    assert finish_times(lor)["s2"] == 3.0


# -- step models -------------------------------------------------------------------------------
def test_fitted_model_recovers_known_coefficients():
    true = FittedStepModel(
        {"const": 0.002, "prefill_tokens": 1e-4, "decode_seqs": 5e-4, "decode_context": 1e-6}
    )
    w = synthetic(
        60, rate=20, prompt_lens=np.random.default_rng(0).integers(5, 200, 60), output_lens=20, seed=1
    )
    steps = simulate(w, cfg(num_blocks=4000, max_num_seqs=16, max_num_batched_tokens=256), true).steps
    fit = FittedStepModel.fit(steps)
    for k, v in true.coef.items():
        assert fit.coef[k] == pytest.approx(v, rel=1e-3, abs=1e-9)
    assert all(c >= 0 for c in fit.coef.values())
    with pytest.raises(ValueError, match="back-to-back"):
        FittedStepModel.fit(steps[:3])


def test_fit_and_predict_on_a_trace_of_several_replicas():
    # a step's time runs to the next step of its own replica, not to whichever replica stepped next
    true = FittedStepModel({"const": 0.002, "prefill_tokens": 1e-5, "decode_seqs": 2e-4, "decode_context": 1e-7})
    w = synthetic(200, rate=30, prompt_lens=Uniform(20, 600), output_lens=Uniform(5, 100), seed=3)
    steps = simulate(w, cfg(max_num_seqs=16, num_blocks=3000), true, replicas=2).steps
    assert {s.replica for s in steps} == {0, 1}
    fit = FittedStepModel.fit(steps)
    for k, v in true.coef.items():
        assert fit.coef[k] == pytest.approx(v, rel=1e-3, abs=1e-9)
    assert fit.predict(steps) == pytest.approx([s.duration_s for s in steps])


def test_shapes_from_trace_replays_contexts():
    steps = [
        StepRecord(0, 0, 1, 8, 0, 1, 0, 2, batch=[("a", 8)]),
        StepRecord(1, 1, 1, 2, 1, 2, 0, 3, batch=[("a", 1), ("b", 2)]),
    ]
    first, second = shapes_from_trace(steps)
    assert first == BatchShape(prefill_tokens=8, prefill_seqs=1, context_tokens=8, prefill_attention=36)
    assert (second.decode_seqs, second.decode_context, second.prefill_tokens, second.context_tokens) == (
        1,
        9,
        2,
        11,
    )


def test_roofline_decode_is_bandwidth_bound_prefill_compute_bound():
    m = RooflineStepModel("H100-SXM", "llama-3.1-8b", overhead_s=0.0)
    decode = m.step_time(
        BatchShape(decode_seqs=1, decode_context=1000, max_decode_context=1000, context_tokens=1000)
    )
    weights = 8.03e9 * 2 / (3350e9 * 0.8)
    assert decode == pytest.approx(weights + 1000 * 131072 / (3350e9 * 0.8))
    prefill = m.step_time(
        BatchShape(
            prefill_tokens=4096, prefill_seqs=1, context_tokens=4096, prefill_attention=4096 * 4097 // 2
        )
    )
    flops = 2 * 8.03e9 * 4096 + 4 * 32 * 4096 * (4096 * 4097 // 2)
    assert prefill == pytest.approx(flops / (989.5e12 * 0.6))
    assert RooflineStepModel("H200").step_time(BatchShape(decode_seqs=1)) < m.step_time(
        BatchShape(decode_seqs=1)
    )
    with pytest.raises(ValueError, match="allowed: H100-SXM"):
        RooflineStepModel("V100")


def test_kv_capacity():
    # (81,559 MiB * 0.9 - 16.06e9 - 1 GiB) / (128 KiB/token * 16 tokens) for Llama 3.1 8B on an H100:
    # the total the driver reports, not the sheet's "80GB" read as 80e9 bytes
    assert kv_cache_blocks("H100-SXM", "llama-3.1-8b") == int((81559 * 2**20 * 0.9 - 16.06e9 - 2**30) // (131072 * 16))
    assert kv_cache_blocks("H100-SXM", "llama-3.1-8b", gpu_memory_utilization=0.5) == int(
        (81559 * 2**20 * 0.5 - 16.06e9 - 2**30) // (131072 * 16))
    by_sheet = GPU("sheet-only", 80, 3350, 989.5, "a GPU given by its spec sheet alone")  # no memory_mib
    assert kv_cache_blocks(by_sheet, "llama-3.1-8b") == int((72e9 - 16.06e9 - 2**30) // (131072 * 16))
    assert kv_cache_blocks("H200", "llama-3.1-70b", tensor_parallel=2) > 0
    with pytest.raises(ValueError, match="no room"):
        kv_cache_blocks("L4", "llama-3.1-70b")
    assert get_gpu("L4").bandwidth_gbps == 300


@pytest.mark.parametrize("kwargs, match", [
    # every case read "model: llama-3.1-8b (16 GB of weights) leaves no room for a KV cache ...; use a
    # larger GPU", though the 8B model fits an H100 and the knob to turn was another one
    ({"gpu_memory_utilization": 0.2},
     r"^gpu_memory_utilization: 0.2 x 85.5 GB of H100-SXM = 17.1 GB is below the 16.1 GB of weights "
     r"\+ 1.1 GB of activations, leaving no room for a KV cache; 0.21 or more leaves some$"),
    ({"block_size": 1_000_000},  # 128 KiB a token: 131 GB a block
     r"^block_size: one block of 1000000 tokens takes 131 GB of KV cache, more than the 59.8 GB left "
     r"after the weights; at most 456\d{3} tokens per block fit$"),
])
def test_no_room_for_a_kv_cache_names_what_is_short(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kv_cache_blocks("H100-SXM", "llama-3.1-8b", **kwargs)
    # each named limit is the right one: the suggested utilization, or block size, fits a block
    if "gpu_memory_utilization" in kwargs:
        assert kv_cache_blocks("H100-SXM", "llama-3.1-8b", gpu_memory_utilization=0.21) >= 1
    else:
        with pytest.raises(ValueError) as info:
            kv_cache_blocks("H100-SXM", "llama-3.1-8b", **kwargs)
        most = int(str(info.value).split("at most ")[1].split()[0])
        assert kv_cache_blocks("H100-SXM", "llama-3.1-8b", block_size=most) == 1
        with pytest.raises(ValueError, match="^block_size: "):
            kv_cache_blocks("H100-SXM", "llama-3.1-8b", block_size=most + 1)
    # a model too large for the GPU at any utilization still blames the model
    with pytest.raises(ValueError, match=r"^model: llama-3.1-70b .* more of them \(tensor_parallel\)$"):
        kv_cache_blocks("L4", "llama-3.1-70b", gpu_memory_utilization=1.0)


def test_azure_window_on_simulated_h100():
    w = azure_trace("conv", end_s=60)
    r = simulate(
        w,
        EngineConfig(max_num_seqs=256, max_num_batched_tokens=8192),
        RooflineStepModel(),
        record_steps=False,
    )
    s = r.summary()
    assert s["completed"] == len(w) and s["failed"] == 0 and not r.steps
    assert 0 < s["mean_ttft_ms"] < s["mean_e2el_ms"]


def test_shapes_use_recorded_contexts_even_after_preemption():
    # with few blocks the trace preempts; the simulator records each entry's cached tokens, so the
    # rebuilt shapes equal the ones the step model saw, recompute and prefix hits included
    w = Workload([RequestSpec(x, 0.0, prompt_len=7, output_len=8) for x in "ABC"])
    steps = simulate(w, cfg(num_blocks=5, enable_prefix_caching=True), ONE_SECOND).steps
    assert sum(s.num_preempted for s in steps) > 0
    exact = shapes_from_trace(steps)
    assert [sh.context_tokens for sh in exact] == [s.context_tokens for s in steps]
    for s in steps:
        s.computed = []
    replayed = [sh.context_tokens for sh in shapes_from_trace(steps)]
    assert replayed != [s.context_tokens for s in steps]  # replay misses the recompute's prefix hits


# -- audit: bad input and engine parity ---------------------------------------------------------
def test_config_max_model_len_beyond_the_models_context_is_refused():
    # the engine refuses a max_model_len past max_position_embeddings (as vLLM); the simulator capped it
    # quietly, so a request that asked for 500 tokens on a 1k-context model reported 24, status "ok"
    m = RooflineStepModel("H100-SXM", "qwen2.5-0.5b")
    w = Workload([RequestSpec("long", 0.0, prompt_len=40000, output_len=2), RequestSpec("ok", 0.0, prompt_len=8)])
    with pytest.raises(ValueError, match=r"^max_model_len: 100000 exceeds the step model's context \(32768 tokens\)"):
        simulate(w, EngineConfig(max_model_len=100_000), m)
    r = simulate(w, EngineConfig(), m)  # None: the model's own context, which the long prompt exceeds
    long, ok = r.requests
    assert long.status == "error" and "max_model_len=32768" in long.error and ok.ok


def test_routers_given_as_the_exported_factories_and_bad_router_indices():
    from lab.sim import least_outstanding, round_robin

    w = Workload([RequestSpec(f"r{i}", 0.0, prompt_len=4, output_len=2) for i in range(4)])
    c = cfg(max_num_seqs=1, max_num_batched_tokens=8)
    # lab.sim.least_outstanding itself (not called) used to fail with "takes 0 positional arguments"
    for factory in (least_outstanding, round_robin):
        r = simulate(w, c, ONE_SECOND, replicas=2, router=factory)
        assert sorted(finish_times(r).values()) == [2.0, 2.0, 4.0, 4.0]
    # a custom router's index is checked: 2 was an IndexError, -1 silently the last replica
    for k in (2, -1, "0"):
        with pytest.raises(ValueError, match=r"router: returned .* allowed: a replica index 0\.\.1"):
            simulate(w, c, ONE_SECOND, replicas=2, router=lambda reps, spec, now, k=k: k)


@pytest.mark.parametrize("make, match", [
    (lambda: ConstantStepModel(float("inf")), "seconds: must be a finite number > 0"),
    (lambda: RooflineStepModel(overhead_s=float("nan")), "overhead_s: must be a finite number >= 0"),
    (lambda: RooflineStepModel(flops_efficiency="0.6"), r"flops_efficiency: must be a number in \(0, 1\], got '0.6'"),
    (lambda: FittedStepModel({"const": -0.001}), r"coef\['const'\]: must be a finite number >= 0"),
    (lambda: FittedStepModel({"decode_seqs": float("nan")}), r"coef\['decode_seqs'\]: must be a finite number"),
])
def test_step_model_inputs_are_checked(make, match):
    # each used to be accepted: NaN or negative step times gave NaN or negative latencies, and an
    # infinite step stalled the run with an error blaming the KV cache
    with pytest.raises(ValueError, match=match):
        make()


def test_tensor_parallel_follows_the_model_heads():
    # llama-3.1-8b: 32 query heads, 8 KV heads. TP 2 halves each GPU's share of a block
    per_block = 131072 * 16
    assert kv_heads_per_gpu("llama-3.1-8b", 2) == 4
    assert kv_cache_blocks("H100-SXM", "llama-3.1-8b", tensor_parallel=2) == int(
        (81559 * 2**20 * 0.9 - 16.06e9 / 2 - 2**30) // (per_block / 2))
    # qwen2.5-0.5b: 14 query heads, 2 KV heads. On 2 GPUs one KV head each; 7 heads cannot go on 4
    assert kv_heads_per_gpu("qwen2.5-0.5b", 2) == 1
    with pytest.raises(ValueError, match="tensor_parallel: qwen2.5-0.5b's 14 attention heads cannot be split "
                                         "evenly over 4 GPUs; use a divisor of 14"):
        kv_cache_blocks("H100-SXM", "qwen2.5-0.5b", tensor_parallel=4)
    with pytest.raises(ValueError, match="tensor_parallel: llama-3.1-8b's 32 attention heads"):
        RooflineStepModel(tensor_parallel=3)
    # 16 GPUs for 8 KV heads: each keeps a copy of one head, so a block costs each GPU 1/8, not 1/16
    wide = ModelShape("wide", 8e9, 32, 8192, 8, 128)  # 64 query heads
    assert kv_heads_per_gpu(wide, 16) == 1
    one_gpu_block = wide.kv_bytes_per_token * 16
    assert kv_cache_blocks("H100-SXM", wide, tensor_parallel=16) == int(
        (81559 * 2**20 * 0.9 - 16e9 / 16 - 2**30) // (one_gpu_block / 8))
    # and each GPU reads that copy: the KV term of a decode step stops shrinking past 8 GPUs
    ctx = BatchShape(decode_seqs=1, context_tokens=100_000, decode_context=100_000)
    no_ctx = BatchShape(decode_seqs=1)

    def kv_time(tp):
        m = RooflineStepModel(model=wide, tensor_parallel=tp)
        return m.step_time(ctx) - m.step_time(no_ctx)

    assert kv_time(8) == pytest.approx(kv_time(16)) and kv_time(4) == pytest.approx(2 * kv_time(8))


def test_a_kv_memory_budget_is_per_gpu_under_tensor_parallelism():
    # llama-3.1-8b: 2 MiB a block of 16 tokens, so 64 MiB holds 32 blocks on one GPU and, each GPU
    # keeping half the KV heads, 64 on two (vLLM's --kv-cache-memory is per GPU too). Four requests
    # needing 13 blocks each run without preemption on two GPUs only
    w = Workload([RequestSpec(f"r{i}", 0.0, prompt_len=100, output_len=100) for i in range(4)])
    config = EngineConfig(kv_cache_memory_gib=1 / 16, max_num_seqs=4, max_num_batched_tokens=512)

    def preempted(tp):
        steps = simulate(w, config, RooflineStepModel(tensor_parallel=tp)).steps
        return sum(st.num_preempted for st in steps)

    assert preempted(1) > 0 and preempted(2) == 0
    # a budget below one block (2 MiB) was rounded up to one
    with pytest.raises(ValueError, match=r"^config.kv_cache_memory_gib: 0.001 GiB holds no KV block \(2,097,152 bytes"):
        simulate(w, EngineConfig(kv_cache_memory_gib=0.001), RooflineStepModel())


def _allreduce_s(gpu, model, tp, shape):
    """What tensor parallelism adds to a step beyond splitting the work: compute and bytes halve
    exactly at tp=2 for these models (their KV heads split evenly), so the rest is the all-reduces."""
    def step(tp_):
        return RooflineStepModel(gpu, model, overhead_s=0.0, tensor_parallel=tp_).step_time(shape)
    return step(tp) - step(1) / tp


@pytest.mark.parametrize("tp, measured_us", [(2, 19.9), (4, 31.1), (8, 33.8)])
def test_an_all_reduce_of_1mb_takes_what_h100s_measured(tp, measured_us):
    # sgl-project/sglang#2904: a custom all-reduce of 1 MB on H100s, without CUDA graphs. 128 tokens of
    # llama-3.1-8b (hidden 4096, 16-bit) are 1 MB; a step runs 2 all-reduces per layer, 64 in all
    decode = BatchShape(decode_seqs=128, context_tokens=128, decode_context=128)
    per_all_reduce = _allreduce_s("H100-SXM", "llama-3.1-8b", tp, decode) / 64
    assert per_all_reduce * 1e6 == pytest.approx(measured_us, rel=0.15)


def test_all_reduces_take_the_faster_way_and_need_a_link():
    # one token (8 KB a time): the one-shot kernel, 5 us + the bytes at 15% of NVLink's 450 GB/s one way
    one = BatchShape(decode_seqs=1, context_tokens=1, decode_context=1)
    assert _allreduce_s("H100-SXM", "llama-3.1-8b", 2, one) == pytest.approx(64 * (5e-6 + 4096 * 2 / (450e9 * 0.15)))
    # a prefill chunk of 8,192 tokens (64 MiB a time): NCCL's ring, 30 us + the bytes at 80%
    chunk = BatchShape(prefill_tokens=8192, prefill_seqs=1, context_tokens=8192, prefill_attention=8192 * 8193 // 2)
    ring = 64 * (30e-6 + 8192 * 4096 * 2 / (450e9 * 0.8))
    assert _allreduce_s("H100-SXM", "llama-3.1-8b", 2, chunk) == pytest.approx(ring)
    # over two L4s' PCIe (64 GB/s both ways), qwen2.5-0.5b: 48 all-reduces of 14 MiB
    assert _allreduce_s("L4", "qwen2.5-0.5b", 2, chunk) == pytest.approx(48 * (30e-6 + 8192 * 896 * 2 / (32e9 * 0.8)))
    # one token on 4 PCIe GPUs: no one-shot kernel (vLLM turns it off past 2 PCIe GPUs), the ring's 30 us
    assert _allreduce_s("L4", "llama-3.1-8b", 4, one) == pytest.approx(64 * (30e-6 + 1.5 * 4096 * 2 / (32e9 * 0.8)))
    assert _allreduce_s("H100-SXM", "llama-3.1-8b", 4, one) == pytest.approx(
        64 * (5e-6 + 1.5 * 4096 * 2 / (450e9 * 0.15)))
    # fp32 activations are 4 bytes: twice the ring's bytes; fp8 weights keep 16-bit activations
    fp32, fp8 = (ModelShape(f"m{b}", 8.03e9, 32, 4096, 8, 128, dtype_bytes=b) for b in (4, 1))
    assert _allreduce_s("H100-SXM", fp32, 2, chunk) == pytest.approx(64 * (30e-6 + 8192 * 4096 * 4 / (450e9 * 0.8)))
    assert _allreduce_s("H100-SXM", fp8, 2, chunk) == pytest.approx(ring)
    # one GPU: no all-reduce at all
    assert RooflineStepModel(overhead_s=0.0).step_time(one) == pytest.approx(
        RooflineStepModel(overhead_s=0.0, allreduce_latency_s=1.0, ring_latency_s=1.0).step_time(one))
    with pytest.raises(ValueError, match="tensor_parallel: x has no link_gbps"):
        RooflineStepModel(GPU("x", 80, 3350, 989.5, ""), tensor_parallel=2)
    assert RooflineStepModel(GPU("x", 80, 3350, 989.5, "")).step_time(one) > 0  # one GPU needs no link


def test_fp8_weights_use_the_fp8_peak_where_the_gpu_has_one():
    # a compute-bound prefill of 8,192 tokens: fp8 halves its time on an H100 (FP8 peak = 2 x BF16),
    # not on an A100 (no FP8 tensor cores; it was halved nowhere before, only the bytes were)
    bf16 = ModelShape("m-bf16", 8e9, 32, 4096, 8, 128)
    fp8 = ModelShape("m-fp8", 8e9, 32, 4096, 8, 128, dtype_bytes=1)
    prefill = BatchShape(prefill_tokens=8192, prefill_seqs=1, context_tokens=8192, prefill_attention=8192 * 8193 // 2)

    def compute_s(gpu, model):
        return RooflineStepModel(gpu, model, overhead_s=0.0).step_time(prefill)

    assert compute_s("H100-SXM", fp8) == pytest.approx(compute_s("H100-SXM", bf16) / 2)
    assert compute_s("A100-80GB", fp8) == pytest.approx(compute_s("A100-80GB", bf16))


def test_attention_flops_follow_the_heads_not_the_width():
    # Qwen3-0.6B: width 1024, 16 heads of 128. Read as 1024 / 128 = 8 heads, its attention was half
    derived = ModelShape("q3-derived", 0.6e9, 28, 1024, 8, 128)
    qwen3 = ModelShape("q3", 0.6e9, 28, 1024, 8, 128, heads=16)
    assert derived.query_heads == 8 and qwen3.query_heads == 16
    # derived on each read: a wider copy of a named shape has more heads, not the original's 32
    assert dataclasses.replace(get_model("llama-3.1-8b"), hidden=8192).query_heads == 64
    # a compute-bound prefill of 8,192 tokens: the extra 8 heads add exactly their attention FLOPs
    prefill = BatchShape(prefill_tokens=8192, prefill_seqs=1, context_tokens=8192, prefill_attention=8192 * 8193 // 2)
    t8 = RooflineStepModel("H100-SXM", derived, overhead_s=0.0).step_time(prefill)
    t16 = RooflineStepModel("H100-SXM", qwen3, overhead_s=0.0).step_time(prefill)
    flops = 989.5e12 * 0.6  # H100 BF16 peak at the default efficiency
    assert t16 - t8 == pytest.approx(4 * 28 * 8 * 128 * (8192 * 8193 // 2) / flops)
    assert kv_heads_per_gpu(qwen3, 16) == 1 and kv_heads_per_gpu(derived, 8) == 1
    with pytest.raises(ValueError, match="q3's 16 attention heads cannot be split evenly over 32 GPUs"):
        kv_heads_per_gpu(qwen3, 32)


def test_numpy_integer_counts_are_accepted_and_bools_are_not():
    # replicas from np.arange used to fail with "must be an integer >= 1, got 2"
    w = Workload([RequestSpec(f"r{i}", 0.0, prompt_len=4, output_len=2) for i in range(4)])
    r = simulate(w, cfg(max_num_seqs=1, max_num_batched_tokens=8), ONE_SECOND, replicas=np.int64(2))
    assert {s.replica for s in r.steps} == {0, 1}
    assert RooflineStepModel(tensor_parallel=np.int64(2)).kv_cache_blocks() == kv_cache_blocks(
        "H100-SXM", "llama-3.1-8b", tensor_parallel=2)
    with pytest.raises(ValueError, match="replicas: must be an integer >= 1, got True"):
        simulate(w, cfg(), ONE_SECOND, replicas=True)


@pytest.mark.parametrize("make, match", [
    # a hand-made GPU: 0 bandwidth was a ZeroDivisionError, a NaN peak silently dropped the compute term
    (lambda: RooflineStepModel(GPU("x", 80, 0, 989.5, "")), r"GPU.bandwidth_gbps: must be a finite number > 0, got 0"),
    (lambda: RooflineStepModel(GPU("x", 80, 3350, float("nan"), "")), r"GPU.bf16_tflops: must be a finite number"),
    (lambda: GPU("x", 80, 3350, 989.5, "", memory_mib=-1), r"GPU.memory_mib: must be an integer >= 0"),
    (lambda: GPU("x", 80, 3350, 989.5, "", link_gbps=-900), r"GPU.link_gbps: must be a finite number >= 0"),
    (lambda: RooflineStepModel(ring_latency_s=float("nan")), r"ring_latency_s: must be a finite number >= 0"),
    (lambda: RooflineStepModel(allreduce_efficiency=0), r"allreduce_efficiency: must be a number in \(0, 1\]"),
    # inf params made every step infinite: the run stalled with an error blaming the KV cache
    (lambda: ModelShape("x", float("inf"), 32, 4096, 8, 128), r"ModelShape.params: must be a finite number > 0"),
    (lambda: ModelShape("x", 8e9, 32, 4096, 8, 128, heads=-1), r"ModelShape.heads: must be an integer >= 0"),
    (lambda: ModelShape("x", 8e9, 32, 4096, 8, 96), r"ModelShape.heads: hidden 4096 is not a multiple of head_dim 96"),
    (lambda: ModelShape("x", 8e9, 32, 4096, 8, 128, heads=12), r"ModelShape.heads: 12 attention heads cannot share 8 KV"),
    (lambda: RooflineStepModel(ring_efficiency=1.5), r"ring_efficiency: must be a number in \(0, 1\]"),
    (lambda: kv_cache_blocks("H100-SXM", "llama-3.1-8b", block_size=0), r"block_size: must be an integer >= 1"),
    (lambda: kv_cache_blocks("H100-SXM", "llama-3.1-8b", gpu_memory_utilization="0.9"),
     r"gpu_memory_utilization: must be a number in \(0, 1\], got '0.9'"),
    (lambda: kv_cache_blocks("H100-SXM", "llama-3.1-8b", activation_gib=float("nan")),
     r"activation_gib: must be a finite number >= 0"),
])
def test_hand_made_gpus_models_and_kv_sizing_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), -0.5])
def test_a_step_model_returning_a_bad_time_fails_naming_it(seconds):
    # a user's own step model: inf stalled the run blaming the KV cache, NaN made every time NaN,
    # a negative time ran the clock backwards
    class Bad:
        def step_time(self, shape):
            return seconds

    w = Workload([RequestSpec("a", 0.0, prompt_len=4, output_len=2), RequestSpec("b", 1.0, prompt_len=4)])
    with pytest.raises(ValueError, match=r"step_model: step_time returned .* must be a finite number of seconds >= 0"):
        simulate(w, cfg(), Bad())


def test_a_step_model_class_instead_of_an_instance_is_named():
    # RooflineStepModel without () failed on "'<' not supported between 'property' and 'float'"
    w = synthetic(2)
    for model in (RooflineStepModel, ConstantStepModel):
        with pytest.raises(TypeError, match=f"step_model: got the class {model.__name__}, not a model"):
            simulate(w, cfg(), model)


def test_fit_features_must_be_distinct_names():
    steps = simulate(synthetic(20, prompt_lens=20, output_lens=10), cfg(num_blocks=400), ONE_SECOND).steps
    # ("const", "const") fitted const = 0: the twin's zero overwrote the fitted second per step
    with pytest.raises(ValueError, match=r"features: need one or more distinct names"):
        FittedStepModel.fit(steps, ("const", "const"))
    with pytest.raises(ValueError, match=r"features: need one or more distinct names"):
        FittedStepModel.fit(steps, ())  # fitted an all-zero model: every step took no time
    # one name as a string was read as the letters c, o, n, s, t
    assert FittedStepModel.fit(steps, "const").coef["const"] == pytest.approx(1.0)


def test_fit_on_one_token_outputs_uses_their_back_to_back_steps():
    # every step finishes its whole batch (128-token prompts, two to a 256-token step, one token out),
    # so nothing is left running after any step, yet the next batch starts at once: the fit said
    # "need at least 8 back-to-back steps to fit, got 0"
    true = FittedStepModel({"const": 0.003, "prefill_tokens": 1e-4, "prefill_seqs": 2e-3})
    w = synthetic(50, prompt_lens=128, output_lens=1)
    c = EngineConfig(num_blocks=4000, block_size=16, max_num_seqs=8, max_num_batched_tokens=256)
    steps = simulate(w, c, true).steps
    assert all(s.num_running == 0 for s in steps)
    fit = FittedStepModel.fit(steps, ("const", "prefill_tokens"))
    # two prompts a step: 0.003 + 256 * 1e-4 + 2 * 2e-3 = 0.0326 s, all of it prefill_tokens or const
    assert fit.predict(steps[:1])[0] == pytest.approx(steps[0].duration_s)
    # a static batch end with less than a full batch waiting may be followed by the batch timeout: left out.
    # Here r4 waits from t=4 (its batch-mates' end) to its timeout at t=5, and r5 arrives at 100
    w = Workload([RequestSpec(f"r{i}", 0.0, prompt_len=4, output_len=2) for i in range(5)]
                 + [RequestSpec("r5", 100.0, prompt_len=4, output_len=2)])
    static = simulate(w, cfg(policy="static", max_num_seqs=2, static_batch_timeout_s=5.0), ONE_SECOND).steps
    assert [s.start_s for s in static] == [0, 1, 2, 3, 5, 6, 100, 101]
    assert FittedStepModel.fit(static, ("const",)).coef["const"] == pytest.approx(1.0)


def test_a_roofline_model_changed_after_it_was_made_is_recomputed():
    # its coefficients were worked out once: m.gpu = "A100-80GB" kept the H100's step times beside the
    # A100's KV cache, and m.model = "qwen2.5-0.5b" (a name) broke max_model_len, which simulate read as
    # "no context limit"
    from lab.sim import BatchShape, RooflineStepModel

    shape = BatchShape(prefill_tokens=4096, prefill_seqs=1, context_tokens=4096, prefill_attention=4096 * 4097 // 2)
    m = RooflineStepModel()
    for change in ({"flops_efficiency": 0.3}, {"gpu": "A100-80GB"}, {"tensor_parallel": 2},
                   {"model": "qwen2.5-0.5b"}):
        for name, value in change.items():
            setattr(m, name, value)
        fresh = RooflineStepModel(**{f: getattr(m, f) for f in ("gpu", "model", "flops_efficiency", "tensor_parallel")})
        assert m.step_time(shape) == fresh.step_time(shape) and m.kv_cache_blocks() == fresh.kv_cache_blocks()
    assert m.max_model_len == fresh.max_model_len == 32768
    with pytest.raises(ValueError, match="tensor_parallel"):
        m.tensor_parallel = 3  # 14 heads do not split over 3 GPUs: refused, and the model stays as it was
    assert m.tensor_parallel == 2 and m.step_time(shape) == fresh.step_time(shape)
