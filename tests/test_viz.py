"""lab.viz: each figure's traces carry the numbers we put in, and odd input degrades to a note or a clear error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from lab.metrics import RequestMetrics, Result, StepRecord
from lab.viz import (
    batch_occupancy,
    compare,
    cost_bars,
    kv_blocks,
    latency_cdf,
    request_timeline,
    retries_and_errors,
    throughput_vs_latency,
)


def req(rid, arrival, scheduled, first, finish, out=4, **kw):
    times = list(np.linspace(first, finish, out)) if first is not None and finish is not None else []
    return RequestMetrics(
        request_id=rid, arrival_s=arrival, first_scheduled_s=scheduled, first_token_s=first, finish_s=finish,
        prompt_tokens=8, output_tokens=out, token_times_s=times, **kw,
    )


def ok_result(label="continuous", scale=1.0):
    requests = [
        req("a", 0.0, 0.1 * scale, 0.3 * scale, 1.0 * scale),
        req("b", 0.2, 0.5 * scale, 0.6 * scale, 2.0 * scale),
        req("c", 0.4, 0.4, 0.9 * scale, 1.5 * scale),
    ]
    steps = [
        StepRecord(step=i, start_s=0.1 * i, duration_s=0.1, prefill_tokens=8 if i == 0 else 0, decode_seqs=i % 3,
                   num_running=2, num_waiting=3 - i % 3, kv_blocks_used=2 + i, idle_slots=2,
                   batch=[("a", 8 if i == 0 else 1), ("b", 1)])
        for i in range(5)
    ]
    return Result(requests=requests, steps=steps, label=label)


def failed_result():
    return Result(
        requests=[
            req("x", 0.0, 0.1, None, 0.5, out=0, status="error", error="InternalServerError: boom", retries=2),
            req("y", 0.3, None, None, None, out=0, status="aborted", error="cancelled"),
        ],
        label="faulty",
    )


def has_note(fig: go.Figure, text: str) -> bool:
    return any(text in (a.text or "") for a in fig.layout.annotations)


def trace(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert found, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return found[0]


# --- request timeline ------------------------------------------------------------------------------------


def test_timeline_bars_are_the_phase_durations():
    fig = request_timeline(ok_result())
    assert [t.name for t in fig.data] == ["queued", "prefill", "decode", "failed"]
    queued, prefill, decode = (trace(fig, n) for n in ("queued", "prefill", "decode"))
    # rows by arrival: a=0, b=1, c=2; c was scheduled on arrival so its queued bar has length 0
    assert list(queued.y) == [0, 1, 2]
    assert list(queued.base) == pytest.approx([0.0, 0.2, 0.4])
    assert list(queued.x) == pytest.approx([0.1, 0.3, 0.0])
    assert list(prefill.base) == pytest.approx([0.1, 0.5, 0.4])
    assert list(prefill.x) == pytest.approx([0.2, 0.1, 0.5])
    assert list(decode.base) == pytest.approx([0.3, 0.6, 0.9])
    assert list(decode.x) == pytest.approx([0.7, 1.4, 0.6])
    assert len(trace(fig, "failed").x) == 0
    assert fig.layout.barmode == "overlay"
    assert "(s)" in fig.layout.xaxis.title.text


def test_timeline_marks_failures_and_orders_by_arrival():
    r = ok_result()
    r.requests.insert(0, req("late-fail", 3.0, 3.1, None, 3.4, out=0, status="error", error="Timeout: 504"))
    fig = request_timeline(r)
    failed = trace(fig, "failed")
    assert list(failed.y) == [3] and list(failed.x) == pytest.approx([3.4])
    assert "504" in failed.customdata[0][1]
    # failed after scheduling, before a token: its prefill runs until the failure, and it has no decode
    prefill = trace(fig, "prefill")
    assert prefill.x[-1] == pytest.approx(0.3) and 3 not in trace(fig, "decode").y


def test_timeline_over_http_has_no_queue_phase():
    r = Result(requests=[req("h", 1.0, None, 1.4, 2.0)])
    fig = request_timeline(r)
    # the client cannot see the server's queue or where prefill starts: one honest phase up to the first token
    assert [t.name for t in fig.data] == ["waiting for first token", "decode", "failed"]
    assert list(trace(fig, "waiting for first token").base) == pytest.approx([1.0])
    assert list(trace(fig, "waiting for first token").x) == pytest.approx([0.4])


def test_timeline_over_http_shows_retried_requests_and_does_not_call_their_waits_prefill():
    # over HTTP a retried request's back-off waits sit between its arrival and its first token
    r = Result(requests=[
        req("plain", 0.0, None, 0.1, 0.5),
        req("retried", 0.1, None, 2.6, 3.0, retries=3),
        req("gave-up", 0.2, None, None, 4.2, out=0, status="error", error="RateLimitError: 429", retries=4),
    ])
    fig = request_timeline(r)
    assert "prefill" not in [t.name for t in fig.data]
    waiting = trace(fig, "waiting for first token")
    assert list(waiting.y) == [0, 1, 2]
    assert list(waiting.x) == pytest.approx([0.1, 2.5, 4.0])  # the failed one waited until it gave up
    marks = trace(fig, "retried (↻ retries)")
    assert list(marks.y) == [1, 2] and list(marks.x) == pytest.approx([0.1, 0.2])
    assert list(marks.text) == ["↻3", "↻4"]
    assert [tuple(c[:2]) for c in marks.customdata] == [("retried", 3), ("gave-up", 4)]
    assert "3 retries" in waiting.customdata[1][5]  # the bar's hover says so too


def test_timeline_of_many_requests_stays_one_trace_per_phase():
    r = Result(requests=[req(f"r{i}", i * 0.01, i * 0.01 + 0.1, i * 0.01 + 0.2, i * 0.01 + 1) for i in range(2000)])
    fig = request_timeline(r)
    assert len(fig.data) == 4 and len(trace(fig, "decode").x) == 2000


def test_timeline_empty_and_failed_only():
    fig = request_timeline(Result(requests=[]))
    assert not fig.data and has_note(fig, "No requests")
    fig = request_timeline(failed_result())
    assert len(trace(fig, "failed").x) == 2 and has_note(fig, "No request completed")


def test_timeline_rejects_non_result():
    with pytest.raises(ValueError, match="result"):
        request_timeline([ok_result()])


# --- latency CDFs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ttft", "e2e", "tpot", "itl", "queue"])
def test_cdf_is_monotone_and_ends_at_one(metric):
    fig = latency_cdf({"static": ok_result("s", scale=2.0), "continuous": ok_result("c")}, metric=metric)
    assert len(fig.data) == 2
    for t in fig.data:
        x, y = np.asarray(t.x), np.asarray(t.y)
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) > 0)
        assert y[-1] == pytest.approx(1.0) and y[0] == 0 and x[0] == x[1]  # rises from 0 at the fastest
    assert "(ms)" in fig.layout.xaxis.title.text


def test_cdf_values_in_ms_and_labels_kept():
    fig = latency_cdf([ok_result("static"), ok_result("static")], metric="ttft")
    assert list(fig.data[0].x) == pytest.approx([300.0, 300.0, 400.0, 500.0])
    assert fig.data[0].name.startswith("static (n=3") and fig.data[1].name.startswith("static (2)")
    assert fig.data[0].line.color != fig.data[1].line.color


def test_cdf_of_one_request_is_a_visible_step():
    # one point in a line trace draws nothing: the run was in the legend with no curve
    fig = latency_cdf(Result(requests=[req("only", 0.0, 0.1, 0.3, 0.9, out=1)], label="one"))
    assert list(fig.data[0].x) == pytest.approx([300.0, 300.0]) and list(fig.data[0].y) == [0.0, 1.0]
    assert fig.data[0].mode == "lines" and "n=1 requests" in fig.data[0].name


def test_itl_cdf_says_it_counts_gaps_not_requests():
    fig = latency_cdf(ok_result("run"), metric="itl")
    assert "gaps" in fig.data[0].name and fig.layout.yaxis.title.text == "fraction of inter-token gaps"
    assert latency_cdf(ok_result("run")).layout.yaxis.title.text == "fraction of completed requests"


def test_cdf_counts_failures_in_legend_and_handles_failed_only():
    r = ok_result()
    r.requests += failed_result().requests
    assert "2 failed" in latency_cdf(r).data[0].name
    fig = latency_cdf(failed_result())
    assert not fig.data and has_note(fig, "No completed request")
    assert has_note(latency_cdf([]), "No completed request")


def test_cdf_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        latency_cdf(ok_result(), metric="p99")
    with pytest.raises(ValueError, match="results"):
        latency_cdf("static")
    with pytest.raises(ValueError, match="results: item 1"):
        latency_cdf([ok_result(), 3])


# --- batch occupancy and KV blocks ----------------------------------------------------------------------------


def test_occupancy_stacks_used_and_idle_slots():
    r = ok_result()
    fig = batch_occupancy(r, max_num_seqs=4)
    assert [t.name for t in fig.data] == ["prefill seqs", "decode seqs", "idle slots", "waiting requests",
                                          "max_num_seqs = 4"]
    assert fig.layout.barmode == "stack"
    prefill, decode, idle = fig.data[:3]
    assert list(decode.y) == [0, 1, 2, 0, 1]
    assert list(prefill.y) == [2, 1, 0, 2, 1]  # each step's batch has two sequences
    assert list(idle.y) == [2] * 5
    assert list(fig.data[3].y) == [s.num_waiting for s in r.steps]
    assert list(fig.data[4].y) == [4, 4]


def test_occupancy_over_time_uses_step_durations_as_widths():
    fig = batch_occupancy(ok_result().steps, x="time", show_waiting=False)
    assert len(fig.data) == 3
    assert list(fig.data[0].width) == pytest.approx([0.1] * 5)
    assert list(fig.data[0].x) == pytest.approx([0.05, 0.15, 0.25, 0.35, 0.45])


def test_occupancy_empty_and_bad_arguments():
    assert has_note(batch_occupancy(Result(requests=[])), "No step trace")
    with pytest.raises(ValueError, match=r"^x: 'seconds' is not one of \['step', 'time'\]"):
        batch_occupancy(ok_result(), x="seconds")
    with pytest.raises(ValueError, match="max_num_seqs"):
        batch_occupancy(ok_result(), max_num_seqs=-1)
    with pytest.raises(ValueError, match="steps"):
        batch_occupancy({"a": ok_result()})


def test_kv_blocks_overlays_runs_with_capacity():
    fig = kv_blocks({"a": ok_result(), "b": ok_result(), "http": failed_result()}, capacity=10, block_size=16)
    assert [t.name for t in fig.data] == ["a", "b", "capacity = 10"]  # "http" has no step trace
    assert list(fig.data[0].y) == [2, 3, 4, 5, 6]
    assert list(fig.data[0].x) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert list(fig.data[0].customdata) == [32, 48, 64, 80, 96]
    assert list(fig.data[2].y) == [10, 10]


def test_kv_blocks_draws_each_runs_own_capacity():
    # two engines with different pools: one capacity line drawn for both misstated the roomy one's pool
    roomy, tight = ok_result("roomy"), ok_result("tight")
    tight.steps = tight.steps[:3]
    fig = kv_blocks({"roomy": roomy, "tight": tight}, capacity={"roomy": 128, "tight": 24}, x="step")
    assert [t.name for t in fig.data] == ["roomy", "tight", "roomy: capacity = 128", "tight: capacity = 24"]
    lines = {t.name: t for t in fig.data}
    assert list(lines["roomy: capacity = 128"].y) == [128, 128]
    assert list(lines["tight: capacity = 24"].y) == [24, 24]
    assert list(lines["tight: capacity = 24"].x) == [0, 2]  # as far as its own run goes
    assert lines["roomy: capacity = 128"].line.color == lines["roomy"].line.color
    assert lines["tight: capacity = 24"].line.color == lines["tight"].line.color
    assert " of 24 blocks" in lines["tight"].hovertemplate
    # a partial mapping draws only the capacities it gives
    assert [t.name for t in kv_blocks({"roomy": roomy, "tight": tight}, capacity={"tight": 24}).data] == [
        "roomy", "tight", "tight: capacity = 24"]
    with pytest.raises(ValueError, match=r"capacity: no run labelled \['other'\]"):
        kv_blocks({"roomy": roomy}, capacity={"other": 24})
    with pytest.raises(ValueError, match="capacity\\['roomy'\\]"):
        kv_blocks({"roomy": roomy}, capacity={"roomy": 0})


def _from_step(result: Result, first: int) -> Result:
    """The run's steps numbered from `first`, as after a warm-up on the same engine."""
    from dataclasses import replace

    result.steps = [replace(s, step=first + i) for i, s in enumerate(result.steps)]
    return result


def test_step_axes_count_each_run_from_zero_after_a_warm_up():
    # a warm-up generate then trace.clear() leaves the engine's counter running: the axis began at 16
    run = _from_step(ok_result(), 16)
    fig = batch_occupancy(run, max_num_seqs=4)
    assert list(fig.data[0].x) == [0, 1, 2, 3, 4]
    assert list(trace(fig, "max_num_seqs = 4").x) == [-0.5, 4.5]
    assert [c[0] for c in fig.data[0].customdata] == [0, 1, 2, 3, 4]
    assert [c[5] for c in fig.data[0].customdata] == [16, 17, 18, 19, 20]  # hover keeps the engine's number
    assert "engine step" in fig.data[0].hovertemplate
    assert "engine step" not in batch_occupancy(ok_result()).data[0].hovertemplate  # no offset, nothing to say
    runs = {"warm": run, "fresh": ok_result()}
    assert [list(t.x) for t in kv_blocks(runs, capacity=8, x="step").data] == [[0, 1, 2, 3, 4]] * 2 + [[0, 4]]
    assert list(kv_blocks(run, x="time").data[0].x) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def _two_replicas() -> Result:
    from lab.engine.config import EngineConfig
    from lab.sim import ConstantStepModel, simulate
    from lab.workload import synthetic

    config = EngineConfig(max_num_seqs=4, num_blocks=64, block_size=4)
    return simulate(synthetic(12, prompt_lens=8, output_lens=6), config, ConstantStepModel(0.01), replicas=2)


def test_kv_blocks_draws_each_replica_of_a_run():
    fig = kv_blocks({"sim": _two_replicas()})
    assert [t.name for t in fig.data] == ["sim · replica 0", "sim · replica 1"]
    for trace in fig.data:  # each line moves forward in time: no zigzag between two pools
        assert list(trace.x) == sorted(trace.x)


def test_occupancy_refuses_mixed_replicas():
    result = _two_replicas()
    with pytest.raises(ValueError, match="come from 2 replicas; plot one at a time"):
        batch_occupancy(result)
    one = batch_occupancy([s for s in result.steps if s.replica == 0], max_num_seqs=4)
    stacked = np.sum([list(t.y) for t in one.data[:3]], axis=0)
    assert stacked.max() <= 4


def _one_step() -> Result:
    """One request with one output token: the simulator's whole trace is one step."""
    from lab.engine.config import EngineConfig
    from lab.sim import ConstantStepModel, simulate
    from lab.workload import synthetic

    result = simulate(synthetic(1, prompt_lens=8, output_lens=1), EngineConfig(max_num_seqs=4, num_blocks=16),
                      ConstantStepModel(0.01))
    assert len(result.steps) == 1
    return result


def test_step_figures_of_a_one_step_trace_draw_something():
    # a line through one point draws nothing: the figures showed bars or a legend, and no line
    result = _one_step()
    for x in ("step", "time"):
        fig = batch_occupancy(result, max_num_seqs=4, x=x)
        bar = fig.data[0]
        left = bar.x[0] - (bar.width[0] if bar.width else 1) / 2
        limit = trace(fig, "max_num_seqs = 4")
        assert list(limit.x) == pytest.approx([left, left + (bar.width[0] if bar.width else 1)])  # edge to edge
        assert "markers" in trace(fig, "waiting requests").mode
        assert "markers" in kv_blocks(result, x=x).data[0].mode
    capacity = trace(kv_blocks(result, capacity=64), "capacity = 64")
    assert list(capacity.x) == pytest.approx([0.0, 0.01])  # the step's start to its end


def test_kv_blocks_empty_and_bad_arguments():
    assert has_note(kv_blocks(failed_result()), "No step trace")
    with pytest.raises(ValueError, match="capacity"):
        kv_blocks(ok_result(), capacity=0)
    with pytest.raises(ValueError, match="block_size"):
        kv_blocks(ok_result(), block_size="16")


# --- retries and errors -------------------------------------------------------------------------------------


def test_retries_and_errors_buckets_outcomes():
    r = ok_result()
    r.requests += failed_result().requests
    fig = retries_and_errors(r, bucket_s=1.0)
    names = [t.name for t in fig.data]
    assert names[0] == "ok" and "error: InternalServerError" in names and "aborted: cancelled" in names
    assert names[-1] == "retries"
    # finish times 1.0, 2.0, 1.5 (ok), 0.5 (error), aborted last seen at arrival 0.3; start is 0.0
    assert list(trace(fig, "ok").y) == [0, 2, 1]
    assert list(trace(fig, "error: InternalServerError").y) == [1, 0, 0]
    assert list(trace(fig, "retries").y) == [2, 0, 0]
    total = sum(sum(t.y) for t in fig.data if t.type == "bar")
    assert total == len(r.requests)  # nothing lost


def test_retries_and_errors_failed_only_empty_and_bad_bucket():
    fig = retries_and_errors(failed_result())
    assert sum(sum(t.y) for t in fig.data if t.type == "bar") == 2
    assert has_note(retries_and_errors(Result(requests=[])), "No requests")
    with pytest.raises(ValueError, match="bucket_s"):
        retries_and_errors(ok_result(), bucket_s=0)


# --- throughput against latency ---------------------------------------------------------------------------------


def test_throughput_vs_latency_from_pairs():
    pairs = [(4.0, ok_result("cont", 0.5)), (1.0, ok_result("cont")), (1.0, ok_result("static", 2.0))]
    fig = throughput_vs_latency(pairs)
    assert [t.name for t in fig.data] == ["cont", "static"]
    cont = fig.data[0]
    assert list(cont.customdata) == [1.0, 4.0]  # sorted by rate
    assert list(cont.y) == pytest.approx([pairs[1][1].summary()["p99_e2el_ms"], pairs[0][1].summary()["p99_e2el_ms"]])
    assert "tok/s" in fig.layout.xaxis.title.text and "ms" in fig.layout.yaxis.title.text


def test_throughput_vs_latency_from_frame_and_bad_columns():
    frame = pd.DataFrame({"request_rate": [1, 2, float("inf")], "output_throughput": [10, 20, 25],
                          "mean_ttft_ms": [5, 9, 80]})
    fig = throughput_vs_latency(frame, latency="mean_ttft_ms")
    assert len(fig.data) == 1 and list(fig.data[0].text) == ["1/s", "2/s", "all at once"]
    with pytest.raises(ValueError, match="latency: no column 'p99_e2el_ms'"):
        throughput_vs_latency(frame)
    with pytest.raises(ValueError, match="data: item 0"):
        throughput_vs_latency([ok_result()])
    assert has_note(throughput_vs_latency([]), "No runs")


def test_throughput_vs_latency_names_a_parameter_that_is_not_a_rate():
    # client concurrency on the x-parameter: its points read "1/s" and hover "rate 4 req/s"
    table = pd.DataFrame({"concurrency": [16, 1, 4], "label": ["bundled"] * 3,
                          "output_throughput": [600.0, 100.0, 300.0], "mean_e2el_ms": [900.0, 300.0, 400.0]})
    fig = throughput_vs_latency(table, rate="concurrency", latency="mean_e2el_ms")
    points = fig.data[0]
    assert list(points.text) == ["concurrency 1", "concurrency 4", "concurrency 16"]
    assert "req/s" not in points.hovertemplate and "concurrency %{customdata}" in points.hovertemplate
    assert "concurrency" in fig.layout.title.text and "request rates" not in fig.layout.title.text
    # a real rate keeps its unit
    rates = table.rename(columns={"concurrency": "request_rate"})
    fig = throughput_vs_latency(rates, latency="mean_e2el_ms")
    assert list(fig.data[0].text) == ["1/s", "4/s", "16/s"] and "rate %{customdata} req/s" in fig.data[0].hovertemplate


def test_throughput_vs_latency_keeps_rows_without_a_label():
    frame = pd.DataFrame({"request_rate": [1, 2, 4], "output_throughput": [10, 20, 30],
                          "p99_e2el_ms": [5, 9, 40], "label": ["cont", None, None]})
    fig = throughput_vs_latency(frame)
    assert [t.name for t in fig.data] == ["cont", "run"]
    assert sum(len(t.x) for t in fig.data) == 3  # every row is a point


# --- compare ----------------------------------------------------------------------------------------------------


def test_compare_one_panel_per_metric():
    runs = {"static": ok_result(scale=2.0), "continuous": ok_result()}
    fig = compare(runs, metrics=["output_throughput", "p99_ttft_ms"])
    assert [t.name for t in fig.data] == ["output_throughput", "p99_ttft_ms"]
    assert list(fig.data[0].x) == ["static", "continuous"]
    assert list(fig.data[1].y) == pytest.approx([runs["static"].summary()["p99_ttft_ms"],
                                                 runs["continuous"].summary()["p99_ttft_ms"]])
    assert fig.data[0].marker.color[0] != fig.data[0].marker.color[1]
    assert any("(tok/s)" in a.text for a in fig.layout.annotations)
    assert len(compare(runs).data) == 6


def test_compare_failed_only_empty_and_bad_metrics():
    fig = compare({"ok": ok_result(), "faulty": failed_result()})
    assert has_note(fig, "No completed request in: faulty")
    assert has_note(compare({}), "No runs")
    with pytest.raises(ValueError, match="metrics: unknown"):
        compare({"a": ok_result()}, metrics=["speed"])
    with pytest.raises(ValueError, match="metrics"):
        compare({"a": ok_result()}, metrics="mean_ttft_ms")


def test_compare_bar_text_avoids_scientific_notation():
    slow = ok_result(scale=3.0)  # TTFTs of 0.9 to 2.3 s: a mean in the thousands of ms
    fig = compare({"slow": slow}, metrics=["mean_ttft_ms", "request_throughput"])
    mean_ms = slow.summary()["mean_ttft_ms"]
    assert mean_ms > 1000 and fig.data[0].text[0] == f"{mean_ms:,.0f}"  # was "1.6e+03"
    assert "e" not in fig.data[1].text[0]


# --- cost bars ----------------------------------------------------------------------------------------------------


def costs():
    return pd.DataFrame({
        "provider": ["openai", "deepseek", "holysheep", "holysheep", "local"],
        "model": ["gpt-4o-mini", "deepseek-chat", "deepseek-chat", "deepseek-chat", "tiny"],
        "cost_usd": [0.30, 0.20, 0.01, 0.02, None],
    })


def test_cost_bars_group_models_by_provider_and_sum_duplicates():
    fig = cost_bars(costs())
    assert [t.name for t in fig.data] == ["openai", "deepseek", "holysheep"]
    assert list(trace(fig, "holysheep").y) == pytest.approx([0.03])
    assert list(trace(fig, "holysheep").x) == ["deepseek-chat"]
    assert list(fig.layout.xaxis.categoryarray) == ["deepseek-chat", "gpt-4o-mini"]  # cheapest first
    assert fig.layout.yaxis.title.text == "cost (USD)"
    assert has_note(fig, "No cost for: local · tiny")


def test_cost_bars_say_how_many_requests_were_not_costed():
    """cost_table(Result) prices completed requests only; a run where 7 of 10 failed was drawn as an
    ordinary cost chart."""
    frame = pd.DataFrame({"provider": ["a", "b"], "model": ["m", "m"], "cost_usd": [0.3, 0.2],
                          "requests": [3, 3], "requests_not_costed": [7, 7]})
    texts = [a.text for a in cost_bars(frame).layout.annotations]
    assert any("7 failed or aborted request(s) not costed" in t for t in texts)
    assert not cost_bars(frame.assign(requests_not_costed=0)).layout.annotations


def test_cost_bars_custom_columns_and_errors():
    frame = costs().rename(columns={"cost_usd": "yuan", "provider": "vendor"})
    fig = cost_bars(frame, cost="yuan", provider="vendor", model=None, currency="CNY")
    assert fig.layout.yaxis.title.text == "cost (CNY)" and len(fig.data) == 3  # "local" has no price
    with pytest.raises(ValueError, match="cost: no column 'cost_usd'"):
        cost_bars(frame, provider="vendor")
    with pytest.raises(ValueError, match="provider: no column 'provider'"):
        cost_bars(frame, cost="yuan")
    with pytest.raises(ValueError, match="frame"):
        cost_bars([{"provider": "x"}])
    assert has_note(cost_bars(costs().iloc[4:]), "No priced rows")


def test_cost_bars_unit_comes_from_the_whole_column_name():
    # the text after the last underscore is not always the currency: usd_per_1k_requests read "REQUESTS"
    frame = costs().rename(columns={"cost_usd": "usd_per_1k_requests"})
    fig = cost_bars(frame, cost="usd_per_1k_requests")
    assert fig.layout.yaxis.title.text == "cost (USD per 1k requests)"
    assert "USD per 1k requests" in fig.data[0].hovertemplate and "REQUESTS" not in fig.data[0].hovertemplate
    assert cost_bars(costs()).layout.yaxis.title.text == "cost (USD)"
    fig = cost_bars(costs().rename(columns={"cost_usd": "price_requests"}), cost="price_requests")
    assert fig.layout.yaxis.title.text == "price_requests"  # no currency in the name: none is made up
    assert "REQUESTS" not in fig.data[0].hovertemplate


def test_every_figure_serialises():
    r = ok_result()
    figs = [
        request_timeline(r), latency_cdf(r), retries_and_errors(r), batch_occupancy(r, max_num_seqs=4),
        kv_blocks(r, capacity=8), throughput_vs_latency([(1.0, r)]), compare({"a": r}), cost_bars(costs()),
    ]
    for fig in figs:
        assert isinstance(fig, go.Figure) and fig.data  # each draws something
        text = fig.to_json()
        back = pio.from_json(text)  # what a saved report or a notebook output reads back
        assert isinstance(back, go.Figure)
        assert [(t.type, t.name) for t in back.data] == [(t.type, t.name) for t in fig.data]
        assert back.layout.title.text == fig.layout.title.text
        assert json.loads(back.to_json()) == json.loads(text)  # every value survives the round trip


def test_cost_bar_text_avoids_scientific_notation():
    frame = pd.DataFrame({"provider": ["a", "b"], "model": ["m", "m"], "cost_usd": [5.5e-05, 1234.5]})
    fig = cost_bars(frame)
    assert [t.text[0] for t in fig.data] == ["0.000055", "1,234"]


# --- audit: runs without a step trace or without values ---------------------------------------------------------


def test_compare_a_step_metric_across_runs_with_and_without_a_step_trace():
    # wasted_slot_steps is only in the summary of runs with a step trace: listing the traced run first
    # raised KeyError, listing it second called the metric "unknown"
    for runs in ({"sim": ok_result(), "http": failed_result()}, {"http": failed_result(), "sim": ok_result()}):
        fig = compare(runs, metrics=["wasted_slot_steps", "completed"])
        bars = dict(zip(fig.data[0].x, fig.data[0].y, strict=True))
        assert bars["sim"] == runs["sim"].summary()["wasted_slot_steps"] and np.isnan(bars["http"])
        assert has_note(fig, "http")
    with pytest.raises(ValueError, match="metrics: unknown"):
        compare({"http": failed_result()}, metrics=["wasted_slot_steps"])


def test_cdf_and_kv_blocks_say_which_runs_they_left_out():
    fig = latency_cdf({"ok": ok_result(), "faulty": failed_result()})
    assert len(fig.data) == 1 and has_note(fig, "faulty")
    fig = kv_blocks({"a": ok_result(), "http": failed_result()})
    assert len(fig.data) == 1 and has_note(fig, "http")


def test_kv_blocks_keeps_each_runs_colour_from_the_other_figures():
    runs = {"http": failed_result(), "sim": ok_result()}
    cdf_colour = latency_cdf({"http": ok_result(), "sim": ok_result()}).data[1].line.color
    assert kv_blocks(runs).data[0].line.color == cdf_colour  # run 2's colour, not run 1's


def test_goodput_axis_titles_carry_their_unit():
    from lab.viz._common import with_unit

    assert with_unit("request_goodput") == with_unit("goodput").replace("goodput", "request_goodput")
    assert with_unit("request_goodput").endswith("(req/s)")
