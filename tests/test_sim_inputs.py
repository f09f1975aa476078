"""lab.sim's inputs at their edges: huge counts, overflowing clocks, wrong types, each refused naming
the field (or handled at no cost), never a bare TypeError, a MemoryError or a misleading cause."""

from __future__ import annotations

import argparse
import tracemalloc

import pytest

from lab.engine import EngineConfig
from lab.sim import GPU, ConstantStepModel, FittedStepModel, ModelShape, shapes_from_trace, simulate
from lab.sim.cli_commands import simulate_main
from lab.sim.cli_options import add_simulate_args
from lab.workload import RequestSpec, Workload, synthetic

TENTH = ConstantStepModel(0.1)


def _three() -> Workload:
    return Workload([RequestSpec(f"r{i}", 0.1 * i, prompt_len=8, output_len=3) for i in range(3)])


def test_a_prompt_refused_by_the_limits_is_not_built_first():
    # the ids of a 10**7-token prompt (76 MB) were built before the check that refuses it;
    # 10**12 tokens were a MemoryError traceback
    w = Workload([RequestSpec("big", prompt_len=10**7, output_len=1)])
    tracemalloc.start()
    try:
        r = simulate(w, EngineConfig(num_blocks=64, max_model_len=1024), TENTH)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.requests[0].status == "error" and r.requests[0].prompt_tokens == 10**7
    assert "prompt: 10000000 tokens leaves no room" in r.requests[0].error
    assert peak < 10 * 2**20


def test_a_prompt_far_larger_than_the_kv_cache_fails_that_request_on_the_command_line(capsys):
    argv = ("--no-progress --num-prompts 1 --output-len 1 --params 494M --layers 24 --hidden 896 --kv-heads 2 "
            "--head-dim 64 --max-model-len 1000000000000000 --input-len 1000000000000").split()
    assert simulate_main(add_simulate_args(argparse.ArgumentParser()).parse_args(argv)) == 1
    assert "prompt: 1000000000000 tokens cannot fit in the KV cache" in capsys.readouterr().err


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_replicas_beyond_the_requests_cost_nothing_and_change_nothing(router):
    # every replica was built: --replicas 10**9 ran towards an out-of-memory kill
    huge = simulate(_three(), EngineConfig(num_blocks=64), TENTH, replicas=10**9, router=router)
    same = simulate(_three(), EngineConfig(num_blocks=64), TENTH, replicas=3, router=router)
    assert huge.label == "sim continuous x1000000000"
    assert [(r.request_id, r.finish_s) for r in huge.requests] == [(r.request_id, r.finish_s) for r in same.requests]
    assert [(s.replica, s.start_s) for s in huge.steps] == [(s.replica, s.start_s) for s in same.steps]


def test_a_router_of_ones_own_still_gets_every_replica():
    def last(replicas, spec, now):
        return len(replicas) - 1

    r = simulate(_three(), EngineConfig(num_blocks=64), TENTH, replicas=7, router=last)
    assert {s.replica for s in r.steps} == {6}


def test_a_clock_that_overflows_names_the_step_times_not_the_kv_cache():
    # 1e308 + 1e308 = inf: the run "stalled ... the KV cache cannot hold the next request"
    with pytest.raises(ValueError, match=r"^step_model: step_time returned 1e\+308 s at t=1e\+308 s, and the clock "
                                         r"passed the largest float"):
        simulate(_three(), EngineConfig(num_blocks=64), ConstantStepModel(1e308))


def test_a_router_neither_named_nor_callable_is_named():
    with pytest.raises(ValueError, match=r"^router: expected a name \(round_robin, least_outstanding\) or a "
                                         r"function .* got list"):
        simulate(_three(), EngineConfig(num_blocks=64), TENTH, router=["round_robin"])  # was "unhashable type"


def test_fit_and_predict_take_a_result_and_name_a_wrong_trace():
    r = simulate(synthetic(20, prompt_lens=20, output_lens=10), EngineConfig(num_blocks=400), ConstantStepModel(1.0))
    # the Result itself, as lab.viz takes it, was "'Result' object is not iterable"
    assert FittedStepModel.fit(r, ("const",)).coef == FittedStepModel.fit(r.steps, ("const",)).coef
    assert list(FittedStepModel({"const": 1.0}).predict(r)) == [1.0] * len(r.steps)
    assert shapes_from_trace(r) == shapes_from_trace(r.steps)
    for wrong in (None, r.requests):  # "'RequestMetrics' object has no attribute 'replica'"
        with pytest.raises(ValueError, match=r"^steps: expected a list of StepRecord \(llm.engine.trace, result.steps\) "
                                             r"or a Result"):
            FittedStepModel.fit(wrong)
        with pytest.raises(ValueError, match=r"^steps: expected a list of StepRecord"):
            shapes_from_trace(wrong)


@pytest.mark.parametrize("coef", [None, "const", [("const", 0.1)]])
def test_fitted_coefficients_must_be_a_mapping(coef):
    # None was "'NoneType' object is not iterable", "const" the unknown features c, n, o, s, t
    with pytest.raises(ValueError, match=r"^coef: expected a mapping of feature name to seconds per unit"):
        FittedStepModel(coef)


@pytest.mark.parametrize("make, match", [
    # priced as given: 1.5 layers of KV per token, a context of 100.5 tokens
    (lambda: ModelShape("m", 1e9, 1.5, 64, 1, 64), r"^ModelShape.layers: must be an integer >= 1, got 1.5$"),
    (lambda: ModelShape("m", 1e9, 2, 64.0, 1, 64), r"^ModelShape.hidden: must be an integer >= 1, got 64.0$"),
    (lambda: ModelShape("m", 1e9, 2, 64, 1, 64, max_model_len=100.5), r"^ModelShape.max_model_len: must be an integer"),
    (lambda: ModelShape("m", 1e9, 2, 64, 0, 64), r"^ModelShape.kv_heads: must be an integer >= 1, got 0$"),
    # "no" is truthy: a PCIe card was given NVLink's one-shot all-reduce
    (lambda: GPU("x", 80, 2000, 500, "", link_gbps=128, nvlink="no"), r"^GPU.nvlink: must be True or False, got 'no'$"),
])
def test_hand_made_shapes_need_whole_units_and_nvlink_a_bool(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_kv_memory_budget_with_a_step_model_that_knows_no_model_is_named():
    # was "config.num_blocks: required ...", leaving the budget the user gave unexplained
    with pytest.raises(ValueError, match=r"^config.kv_cache_memory_gib: needs a step model that knows the model's KV "
                                         r"bytes per block \(a RooflineStepModel\), not ConstantStepModel"):
        simulate(_three(), EngineConfig(kv_cache_memory_gib=1.0), TENTH)
