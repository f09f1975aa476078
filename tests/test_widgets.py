"""The playgrounds build, and one interaction each changes what their figures show."""

from __future__ import annotations

import copy

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


def test_the_cost_playgrounds_sliders_wait_for_their_release():
    """Its sliders redrew the table and figure at each step of a drag (~30 ms each),
    queueing dozens of redraws; the others already waited for the release."""
    import ipywidgets

    sliders = [c for c in widgets.cost_playground().controls.values()
               if isinstance(c, ipywidgets.widgets.widget_int._Int | ipywidgets.widgets.widget_float._Float)
               and hasattr(c, "continuous_update")]
    assert len(sliders) >= 3 and not any(c.continuous_update for c in sliders)


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


def test_cost_playground_refuses_fewer_than_one_request_and_names_the_field():
    pg = widgets.cost_playground()
    c = pg.controls
    c["requests"].value = 100
    bars = [tuple(t.y) for t in pg.figures["cost"].data]
    for bad in (0, -5):  # were priced as 1 request, with no word said
        c["requests"].value = bad
        assert "requests" in pg.status.value and f"got {bad}" in pg.status.value and "cheapest" not in pg.status.value
        assert set(pg.results["frame"]["requests"]) == {100}  # the last valid count, not 1
        assert [tuple(t.y) for t in pg.figures["cost"].data] == bars
    c["requests"].value = 200
    assert pg.status.value.startswith("cheapest") and set(pg.results["frame"]["requests"]) == {200}


def test_cost_playground_says_why_nothing_is_priced():
    pg = widgets.cost_playground()
    c = pg.controls
    from lab.cost.prices import default_prices

    no_batch = tuple(p for p in c["providers"].options
                     if not any(row.offers_batch for row in default_prices().rows if row.provider == p))
    assert no_batch  # some providers in the table offer no batch API
    c["providers"].value, c["batch"].value = no_batch, True
    # the status read "cheapest: " and the chart "No priced rows to plot.", with no reason given
    assert "nothing to price" in pg.status.value and "batch API" in pg.status.value
    c["batch"].value = False
    assert pg.status.value.startswith("cheapest: ") and "$" in pg.status.value


def test_cost_playground_status_tells_small_costs_apart():
    import re

    pg = widgets.cost_playground()
    pg.controls["requests"].value = 1  # one request costs a fraction of a cent at every provider
    shown = [v.replace(",", "") for v in re.findall(r"\$(\d[\d,]*(?:\.\d+)?)", pg.status.value)]
    frame = pg.results["frame"].dropna(subset=["cost_usd"])
    assert len(shown) == 3 and "0.00" not in shown  # two decimals showed each as $0.00
    assert [float(v) for v in shown] == pytest.approx(list(frame["cost_usd"].head(3)), rel=5e-3)
    assert [float(v) for v in shown] == sorted(float(v) for v in shown)
    from lab.widgets.costs import _dollars

    assert (_dollars(1234.5), _dollars(0.0042), _dollars(0.004216), _dollars(0.0)) == (
        "$1,234.50", "$0.0042", "$0.00422", "$0")


def _kv_run(pg) -> tuple[int, dict, int]:
    """Preemptions, summary and prefill tokens computed of the kv playground's last simulation."""
    result = pg.results["simulator"]
    return (sum(s.num_preempted for s in result.steps), result.summary(),
            sum(s.prefill_tokens for s in result.steps))


def test_kv_cache_playground_fewer_blocks_preempt_more_and_finish_slower():
    pg = widgets.kv_cache_playground()
    pg.controls["prefix_len"].value = 0  # no sharing: the cache size alone decides
    seen = {}
    for blocks in (512, 128, 64, 48):
        pg.controls["num_blocks"].value = blocks
        seen[blocks] = _kv_run(pg)
        kv = pg.figures["kv"]
        assert f"capacity = {blocks}" in {t.name for t in kv.data}  # the pool's line moves with the slider
        assert max(max(t.y) for t in kv.data) <= blocks
        assert f"<b>{seen[blocks][0]}</b> preemptions" in pg.status.value
    preempted = [seen[b][0] for b in (512, 128, 64, 48)]
    throughput = [seen[b][1]["output_throughput"] for b in (512, 128, 64, 48)]
    assert preempted == sorted(preempted) and preempted[0] == 0 < preempted[-1]
    assert throughput == sorted(throughput, reverse=True) and throughput[-1] < throughput[0]
    assert all(s["completed"] == 32 for _, s, _ in seen.values())  # slower, never lost


def test_kv_cache_playground_prefix_caching_cuts_ttft_only_with_a_shared_prefix():
    pg = widgets.kv_cache_playground()
    pg.controls["num_blocks"].value = 512  # room for everyone: no preemption muddies the comparison
    seen = {}
    for prefix in (0, 256):
        pg.controls["prefix_len"].value = prefix
        for caching in (True, False):
            pg.controls["prefix_caching"].value = caching
            seen[prefix, caching] = _kv_run(pg)
    assert seen[256, True][1]["mean_ttft_ms"] < seen[256, False][1]["mean_ttft_ms"]
    assert seen[256, True][2] < seen[256, False][2]  # the shared prefix is computed once, not per request
    # nothing shared, nothing to reuse: the same run either way
    assert seen[0, True][1]["mean_ttft_ms"] == seen[0, False][1]["mean_ttft_ms"]
    assert seen[0, True][2] == seen[0, False][2]


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


def _browser_layout(fig) -> dict:
    """The layout the browser shows: the one at display, then each layout message from Python merged
    in key by key as the frontend does (Plotly.relayout: a value replaces the key, None removes it)."""
    shown = copy.deepcopy(fig.layout.to_plotly_json())

    def merge(data):
        for path, value in (data or {}).items():
            *parents, leaf = path.split(".")
            node = shown
            for key in parents:
                node = node.setdefault(key, {})
            if value is None:
                node.pop(leaf, None)
            else:
                node[leaf] = copy.deepcopy(value)

    fig.observe(lambda change: change["new"] and merge(change["new"]["relayout_data"]), names="_py2js_relayout")
    fig.observe(lambda change: change["new"] and merge(change["new"].get("layout_data")), names="_py2js_update")
    return shown


def test_a_figure_replaced_in_place_drops_the_old_figures_note_in_the_browser():
    pg = widgets.cost_playground()
    fig = pg.figures["cost"]
    shown = _browser_layout(fig)
    pg.controls["providers"].value = ()  # nothing to plot: an empty figure that says so
    assert "No priced rows" in shown["annotations"][0]["text"]
    pg.controls["providers"].value = ("openai",)
    # the note, and the empty figure's hidden axes, stayed on screen over the new bars
    assert "annotations" not in shown and shown == fig.layout.to_plotly_json()
