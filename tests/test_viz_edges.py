"""lab.viz at the edges: hover text that tells the truth, limits that must match the trace, bad times
and rates refused by name, and nothing dropped from a figure without a note."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lab.metrics import Result, StepRecord
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
from tests.test_viz import req  # one helper for both files

NAN, INF = float("nan"), float("inf")


def failure(rid, error, status="error"):
    return req(rid, 0.0, 0.1, None, 0.5, out=0, status=status, error=error)


def notes(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def simulated(max_num_seqs=4, num_blocks=64) -> Result:
    """A small simulated run: its trace has max_num_seqs slots per step and at most num_blocks blocks."""
    from lab.engine.config import EngineConfig
    from lab.sim import ConstantStepModel, simulate
    from lab.workload import RequestSpec, Workload

    config = EngineConfig(block_size=4, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=64, enable_prefix_caching=False)
    work = Workload([RequestSpec(f"r{i}", 0.3 * i, prompt_len=4 + i, output_len=3 + i % 3) for i in range(9)])
    return simulate(work, config, ConstantStepModel(0.1), label="a")


def multi_token(label="x"):
    return Result([req("a", 0, 0.1, 0.2, 1.0), req("b", 0.5, 0.6, 0.7, 1.5)], label=label)


def one_token(label="x"):
    """Every output is one token long: TPOT has no value (it skips the first token)."""
    return Result([req("a", 0, 0.1, 0.2, 0.2, out=1), req("b", 0.5, 0.6, 0.7, 0.7, out=1)], label=label)


# --- 1: the timeline's hover shows each phase's length, not where its bar ends ------------------------------------


def test_timeline_hover_duration_is_the_phase_length():
    fig = request_timeline(Result([req("a", 0.2, 0.5, 0.6, 1.0)]))
    queued = fig.data[0]
    assert queued.name == "queued" and list(queued.base) == [0.2]
    # %{x} on a bar placed with base= is base + length (0.5 here), not the 0.3 s the request queued
    assert "%{x" not in queued.hovertemplate and "(%{customdata[6]:.3f} s)" in queued.hovertemplate
    for bar in fig.data[:3]:
        assert [c[6] for c in bar.customdata] == pytest.approx(list(bar.x))
        assert [c[2] - c[1] for c in bar.customdata] == pytest.approx(list(bar.x))


# --- 2, 3: CDF hover at ties, and the legend of a single run --------------------------------------------------------


def test_cdf_hover_counts_every_tied_value():
    # TTFTs of 200, 200 and 300 ms: two thirds are at or below 200 ms; hover said 0%, 33% and 67% there
    r = Result([req("a", 0, 0.0, 0.2, 1.0), req("b", 0, 0.0, 0.2, 1.5), req("c", 0, 0.0, 0.3, 1.5)])
    t = latency_cdf(r).data[0]
    assert list(t.x) == pytest.approx([200.0, 200.0, 300.0])  # one point per distinct value (plus the 0 start)
    assert list(t.y) == pytest.approx([0.0, 2 / 3, 1.0])
    assert "%{customdata:.1%}" in t.hovertemplate and "%{y" not in t.hovertemplate
    # the leading point at 0 hovers the same true fraction as the point above it
    assert list(t.customdata) == pytest.approx([2 / 3, 2 / 3, 1.0])


def test_cdf_hover_fraction_is_at_or_below_each_value_with_many_ties():
    rng = np.random.default_rng(0)
    ttfts = rng.choice([0.1, 0.2, 0.25, 0.4], size=50)
    r = Result([req(f"r{i}", 0.0, 0.0, t, 1.0) for i, t in enumerate(ttfts)])
    t = latency_cdf(r).data[0]
    ms = ttfts * 1e3
    for x, frac in zip(t.x[1:], t.customdata[1:], strict=True):
        assert frac == pytest.approx(np.mean(ms <= x + 1e-9))


def test_cdf_of_one_run_shows_its_legend_with_the_failure_count():
    mix = Result([req("a", 0, 0.1, 0.2, 0.5), failure("b", "RuntimeError: x"), failure("c", "ValueError: long")],
                 label="mix")
    fig = latency_cdf(mix)
    assert len(fig.data) == 1 and "2 failed requests" in fig.data[0].name
    assert fig.layout.showlegend is True  # plotly hides a one-trace legend unless told


# --- 4: non-finite times ----------------------------------------------------------------------------------------------


def _with_bad_time(field: str, value) -> Result:
    bad = req("b", 0.0, 0.1, 0.3, 0.6)
    if field == "token_times_s":
        bad.token_times_s[2] = value
    else:
        setattr(bad, field, value)
    return Result([req("a", 0.0, 0.1, 0.2, 0.5), bad, req("c", 0.0, 0.1, 0.3, 0.7)], label="run")


@pytest.mark.parametrize("chart", [request_timeline, latency_cdf, retries_and_errors])
@pytest.mark.parametrize(("field", "value", "shown"), [
    ("first_token_s", NAN, "first_token_s = nan"),
    ("finish_s", INF, "finish_s = inf"),
    ("arrival_s", NAN, "arrival_s = nan"),
    ("arrival_s", None, "arrival_s = None"),
    ("first_scheduled_s", -INF, "first_scheduled_s = -inf"),
    ("token_times_s", NAN, r"token_times_s\[2\] = nan"),
])
def test_non_finite_times_are_refused_naming_the_request_and_field(chart, field, value, shown):
    # a NaN ended the CDF at NaN, a timeline bar vanished, and the buckets raised OverflowError
    with pytest.raises(ValueError, match=rf"^results?( \(run\))?: request 'b' has {shown}; times must be finite"):
        chart(_with_bad_time(field, value))


def test_times_not_reached_yet_are_fine():
    r = Result([req("a", 0.0, 0.1, 0.2, 0.5), req("q", 0.1, None, None, None, out=0, status="aborted")])
    for chart in (request_timeline, latency_cdf, retries_and_errors):
        assert chart(r).data


# --- 5-8: throughput against latency ------------------------------------------------------------------------------------


def test_tvl_note_names_the_empty_latency_column_not_a_cause():
    # both runs completed; p99_tpot_ms is NaN at 2/s because every output there is one token long
    fig = throughput_vs_latency([(1.0, multi_token()), (2.0, one_token())], latency="p99_tpot_ms")
    assert np.isnan(fig.data[0].y[1])
    assert notes(fig) == ["No p99_tpot_ms at 2/s: not drawn"]


def test_tvl_notes_a_missing_throughput_too():
    instant = Result([req("a", 1.0, 1.0, 1.0, 1.0, out=1), req("b", 1.0, 1.0, 1.0, 1.0, out=1)], label="x")
    assert np.isnan(instant.summary()["output_throughput"])  # no time span to divide by
    fig = throughput_vs_latency([(1.0, multi_token()), (2.0, instant)])
    assert notes(fig) == ["No output_throughput at 2/s: not drawn"]


def test_tvl_note_says_which_line_a_point_is_missing_from():
    data = [(1.0, multi_token("a")), (2.0, one_token("a")), (1.0, multi_token("b")), (2.0, multi_token("b"))]
    fig = throughput_vs_latency(data, latency="mean_tpot_ms")
    assert notes(fig) == ["No mean_tpot_ms at 2/s (a): not drawn"]
    assert not notes(throughput_vs_latency(data[2:], latency="mean_tpot_ms"))


def _sweeps() -> pd.DataFrame:
    def run(k):
        return Result([req("a", 0, 0.1, 0.2 * k, 1.0 * k), req("b", 0.5, 0.6, 0.7 * k, 1.5 * k)])

    return pd.DataFrame([{"request_rate": rate, "policy": policy} | run(k).summary()
                         for rate, policy, k in [(1, "static", 2), (1, "continuous", 1), (2, "static", 3),
                                                 (2, "continuous", 1.2)]])


def test_tvl_refuses_a_label_column_that_is_not_there():
    frame = _sweeps()
    with pytest.raises(ValueError, match=r"^label: no column 'polcy'"):
        throughput_vs_latency(frame, label="polcy")
    assert [t.name for t in throughput_vs_latency(frame, label="policy").data] == ["static", "continuous"]
    # the default may be missing: a frame of one sweep has no label column
    one = frame[frame.policy == "static"].drop(columns="policy")
    assert [t.name for t in throughput_vs_latency(one).data] == ["run"]


def test_tvl_refuses_two_runs_at_one_rate_in_one_line():
    # two sweeps that share a label were joined into one zigzag line: 2/s, 2/s, 8/s, 8/s
    data = [(rate, multi_token("sim")) for rate in (2.0, 8.0)] * 2
    with pytest.raises(ValueError, match=r"^data: items 0, 2 share label 'sim' and request_rate 2; .*own label"):
        throughput_vs_latency(data)
    with pytest.raises(ValueError, match=r"^data: rows 0, 1 share request_rate 1; .*label column"):
        throughput_vs_latency(_sweeps().drop(columns="policy"))
    with pytest.raises(ValueError, match=r"^data: rows 0, 1 share request_rate 1"):
        throughput_vs_latency(_sweeps(), label="request_rate")  # a label column that does not tell them apart
    fig = throughput_vs_latency([(2.0, multi_token("m=2")), (8.0, multi_token("m=2")), (2.0, multi_token("m=8"))])
    assert [(t.name, list(t.text)) for t in fig.data] == [("m=2", ["2/s", "8/s"]), ("m=8", ["2/s"])]


@pytest.mark.parametrize("rate", ["fast", None, NAN, -3, 0, True, "2"])
def test_tvl_refuses_a_rate_that_is_not_a_positive_number(rate):
    with pytest.raises(ValueError, match=r"^data: item 1 has request rate .*; expected a number of requests per second"):
        throughput_vs_latency([(1.0, multi_token()), (rate, multi_token("y"))])


def test_tvl_checks_a_frames_rate_column_but_not_another_parameter():
    frame = pd.DataFrame({"request_rate": [1.0, NAN], "output_throughput": [1.0, 2.0], "p99_e2el_ms": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"^rate: column 'request_rate' has nan in row 1"):
        throughput_vs_latency(frame)
    fig = throughput_vs_latency(frame.assign(request_rate=[1.0, INF]))
    assert list(fig.data[0].text) == ["1/s", "all at once"]
    # a sweep over something else (client concurrency) is not in requests per second
    fig = throughput_vs_latency(frame.rename(columns={"request_rate": "mode"}).assign(mode=["a", "b"]), rate="mode")
    assert list(fig.data[0].text) == ["mode a", "mode b"]


# --- 9: compare --------------------------------------------------------------------------------------------------------


def test_compare_notes_a_value_that_is_nan():
    fig = compare([multi_token("multi"), one_token("one-token")], metrics=["mean_tpot_ms", "request_throughput"])
    assert np.isnan(fig.data[0].y[1])
    assert fig.data[0].text[1] == ""  # no "nan" written on the empty slot: the note says why
    assert any("No value: mean_tpot_ms for one-token" in n for n in notes(fig))
    from lab.widgets import summary_html

    assert "nan" not in summary_html({"one-token": one_token("one-token")}, {"mean_tpot_ms": "TPOT"})
    assert not any("request_throughput for" in n for n in notes(fig))
    # a run with no completed request is named once, not once per metric
    failed = Result([failure("x", "boom")], label="faulty")
    texts = notes(compare([multi_token("multi"), failed], metrics=["mean_tpot_ms"]))
    assert any("No completed request in: faulty" in n for n in texts) and not any("No value:" in n for n in texts)


# --- 10: cost bars -------------------------------------------------------------------------------------------------------


def test_cost_bars_keep_rows_without_provider_or_model():
    frame = pd.DataFrame({"provider": ["a", "a", "b", None], "model": ["m1", None, "m1", "m2"],
                          "cost_usd": [1.0, 2.0, 3.0, 4.0]})
    fig = cost_bars(frame)
    assert sum(sum(t.y) for t in fig.data) == pytest.approx(10.0)  # was 4 of 10: two rows vanished
    bars = {(t.name, x): y for t in fig.data for x, y in zip(t.x, t.y, strict=True)}
    assert bars[("a", "(no model)")] == 2.0 and bars[("(no provider)", "m2")] == 4.0
    assert "2 row(s) without provider or model" in notes(fig)[0]
    assert not notes(cost_bars(frame.dropna()))


def test_cost_bars_name_unpriced_rows_without_a_provider():
    frame = pd.DataFrame({"provider": [None, "a"], "model": ["m", "m"], "cost_usd": [None, 1.0]})
    assert "No cost for: (no provider) · m" in notes(cost_bars(frame))[0]


@pytest.mark.parametrize("values", [["1.0", "2.0"], [1.0, "x"], [True, False]])
def test_cost_bars_refuse_a_cost_column_that_is_not_numbers(values):
    frame = pd.DataFrame({"provider": ["a", "b"], "model": ["m", "m"], "cost_usd": values})
    with pytest.raises(ValueError, match=r"^cost: column 'cost_usd' must hold numbers"):
        cost_bars(frame)


def test_cost_bars_accept_numbers_in_an_object_column():
    frame = pd.DataFrame({"provider": ["a", "b"], "model": ["m", "m"],
                          "cost_usd": pd.Series([1, 2.5], dtype=object)})
    assert [list(t.y) for t in cost_bars(frame).data] == [[1], [2.5]]


# --- 11: limit lines must match the trace -------------------------------------------------------------------------------


def test_occupancy_refuses_a_max_num_seqs_the_trace_contradicts():
    r = simulated(max_num_seqs=4)
    fig = batch_occupancy(r, max_num_seqs=4)  # the engine's own: drawn
    stacked = {sum(v) for v in zip(*(t.y for t in fig.data[:3]), strict=True)}
    assert stacked == {4} and fig.data[-1].name == "max_num_seqs = 4"
    with pytest.raises(ValueError, match=r"^max_num_seqs: 8 disagrees with the step trace: step 0 has 4 slots"):
        batch_occupancy(r, max_num_seqs=8)
    with pytest.raises(ValueError, match=r"^max_num_seqs: 2 disagrees"):
        batch_occupancy(r, max_num_seqs=2)


@pytest.mark.parametrize("limit", [2.5, 4.0, "4", True])
def test_occupancy_wants_a_whole_max_num_seqs(limit):
    with pytest.raises(ValueError, match=r"^max_num_seqs: expected a whole number >= 1 or None"):
        batch_occupancy(simulated(), max_num_seqs=limit)


def test_occupancy_accepts_a_numpy_integer():
    assert batch_occupancy(simulated(), max_num_seqs=np.int64(4)).data[-1].name == "max_num_seqs = 4"


def test_kv_blocks_refuses_a_capacity_below_the_peak():
    r = simulated(num_blocks=64)
    peak = max(s.kv_blocks_used for s in r.steps)
    assert peak > 3
    with pytest.raises(ValueError, match=rf"^capacity: 3 blocks, but run 'a' has {peak} in use at its peak"):
        kv_blocks(r, capacity=3)
    with pytest.raises(ValueError, match=rf"^capacity\['a'\]: 3 blocks, but run 'a' has {peak}"):
        kv_blocks({"a": r}, capacity={"a": 3})
    assert kv_blocks(r, capacity=peak).data[-1].name == f"capacity = {peak}"  # a full pool is possible
    assert kv_blocks(r, capacity=64).data[-1].name == "capacity = 64"


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"capacity": 64.0}, "capacity"), ({"capacity": 2.5}, "capacity"), ({"capacity": {"a": 64.5}}, r"capacity\['a'\]"),
    ({"block_size": 16.0}, "block_size"), ({"block_size": 2.5}, "block_size"),
])
def test_kv_blocks_wants_whole_numbers(kwargs, arg):
    with pytest.raises(ValueError, match=rf"^{arg}: expected a whole number >= 1 or None"):
        kv_blocks({"a": simulated()}, **kwargs)


# --- 12, 13: retries and errors --------------------------------------------------------------------------------------------


def test_retries_and_errors_refuses_more_than_ten_thousand_buckets(monkeypatch):
    from lab.viz import per_request

    r = Result([req("a", 0, 0.1, 0.2, 1.0), req("b", 0.5, 0.6, 0.7, 100.0)])  # a 100 s run
    built, real_bar = [], per_request.go.Bar
    monkeypatch.setattr(per_request.go, "Bar", lambda *a, **k: built.append(1) or real_bar(*a, **k))
    with pytest.raises(ValueError, match=r"^bucket_s: 0\.001 s makes 100,000 buckets .* use bucket_s >= 0\.01"):
        retries_and_errors(r, bucket_s=1e-3)
    assert built == []  # refused before building any bar of the 100,000 buckets
    assert len(retries_and_errors(r, bucket_s=0.01).data[0].x) <= 10_001


def test_retries_and_errors_counts_a_request_timed_before_every_arrival():
    # an error recorded with a time before the first arrival (another clock) fell in bucket -1 and the
    # bucket range, built from 0, left it out of every bar
    early = req("early", 5.0, None, None, 0.2, out=0, status="error", error="APITimeoutError: t")
    fig = retries_and_errors(Result([req("a", 0.5, 0.6, 0.7, 2.0), early]), bucket_s=0.5)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert sum(bars["error: APITimeoutError"].y) == 1 and sum(bars["ok"].y) == 1
    assert min(min(t.x) for t in bars.values()) >= 0.2  # no bar before the earliest time seen


def _bar_colors(result: Result) -> dict[str, str]:
    return {t.name: t.marker.color for t in retries_and_errors(result).data if t.type == "bar"}


def test_error_colours_follow_the_kind_not_its_rank():
    # RateLimitError was red where it was the commonest error and orange where it was not
    more_timeouts = Result([failure("a", "RateLimitError: 429"), failure("b", "APITimeoutError: t"),
                            failure("c", "APITimeoutError: t")])
    more_limits = Result([failure("a", "RateLimitError: 429"), failure("b", "RateLimitError: 429"),
                          failure("c", "APITimeoutError: t")])
    assert _bar_colors(more_timeouts) == _bar_colors(more_limits)
    alone = _bar_colors(Result([failure("a", "RateLimitError: 429")]))
    assert alone["error: RateLimitError"] == _bar_colors(more_limits)["error: RateLimitError"]


def test_each_aborted_and_unknown_kind_has_its_own_colour():
    r = Result([req("ok", 0, 0.1, 0.2, 0.5), failure("b", "cancelled: client left", "aborted"),
                failure("c", "shutdown: stopping", "aborted"), failure("d", None, "aborted"),
                failure("e", "weird: x", "aborted"), failure("f", "FooError: x"), failure("g", "BarError: y"),
                failure("h", "RateLimitError: 429")])
    colors = _bar_colors(r)
    assert len(colors) == 8 and len(set(colors.values())) == 8
    # an unknown kind's colour does not depend on how often it occurred
    again = _bar_colors(Result(r.requests + [failure("i", "FooError: x")] * 3))
    assert again == colors


# --- 14: KV hover gives x with its unit ------------------------------------------------------------------------------------


def test_kv_blocks_hover_formats_x_with_its_unit():
    steps = [StepRecord(step=i, start_s=0.1 * i, duration_s=0.1, prefill_tokens=0, decode_seqs=1, num_running=1,
                        num_waiting=0, kv_blocks_used=2) for i in range(3)]
    r = Result([req("a", 0, 0.1, 0.2, 1.0)], steps=steps)
    assert "blocks at %{x:.3f} s" in kv_blocks(r).data[0].hovertemplate  # was "at 0.30000000000000004"
    assert "blocks at step %{x}" in kv_blocks(r, x="step").data[0].hovertemplate
