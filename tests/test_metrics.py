"""lab.metrics: vllm-bench-serve definitions on hand-built requests (TPOT, ITL, goodput, duration)."""

import math
import re

import pytest

from lab.metrics import RequestMetrics, Result, StepRecord


def _req(rid, arrival, times, status="ok"):
    return RequestMetrics(
        rid,
        arrival,
        prompt_tokens=10,
        output_tokens=len(times),
        first_token_s=times[0],
        finish_s=times[-1],
        token_times_s=list(times),
        status=status,
    )


@pytest.fixture
def result():
    return Result(
        [
            _req("a", 0.0, [0.1, 0.2, 0.4]),  # ttft 100 ms, tpot (0.4-0.1)/2 = 150 ms, itl 100, 200
            _req("b", 1.0, [1.5]),  # ttft 500, one token: no tpot, no itl
            _req("c", 2.0, [2.2, 2.3, 2.4, 2.5]),  # ttft 200, tpot 100, itl 100 x3
            RequestMetrics("d", 3.0, prompt_tokens=10, status="error", error="boom"),
        ]
    )


def test_counts_duration_and_throughput(result):
    s = result.summary()
    assert s["completed"] == 3 and s["failed"] == 1
    assert s["duration_s"] == pytest.approx(2.5)  # first arrival 0 -> last finish 2.5
    assert s["total_input_tokens"] == 30 and s["total_output_tokens"] == 8
    assert s["request_throughput"] == pytest.approx(3 / 2.5)
    assert s["output_throughput"] == pytest.approx(8 / 2.5)
    assert s["total_token_throughput"] == pytest.approx(38 / 2.5)


def test_latency_stats_match_vllm_definitions(result):
    s = result.summary()
    assert s["mean_ttft_ms"] == pytest.approx((100 + 500 + 200) / 3)
    assert s["median_ttft_ms"] == pytest.approx(200)
    assert s["mean_tpot_ms"] == pytest.approx(125)  # (150 + 100) / 2: one-token request skipped
    assert s["mean_itl_ms"] == pytest.approx(600 / 5)  # gaps 100, 200, 100, 100, 100 pooled
    assert s["p99_itl_ms"] == pytest.approx(196)  # numpy linear interpolation, as vLLM
    assert s["std_ttft_ms"] == pytest.approx(
        math.sqrt(((100 - 800 / 3) ** 2 + (500 - 800 / 3) ** 2 + (200 - 800 / 3) ** 2) / 3)
    )
    assert s["mean_e2el_ms"] == pytest.approx((400 + 500 + 500) / 3)


def test_goodput_counts_requests_meeting_every_slo(result):
    # ttft <= 250 ms keeps a and c; tpot <= 120 ms then drops a (150); b (one token) passes any tpot limit
    assert result.summary({"ttft": 250})["goodput"] == pytest.approx(2 / 2.5)
    s = result.summary({"ttft": 250, "tpot": 120})
    assert s["goodput"] == s["request_goodput"] == pytest.approx(1 / 2.5)
    assert result.summary({"tpot": 120})["goodput"] == pytest.approx(2 / 2.5)
    with pytest.raises(ValueError, match="allowed: ttft, tpot, e2el"):
        result.summary({"itl": 5})


def test_empty_result_is_nan_not_an_error():
    s = Result([RequestMetrics("x", 0.0, status="error")]).summary()
    assert s["completed"] == 0 and s["failed"] == 1 and math.isnan(s["mean_ttft_ms"])
    # nothing completed is 0 per second, not NaN: every request here was refused before it finished
    assert s["request_throughput"] == s["output_throughput"] == s["total_token_throughput"] == 0.0
    assert Result([RequestMetrics("x", 0.0, status="error")]).summary({"ttft": 100})["goodput"] == 0.0


@pytest.mark.parametrize("duration", [-2.0, 0, float("nan"), float("inf"), "5"])
def test_a_given_duration_must_be_positive_seconds(result, duration):
    with pytest.raises(ValueError, match=re.escape(f"duration_s: must be a number of seconds > 0, or None, got {duration!r}")):
        Result(result.requests, duration_s=duration).summary()
    assert Result(result.requests, duration_s=4.0).summary()["request_throughput"] == pytest.approx(3 / 4)


def test_frames_and_merge(result):
    df = result.to_frame()
    assert list(df.request_id) == ["a", "b", "c", "d"] and df.loc[0, "tpot_s"] == pytest.approx(0.15)
    steps = [
        StepRecord(0, 1.0, 0.1, 4, 0, 1, 0, 2, batch=[("a", 4)], replica=1),
        StepRecord(0, 0.5, 0.1, 0, 2, 2, 0, 3, batch=[("b", 1), ("c", 1)]),
    ]
    merged = Result.merge([Result(result.requests[:2], steps[:1]), Result(result.requests[2:], steps[1:])])
    assert len(merged.requests) == 4 and [s.start_s for s in merged.steps] == [0.5, 1.0]
    frame = merged.steps_frame()
    assert list(frame.replica) == [0, 1] and list(frame.num_tokens) == [2, 4]


@pytest.mark.parametrize("slo, message", [
    ({"ttft": float("nan")}, "slo_ms['ttft']: must be a finite number of milliseconds > 0, got nan"),
    ({"e2el": "200"}, "slo_ms['e2el']: must be a finite number of milliseconds > 0, got '200'"),
    ({"tpot": 0}, "slo_ms['tpot']: must be a finite number of milliseconds > 0, got 0"),
])
def test_goodput_slo_limits_are_checked(result, slo, message):
    # a NaN limit used to count every request as good
    with pytest.raises(ValueError, match=re.escape(message)):
        result.summary(slo)


TIME_COLUMNS = ["arrival_s", "first_scheduled_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s", "queue_s"]


def test_frame_columns_and_dtypes_do_not_depend_on_the_rows(result):
    # an empty Result used to give a frame with no columns, and a column with no value (all
    # failed, or no first_scheduled_s over HTTP) was dtype object, so .mean() and plots failed
    full = result.to_frame()
    for res in (Result([]), Result([RequestMetrics("x", 0.0, status="error")]), result):
        df = res.to_frame()
        assert list(df.columns) == list(full.columns)
        assert all(df[c].dtype == "float64" for c in TIME_COLUMNS), df.dtypes
        # text columns too: pandas 3 infers str when a column has a string, object when it has none
        assert df.dtypes.to_dict() == full.dtypes.to_dict(), df.dtypes
        assert all(df[c].dtype == object for c in ("request_id", "status", "finish_reason", "error"))
    # a missing text is None whether or not other rows have one (it was NaN beside a string)
    assert list(result.to_frame().error) == [None, None, None, "boom"]
    assert math.isnan(Result([RequestMetrics("x", 0.0, status="error")]).to_frame().ttft_s.mean())


def test_goodput_compares_in_seconds_as_vllm():
    # vLLM counts a request good when limit_ms / 1000 >= latency_s. Here e2e = 14.223 - 12.345 is
    # 1.8780000000000001 s in floating point: over a 1878 ms limit for vLLM, though 1e3 * e2e
    # rounds to exactly 1878.0
    r = Result([_req("a", 12.345, [14.0, 14.223])])
    assert r.summary({"e2el": 1878})["goodput"] == 0
    assert r.summary({"e2el": 1879})["goodput"] > 0


@pytest.mark.parametrize("slo", [200, ["ttft"], "ttft", 0])
def test_goodput_slo_must_be_a_dict(result, slo):
    # summary(200) used to fail with "'int' object is not iterable" (a list: no attribute 'items';
    # 0: no goodput and no word)
    with pytest.raises(ValueError, match=re.escape("slo_ms: must be a dict of limits in ms")):
        result.summary(slo)
    assert "goodput" not in result.summary({})  # vLLM: no goodput without limits


def test_steps_frame_columns_do_not_depend_on_the_steps(result):
    # a run with no step trace (over HTTP) gave a frame with no columns: df.start_s raised
    steps = [StepRecord(0, 0.5, 0.1, 4, 0, 1, 0, 2, batch=[("a", 4)])]
    full = Result(result.requests, steps).steps_frame()
    empty = result.steps_frame()
    assert list(empty.columns) == list(full.columns) and "num_tokens" in empty.columns
    assert (empty.dtypes == full.dtypes).all(), empty.dtypes
    assert full.loc[0, "num_tokens"] == 4 and full.loc[0, "start_s"] == 0.5


def test_json_ready_writes_standard_json_for_empty_averages():
    import json

    from lab.metrics import json_ready

    # one request with a one-token output: TPOT has nothing to average, and json.dump wrote NaN
    r = RequestMetrics("a", arrival_s=0.0, prompt_tokens=4, output_tokens=1, first_token_s=0.1, finish_s=0.1,
                       token_times_s=[0.1])
    summary = Result([r]).summary()
    assert math.isnan(summary["mean_tpot_ms"])
    text = json.dumps(json_ready({"summary": summary, "rate": float("inf")}), allow_nan=False)
    back = json.loads(text)
    assert back["summary"]["mean_tpot_ms"] is None and back["rate"] is None
    assert back["summary"]["completed"] == 1 and back["summary"]["mean_ttft_ms"] == summary["mean_ttft_ms"]
