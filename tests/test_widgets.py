"""The playgrounds build, and one interaction each changes what their figures show."""

from __future__ import annotations

import pytest
from helpers_server import tiny_llm, tiny_model_dir

from lab import widgets


def _ys(fig) -> list:
    return [tuple(t.y) if t.y is not None else () for t in fig.data]


def test_batching_playground_simulates_at_once_and_runs_the_engine_on_click():
    pg = widgets.batching_playground(tiny_model_dir(), n=12)
    assert "simulator" in pg.results and pg.figures["timeline"].data
    static = pg.results["simulator"].summary()
    before = _ys(pg.figures["occupancy"])
    pg.controls["policy"].value = "continuous"
    assert _ys(pg.figures["occupancy"]) != before
    assert pg.results["simulator"].summary()["wasted_slot_steps"] <= static["wasted_slot_steps"]
    pg.controls["run_engine"].click()
    engine = pg.results["engine"]
    assert len(engine.completed) == 12 and engine.steps
    assert "engine" in pg.status.value and not pg.controls["run_engine"].disabled


def test_each_engine_run_starts_fresh_like_the_simulator():
    pg = widgets.batching_playground(tiny_model_dir(), n=12)
    runs = []
    for _ in range(2):  # a reused engine served the second run's prompts from its prefix cache
        pg.controls["run_engine"].click()
        runs.append(pg.results["engine"])
    prefill = [sum(s.prefill_tokens for s in r.steps) for r in runs]
    assert prefill[0] == prefill[1] and runs[1].steps[0].step == 0


def test_a_failing_button_says_why_in_the_status_line():
    pg = widgets.batching_playground("/no/such/model", n=4)
    pg.controls["run_engine"].click()  # ipywidgets would log this where nobody looks
    assert "FileNotFoundError" in pg.status.value and "/no/such/model" in pg.status.value
    assert not pg.controls["run_engine"].disabled


def test_batching_playground_rate_slider_moves_arrivals():
    pg = widgets.batching_playground(tiny_model_dir(), n=12)
    first = max(r.arrival_s for r in pg.results["simulator"].requests)
    pg.controls["rate"].value = 200.0
    assert max(r.arrival_s for r in pg.results["simulator"].requests) < first


def test_cost_playground_updates_bars_and_filters_providers():
    pg = widgets.cost_playground()
    before = [tuple(t.y) for t in pg.figures["cost"].data]
    pg.controls["output_tokens"].value = 2000
    after = [tuple(t.y) for t in pg.figures["cost"].data]
    assert after != before and sum(map(sum, after)) > sum(map(sum, before))
    pg.controls["providers"].value = ("openai",)
    assert {t.name for t in pg.figures["cost"].data} == {"openai"}
    assert "openai" in pg.status.value


def test_cost_playground_table_counts_every_request():
    from lab.cost import usage_cost

    pg = widgets.cost_playground()
    c = pg.controls
    c["requests"].value, c["prompt_tokens"].value, c["output_tokens"].value = 1000, 801, 300
    c["cached_fraction"].value = 0.5
    row = pg.results["frame"].set_index(["provider", "model"]).loc[("openai", "gpt-4.1")]
    # the table shows the whole workload's tokens; half of 801,000 prompt tokens is 400,500 cached
    # (rounding 400.5 per request would have said 400,000 or 401,000)
    assert (row.requests, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (1000, 801_000, 400_500, 300_000)
    assert row.cost_usd == pytest.approx(usage_cost("gpt-4.1", 801_000, 300_000, cached_tokens=400_500))


def _accounted_once(result, status_html: str, ids: list[str], max_tokens: int) -> tuple[list, list]:
    """Every request of the workload exactly once, each ended ok (a whole answer) or with its error;
    the playground's status line counts what the result holds."""
    assert sorted(r.request_id for r in result.requests) == sorted(ids)
    ok = [r for r in result.requests if r.ok]
    failed = [r for r in result.requests if not r.ok]
    assert all(r.finish_reason == "length" and r.output_tokens == max_tokens and r.error is None for r in ok)
    assert all(r.status == "error" and r.error for r in failed)
    assert f"<b>{len(ok)}</b> ok · <b>{len(failed)}</b> failed" in status_html
    return ok, failed


def test_faults_playground_accounts_for_every_request_once():
    from lab.server import serve
    from lab.workload import synthetic

    ids = [spec.id for spec in synthetic(8)]  # the ids of the playground's workload (n=8)
    with serve(llm=tiny_llm(), api_keys=["sk-widgets"]) as server:
        pg = widgets.faults_playground(server, api_key="sk-widgets", n=8, max_tokens=4)
        assert not pg.figures["outcomes"].data
        pg.controls["p429"].value = 0.0
        pg.controls["p504"].value = 0.5
        pg.controls["max_retries"].value = 0
        pg.controls["send"].click()
        ok, failed = _accounted_once(pg.results["http"], pg.status.value, ids, max_tokens=4)
        assert ok and failed and pg.figures["outcomes"].data
        assert all(r.error.startswith("InternalServerError") and r.retries == 0 for r in failed)
        assert server.faults is None  # the playground leaves the server as it found it
        assert pg.controls["p429"].max + pg.controls["p504"].max <= 1.0  # no setting the server refuses

        # cut streams: never retried (the caller already holds part of the answer), each one its own error
        pg.controls["p504"].value = 0.0
        pg.controls["cut"].value = 0.5
        pg.controls["max_retries"].value = 3
        pg.controls["send"].click()
        ok, failed = _accounted_once(pg.results["http"], pg.status.value, ids, max_tokens=4)
        assert ok and failed
        assert all(r.error.startswith("StreamInterruptedError") and r.retries == 0 for r in failed)
        assert server.faults is None


def test_faults_playground_restores_the_servers_faults_and_notices_a_closed_server():
    from lab.server import FaultConfig, serve

    with serve(llm=tiny_llm("widgets-faults")) as server:
        mine = FaultConfig(latency_s=0.01, seed=3)
        server.faults = mine
        pg = widgets.faults_playground(server, n=4, max_tokens=2)
        pg.controls["send"].click()
        assert server.faults == mine  # restored, not reset to None
    pg.controls["send"].click()  # after the server closed: a message, not a silent connection error
    assert "server has been closed" in pg.status.value
