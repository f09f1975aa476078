"""lab.cost: hand-computed prices, table validation, reseller deals, self-hosted cost per token."""

import math
import re
from datetime import date, timedelta

import numpy as np
import pytest

from lab.cost import (
    PriceTable,
    PriceTableError,
    TokenCounts,
    UnknownGpuError,
    UnknownModelError,
    break_even,
    cost_table,
    effective_usd_price,
    exchange_deal_savings,
    gpu_price,
    load_gpu_prices,
    load_prices,
    market_rate_for_savings,
    self_hosted_usd_per_mtok,
    usage_cost,
)
from lab.engine.config import EngineConfig
from lab.lengths import Uniform
from lab.metrics import RequestMetrics, Result
from lab.sim import GPUS, ConstantStepModel, simulate
from lab.workload import RequestSpec, Workload, synthetic

HEADER = (
    "provider,model,input_per_mtok,cached_input_per_mtok,output_per_mtok,batch_input_per_mtok,"
    "batch_output_per_mtok,currency,credit_cny_per_usd,list_price_of,source_url,seen,verification,notes\n"
)
URL = "https://example.com/pricing"
ROWS = {
    "acme": f"acme,model-x,2.00,0.50,8.00,1.00,4.00,USD,,,{URL},2026-11-23,cross_checked,\n",
    "nobatch": f"cheapco,model-y,0.28,0.028,0.42,,,USD,,,{URL},2026-11-23,single_source,\n",
    "reseller": f"resell,model-x,,,,,,CNY,1.0,acme,{URL},2026-11-23,provider_claim,\n",
}


def write_table(tmp_path, *lines, name="prices.csv"):
    path = tmp_path / name
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return path


GPU_HEADER = "gpu,memory_gb,provider,offering,usd_per_gpu_hour,source_url,seen,notes\n"


def write_gpu_table(tmp_path, *lines, encoding="utf-8"):
    path = tmp_path / "gpu_prices.csv"
    path.write_text(GPU_HEADER + "".join(lines), encoding=encoding)
    return path


@pytest.fixture
def table(tmp_path):
    return load_prices(write_table(tmp_path, *ROWS.values()))


# --- hand-computed usage costs -------------------------------------------------------------------


def test_plain_cost(table):
    # 1000 x $2/M + 500 x $8/M = 0.002 + 0.004
    assert usage_cost("model-x", 1000, 500, prices=table) == pytest.approx(0.006)


def test_cached_input_cost(table):
    # 600 uncached x $2/M + 400 cached x $0.50/M + 500 x $8/M = 0.0012 + 0.0002 + 0.004
    assert usage_cost("model-x", 1000, 500, cached_tokens=400, prices=table) == pytest.approx(0.0054)


def test_batch_discount(table):
    # 1000 x $1/M + 500 x $4/M = 0.003: half the plain 0.006
    assert usage_cost("model-x", 1000, 500, batch=True, prices=table) == pytest.approx(0.003)
    # cached tokens get the batch discount too: 0.50 x (1/2) = 0.25 per M
    assert usage_cost("model-x", 1000, 500, 400, batch=True, prices=table) == pytest.approx(0.0027)


def test_batch_refused_where_not_offered(table):
    with pytest.raises(ValueError, match="cheapco/model-y has no batch prices"):
        usage_cost("model-y", 10, 10, batch=True, prices=table)


def test_reseller_exchange_deal(table):
    # 1M output tokens at $8 list, bought at CNY 1 per credit dollar, market CNY 8 per USD: $8 x 1/8 = $1
    cost = usage_cost("model-x", 0, 1_000_000, provider="resell", market_cny_per_usd=8.0, prices=table)
    assert cost == pytest.approx(1.00)
    assert effective_usd_price(8.00, 1.0, 7.3) == pytest.approx(8.00 / 7.3)


@pytest.mark.parametrize("market", [float("nan"), float("inf"), 0, "7.3"])
def test_a_market_rate_must_be_a_finite_positive_number(table, market):
    # nan and inf came out as a nan or a $0 cost
    with pytest.raises(ValueError, match="market_cny_per_usd must be a finite number > 0"):
        usage_cost("model-x", 0, 1_000_000, provider="resell", market_cny_per_usd=market, prices=table)
    with pytest.raises(ValueError, match="market_cny_per_usd must be a finite number > 0"):
        effective_usd_price(8.00, 1.0, market)


def test_where_85_percent_comes_from():
    assert exchange_deal_savings(7.3) == pytest.approx(1 - 1 / 7.3)  # 86.3%
    assert exchange_deal_savings(7.3) > 0.85
    assert market_rate_for_savings(0.85) == pytest.approx(1 / 0.15)  # CNY 6.67 per USD
    assert exchange_deal_savings(6.0) < 0.85  # at CNY 6 per USD the claim fails
    from lab.cost import explain_exchange_deal

    # the threshold is arithmetic; the "not verified" belongs to the reseller's claim, not to it
    assert explain_exchange_deal(7.3).splitlines()[-1] == (
        "'85%' (the reseller's claim, not verified) needs a market rate of at least CNY 6.67 per USD")


def test_without_provider_the_direct_seller_is_chosen(table):
    assert usage_cost("model-x", 1000, 500, prices=table) == usage_cost(
        "model-x", 1000, 500, provider="acme", prices=table
    )


def test_dated_snapshot_priced_as_base_model(table):
    assert usage_cost("model-x-2025-04-14", 1000, 500, prices=table) == pytest.approx(0.006)


def test_bad_token_counts(table):
    with pytest.raises(ValueError, match="cached_tokens .* cannot exceed prompt_tokens"):
        usage_cost("model-x", 10, 5, cached_tokens=11, prices=table)
    with pytest.raises(ValueError, match="completion_tokens must be an integer >= 0, got -1"):
        usage_cost("model-x", 10, -1, prices=table)


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownModelError) as err:
        usage_cost("gpt-4.2-mini", 10, 10)
    assert isinstance(err.value, ValueError)
    assert "gpt-4.1-mini" in str(err.value)


# --- the table loader ----------------------------------------------------------------------------


def test_loader_rejects_negative_price(tmp_path):
    bad = f"acme,model-z,-1.00,,8.00,,,USD,,,{URL},2026-11-23,cross_checked,\n"
    path = write_table(tmp_path, ROWS["acme"], bad)
    message = r"line 3 \(acme/model-z\): input_per_mtok must be a finite number >= 0"
    with pytest.raises(PriceTableError, match=message):
        load_prices(path)


def test_loader_rejects_missing_source(tmp_path):
    bad = "acme,model-z,1.00,,8.00,,,USD,,,,2026-11-23,cross_checked,\n"
    with pytest.raises(PriceTableError, match=r"line 2 \(acme/model-z\): source_url must be"):
        load_prices(write_table(tmp_path, bad))


def test_loader_rejects_unknown_currency(tmp_path):
    bad = f"acme,model-z,1.00,,8.00,,,EUR,,,{URL},2026-11-23,cross_checked,\n"
    with pytest.raises(PriceTableError, match=r"line 2 \(acme/model-z\): currency must be one of USD, CNY"):
        load_prices(write_table(tmp_path, bad))


def test_loader_rejects_reseller_with_its_own_prices(tmp_path):
    bad = f"resell,model-x,9.00,,9.00,,,CNY,1.0,acme,{URL},2026-11-23,provider_claim,\n"
    with pytest.raises(PriceTableError, match="leave the price columns empty"):
        load_prices(write_table(tmp_path, ROWS["acme"], bad))


def test_loader_rejects_a_reseller_row_not_marked_as_a_claim(tmp_path):
    bad = f"resell,model-x,,,,,,CNY,1.0,acme,{URL},2026-11-23,cross_checked,\n"
    with pytest.raises(PriceTableError, match=r"line 3 \(resell/model-x\): verification must be provider_claim"):
        load_prices(write_table(tmp_path, ROWS["acme"], bad))


@pytest.mark.parametrize("prices, field", [
    ("1.00,2.00,8.00,,", "cached_input_per_mtok"),  # cached input dearer than input: a typo
    ("1.00,,8.00,1.50,4.00", "batch_input_per_mtok"),
    ("1.00,,8.00,0.50,9.00", "batch_output_per_mtok"),
])
def test_loader_rejects_a_discount_above_its_list_price(tmp_path, prices, field):
    bad = f"acme,model-z,{prices},USD,,,{URL},2026-11-23,cross_checked,\n"
    with pytest.raises(PriceTableError, match=rf"line 2 \(acme/model-z\): {field} \(.*\) must not exceed"):
        load_prices(write_table(tmp_path, bad))


def test_shipped_table_has_the_required_models_with_sources():
    table = load_prices()
    required = {
        ("openai", "gpt-4.1"),
        ("openai", "gpt-4.1-mini"),
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-sonnet-4.5"),
        ("google", "gemini-2.5-flash"),
        ("google", "gemini-2.5-pro"),
        ("deepseek", "deepseek-v3.2"),
    }
    assert required <= {(r.provider, r.model) for r in table.rows}
    assert all(r.source_url.startswith("https://") and r.seen.year >= 2025 for r in table.rows)
    assert all(r.verification == "provider_claim" for r in table.rows if r.is_reseller)


def test_shipped_gpu_table():
    rows = load_gpu_prices()
    assert {"H100 SXM", "H200", "A100 80GB", "L4"} <= {r.gpu for r in rows}
    assert gpu_price("h100 sxm").usd_per_gpu_hour == min(
        r.usd_per_gpu_hour for r in rows if r.gpu == "H100 SXM"
    )
    with pytest.raises(UnknownGpuError, match="H100 SXM"):
        gpu_price("H100 SMX")


@pytest.mark.parametrize("name", ["H100-SXM", "A100-80GB", "H200", "L4"])
def test_gpu_price_accepts_the_simulators_gpu_names(name):
    # lab.sim spells "H100-SXM", the price table "H100 SXM": the lookup ignores case, spaces, - and _
    row = gpu_price(name)
    assert row.memory_gb == GPUS[name].memory_gb
    assert gpu_price(name.lower().replace("-", "_")) == row
    assert gpu_price(name, provider="runpod").provider == "runpod"


def test_unknown_gpu_name_error_names_the_field_and_the_choices():
    with pytest.raises(
        UnknownGpuError, match=r"^gpu: no price for 'H100-PCIe'.*closest GPUs: H100 SXM.*known:"
    ):
        gpu_price("H100-PCIe")
    with pytest.raises(UnknownGpuError, match=r"provider='lambda'"):
        gpu_price("H200", provider="lambda")


def test_gpu_loader_rejects_negative_price(tmp_path):
    path = write_gpu_table(tmp_path, f"H100 SXM,80,acme,pod,-2.0,{URL},2026-11-23,\n")
    with pytest.raises(PriceTableError, match=r"line 2 \(acme/H100 SXM\): usd_per_gpu_hour"):
        load_gpu_prices(path)


# --- cost of a run under every provider ----------------------------------------------------------


def test_cost_table_for_a_workload(table):
    work = Workload([RequestSpec(id=f"r{i}", prompt_len=1000, output_len=500) for i in range(2)])
    frame = cost_table(work, prices=table, market_cny_per_usd=8.0)
    by_key = frame.set_index(["provider", "model"])["cost_usd"]
    assert by_key["acme", "model-x"] == pytest.approx(0.012)  # 2 x 0.006
    assert by_key["resell", "model-x"] == pytest.approx(0.012 / 8.0)
    assert by_key["cheapco", "model-y"] == pytest.approx((2000 * 0.28 + 1000 * 0.42) / 1e6)
    assert list(frame["cost_usd"]) == sorted(frame["cost_usd"])
    batched = cost_table(work, batch=True, prices=table).set_index(["provider", "model"])
    assert math.isnan(batched.loc[("cheapco", "model-y"), "cost_usd"])
    assert batched.loc[("cheapco", "model-y"), "note"] == "no batch API"


def test_cost_table_for_a_result_counts_completed_requests_only(table):
    ok = RequestMetrics("a", 0.0, prompt_tokens=1000, output_tokens=500, finish_s=1.0)
    failed = RequestMetrics("b", 0.0, prompt_tokens=1000, output_tokens=0, status="error")
    frame = cost_table(Result([ok, failed]), prices=table).set_index(["provider", "model"])
    assert frame.loc[("acme", "model-x"), "cost_usd"] == pytest.approx(0.006)
    assert frame.loc[("acme", "model-x"), "requests"] == 1
    # the failed request left out is counted in the frame, not only in the docstring
    assert (frame["requests_not_costed"] == 1).all()
    work = Workload([RequestSpec(id="r0", prompt_len=1000, output_len=500)])
    assert (cost_table(work, prices=table)["requests_not_costed"] == 0).all()


# --- self-hosted -------------------------------------------------------------------------------


def test_self_hosted_cost_from_fixed_throughput():
    # $3.60/h, 1000 tok/s busy half the paid time: 1.8M tokens per paid hour -> $2.00 per M
    assert self_hosted_usd_per_mtok(3.60, 1000.0, utilization=0.5) == pytest.approx(2.00)
    assert self_hosted_usd_per_mtok(3.60, 1000.0, utilization=1.0, gpus=2) == pytest.approx(2.00)
    with pytest.raises(ValueError, match="utilization must be in"):
        self_hosted_usd_per_mtok(3.60, 1000.0, utilization=0.0)


@pytest.mark.parametrize("call, message", [
    (lambda: usage_cost("gpt-4.1", prompt_tokens="10", completion_tokens=1), "prompt_tokens must be an integer >= 0, got '10'"),
    (lambda: usage_cost("gpt-4.1", prompt_tokens=10, completion_tokens=None), "completion_tokens must be an integer >= 0, got None"),
    (lambda: self_hosted_usd_per_mtok("3.6", 1000.0, utilization=1.0), "gpu_usd_per_hour must be a finite number > 0, got '3.6'"),
    (lambda: self_hosted_usd_per_mtok(3.6, "fast", utilization=1.0), "throughput must be tokens/s .* got str"),
    (lambda: self_hosted_usd_per_mtok(3.6, 1000.0, utilization=1.0, gpus=1.5), "gpus must be an integer >= 1, got 1.5"),
    (lambda: break_even(2.0, 3.6, 1000.0, hours_per_month="730"), "hours_per_month must be a finite number > 0, got '730'"),
    (lambda: break_even(0, 3.6, 1000.0), "api_usd_per_mtok must be a finite number > 0, got 0"),
])
def test_wrong_types_and_values_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


STEP_S = 0.02  # simulated seconds per engine step


def _simulated(policy: str) -> Result:
    """32 requests arriving together, 16 prompt tokens and 10-100 output tokens each, on a simulated
    engine with at most 8 sequences and 20 ms per step: static batching leaves the slots of short
    requests empty until the longest of its batch ends, continuous refills them."""
    workload = synthetic(32, prompt_lens=16, output_lens=Uniform(10, 100), seed=0)
    config = EngineConfig(
        policy=policy, block_size=16, num_blocks=512, max_num_seqs=8, max_num_batched_tokens=512
    )
    return simulate(workload, config, ConstantStepModel(STEP_S))


def test_static_vs_continuous_cost_ratio_follows_simulated_throughput():
    static, continuous = _simulated("static"), _simulated("continuous")
    s, c = static.summary(), continuous.summary()
    assert s["completed"] == c["completed"] == 32 and s["total_output_tokens"] == c["total_output_tokens"]
    static_cost = self_hosted_usd_per_mtok(2.0, static, utilization=1.0)
    continuous_cost = self_hosted_usd_per_mtok(2.0, continuous, utilization=1.0)
    assert continuous_cost < static_cost  # same tokens in less GPU time
    assert static_cost / continuous_cost == pytest.approx(c["output_throughput"] / s["output_throughput"])
    # the same tokens, so the cost ratio is also the ratio of the simulated durations
    assert static_cost / continuous_cost == pytest.approx(s["duration_s"] / c["duration_s"])
    # by hand from each run: every request arrives at t=0 and the GPU never idles, so the paid time is
    # steps x the step time; $2/h over that time, per million output tokens
    for result, cost in ((static, static_cost), (continuous, continuous_cost)):
        gpu_hours = len(result.steps) * STEP_S / 3600
        out_tokens = sum(r.output_tokens for r in result.requests)
        assert cost == pytest.approx(2.0 * gpu_hours / out_tokens * 1e6)
    # static holds a batch's slots until its longest request ends, continuous refills them: fewer steps
    assert len(continuous.steps) < len(static.steps)
    total = self_hosted_usd_per_mtok(2.0, static, utilization=1.0, kind="total")
    assert total == pytest.approx(2.0 / (s["total_token_throughput"] * 3600) * 1e6)


def test_break_even_volume():
    # rent $2/h x 730 h = $1460 a month; at $4 per M tokens that buys 365 M tokens
    result = break_even(4.0, 2.0, 100.0)
    assert result.gpu_usd_per_month == pytest.approx(1460.0)
    assert result.break_even_mtok_per_month == pytest.approx(365.0)
    assert result.capacity_mtok_per_month == pytest.approx(100 * 3600 * 730 / 1e6)  # 262.8
    assert not result.renting_can_pay  # the GPU cannot even produce the break-even volume
    assert break_even(4.0, 2.0, 1000.0).renting_can_pay


def test_a_result_from_several_replicas_needs_as_many_gpus():
    """Its throughput is the replicas' sum: priced on one GPU it looked cheaper per token than one
    replica at full load."""
    work = synthetic(40, rate=float("inf"), prompt_lens=16, output_lens=Uniform(10, 60), seed=1)
    config = EngineConfig(num_blocks=512, max_num_seqs=4, max_num_batched_tokens=256)
    one = simulate(work, config, ConstantStepModel(0.02))
    four = simulate(work, config, ConstantStepModel(0.02), replicas=4)
    with pytest.raises(ValueError, match=r"^gpus: the Result ran on 4 replicas, whose throughput is their sum; give gpus=4"):
        self_hosted_usd_per_mtok(2.0, four, utilization=1.0)
    with pytest.raises(ValueError, match=r"^gpus: the Result ran on 4 replicas"):
        break_even(1.0, 2.0, four)
    per_gpu_four = self_hosted_usd_per_mtok(2.0, four, utilization=1.0, gpus=4)
    assert per_gpu_four >= self_hosted_usd_per_mtok(2.0, one, utilization=1.0)  # no cheaper than one GPU
    none_done = Result([RequestMetrics("a", 0.0, prompt_tokens=10, output_tokens=0, status="error")])
    with pytest.raises(ValueError, match=r"^throughput: the Result has no completed request \(of 1\)"):
        self_hosted_usd_per_mtok(2.0, none_done, utilization=1.0)


def test_anthropic_api_ids_are_priced():
    # the API calls it claude-sonnet-4-5-20250929; the table says claude-sonnet-4.5
    assert usage_cost("claude-sonnet-4-5-20250929", 1000, 1000) == usage_cost("claude-sonnet-4.5", 1000, 1000)
    assert usage_cost("claude-sonnet-4.5", 1_000_000, 0) == pytest.approx(
        load_prices().find("claude-sonnet-4.5").input_per_mtok
    )


# --- inputs that used to be priced silently ------------------------------------------------------


def test_an_infinite_token_count_is_refused(table):
    # inf passed the ">= 0" check and priced to an inf cost
    with pytest.raises(ValueError, match="prompt_tokens must be an integer >= 0, got inf"):
        usage_cost("model-x", float("inf"), 10, prices=table)


def test_batch_must_be_a_bool(table):
    # batch="no" is truthy: it was priced at the batch discount
    with pytest.raises(ValueError, match="batch must be True or False, got 'no'"):
        usage_cost("model-x", 1000, 500, batch="no", prices=table)
    work = Workload([RequestSpec(id="r0", prompt_len=1000, output_len=500)])
    with pytest.raises(ValueError, match="batch must be True or False, got 'no'"):
        cost_table(work, batch="no", prices=table)


def test_model_and_provider_are_checked_strings(table):
    # None and 5 crashed with AttributeError; a padded provider name was not found
    with pytest.raises(ValueError, match="model must be a non-empty string .* got None"):
        usage_cost(None, 10, 10, prices=table)
    with pytest.raises(ValueError, match="provider must be a string .* got 5"):
        usage_cost("model-x", 10, 10, provider=5, prices=table)
    assert usage_cost("model-x", 1000, 500, provider=" ACME", prices=table) == pytest.approx(0.006)


@pytest.mark.parametrize("field, row", [
    ("input_per_mtok", f"acme,model-z,inf,,8.00,,,USD,,,{URL},2026-11-23,cross_checked,\n"),
    ("credit_cny_per_usd", f"resell,model-x,,,,,,CNY,inf,acme,{URL},2026-11-23,provider_claim,\n"),
])
def test_loader_rejects_an_infinite_number(tmp_path, field, row):
    # float("inf") passed the ">= 0" check: an inf price, or a reseller whose credit costs nothing
    path = write_table(tmp_path, ROWS["acme"], row)
    with pytest.raises(PriceTableError, match=rf"line 3 .*: {field} must be a finite number >= 0, got inf"):
        load_prices(path)


def test_a_reseller_row_has_no_batch_prices(table):
    # the reseller's claim is about list prices; it used to inherit acme's batch API too
    reseller = table.find("model-x", "resell")
    assert not reseller.offers_batch
    with pytest.raises(ValueError, match="resell/model-x has no batch prices"):
        usage_cost("model-x", 1000, 500, provider="resell", batch=True, prices=table)
    work = Workload([RequestSpec(id="r0", prompt_len=1000, output_len=500)])
    batched = cost_table(work, batch=True, prices=table).set_index(["provider", "model"])
    assert math.isnan(batched.loc[("resell", "model-x"), "cost_usd"])
    # cached input still follows the list: (600 x 2 + 400 x 0.50 + 500 x 8) / 1e6 / 8 = 0.0054 / 8
    cost = usage_cost("model-x", 1000, 500, 400, provider="resell", market_cny_per_usd=8.0, prices=table)
    assert cost == pytest.approx(0.0054 / 8)


@pytest.mark.parametrize("call, message", [
    (lambda: effective_usd_price(float("inf")), "list_usd_price must be a finite number >= 0, got inf"),
    (lambda: effective_usd_price(-8.0), "list_usd_price must be a finite number >= 0, got -8.0"),
    (lambda: effective_usd_price("8"), "list_usd_price must be a finite number >= 0, got '8'"),
    (lambda: market_rate_for_savings("0.85"), r"savings must be a number in \[0, 1\), got '0.85'"),
    (lambda: cost_table(Workload([RequestSpec(id="r", prompt_len=10)]), cached_fraction="0.5"),
     r"cached_fraction must be a number in \[0, 1\], got '0.5'"),
    (lambda: cost_table(Workload([RequestSpec(id="r", prompt_len=10)]), cached_fraction=True),
     r"cached_fraction must be a number in \[0, 1\], got True"),
    # inf came out as an inf cost, or as free tokens
    (lambda: self_hosted_usd_per_mtok(float("inf"), 1000.0, utilization=1.0),
     "gpu_usd_per_hour must be a finite number > 0, got inf"),
    (lambda: self_hosted_usd_per_mtok(3.6, float("inf"), utilization=1.0),
     "throughput must be a finite number > 0 tokens/s, got inf"),
    (lambda: break_even(float("inf"), 3.6, 1000.0), "api_usd_per_mtok must be a finite number > 0, got inf"),
    (lambda: break_even(2.0, 3.6, 1000.0, hours_per_month=float("inf")),
     "hours_per_month must be a finite number > 0, got inf"),
    (lambda: gpu_price(5), r"gpu \(e.g. 'H100 SXM'\) and provider must be strings, got 5"),
])
def test_bad_numbers_and_types_are_named(call, message):
    # these raised TypeError / AttributeError, or returned inf, nan or 0
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("row, message", [
    (f"H100 SXM,80,acme,pod,inf,{URL},2026-11-23,\n", "usd_per_gpu_hour must be a finite number > 0, got 'inf'"),
    # each field named with what it held (both used to get one message naming the two fields)
    (f"H100 SXM,eighty,acme,pod,2.0,{URL},2026-11-23,\n", "memory_gb must be a number, got 'eighty'"),
    (f"H100 SXM,80,acme,pod,,{URL},2026-11-23,\n", "usd_per_gpu_hour must be a number, got ''"),
    (f",80,acme,pod,2.0,{URL},2026-11-23,\n", "gpu and provider are required"),
    (f"H100 SXM,80,,pod,2.0,{URL},2026-11-23,\n", "gpu and provider are required"),
])
def test_gpu_loader_rejects_infinite_price_and_blank_names(tmp_path, row, message):
    # inf and blank names were loaded as they stood
    path = write_gpu_table(tmp_path, row)
    with pytest.raises(PriceTableError, match=rf"gpu_prices.csv line 2 \(.*\): {message}"):
        load_gpu_prices(path)


# --- user tables: snapshot rows, line numbers, spreadsheet exports -------------------------------


def test_a_snapshot_with_its_own_row_is_priced_by_that_row(tmp_path):
    # the dated suffix was stripped before looking: gpt-4o-2024-05-13 got gpt-4o's price, and a table
    # holding only the dated name said "unknown model ...; closest known: <that very name>"
    path = write_table(
        tmp_path,
        f"acme,gpt-4o,2.50,,10.00,,,USD,,,{URL},2026-11-23,cross_checked,\n",
        f"acme,gpt-4o-2024-05-13,5.00,,15.00,,,USD,,,{URL},2026-11-23,cross_checked,\n",
        f"acme,claude-3-5-sonnet-20241022,3.00,,15.00,,,USD,,,{URL},2026-11-23,cross_checked,\n",
    )
    table = load_prices(path)
    assert usage_cost("gpt-4o-2024-05-13", 1_000_000, 0, prices=table) == pytest.approx(5.00)
    assert usage_cost("gpt-4o-2024-08-06", 1_000_000, 0, prices=table) == pytest.approx(2.50)  # no row: base
    assert usage_cost("claude-3-5-sonnet-20241022", 0, 1_000_000, prices=table) == pytest.approx(15.00)


def test_a_snapshot_row_does_not_hide_a_providers_base_row(tmp_path):
    # the first name with any row won: acme's row for the dated snapshot hid the reseller's row for the
    # base model, and "provider 'resell' has no price for 'model-x-2025-04-14'" refused a priced model
    path = write_table(tmp_path, ROWS["acme"], ROWS["reseller"],
                       f"acme,model-x-2025-04-14,3.00,,9.00,,,USD,,,{URL},2026-11-23,cross_checked,\n")
    table = load_prices(path)
    via_reseller = usage_cost("model-x-2025-04-14", 1_000_000, 0, provider="resell", prices=table)
    assert via_reseller == pytest.approx(usage_cost("model-x", 1_000_000, 0, provider="resell", prices=table))
    assert usage_cost("model-x-2025-04-14", 1_000_000, 0, provider="acme", prices=table) == pytest.approx(3.00)
    with pytest.raises(ValueError, match=r"provider 'other' has no price for 'model-x-2025-04-14'; sold by: acme"):
        usage_cost("model-x-2025-04-14", 1, 0, provider="other", prices=table)


def test_loader_errors_name_the_line_an_editor_shows(tmp_path):
    # rows were numbered by count: a quoted two-line note and a blank line put this error on "line 3"
    two_line_note = f'acme,model-a,1.00,,2.00,,,USD,,,{URL},2026-11-23,cross_checked,"first\nsecond"\n'
    bad = f"acme,model-b,-1.00,,2.00,,,USD,,,{URL},2026-11-23,cross_checked,\n"
    path = write_table(tmp_path, two_line_note, "\n", bad)  # header 1, note 2-3, blank 4, bad row 5
    with pytest.raises(PriceTableError, match=r"line 5 \(acme/model-b\): input_per_mtok"):
        load_prices(path)
    path = write_table(tmp_path, two_line_note, "\n", ROWS["acme"], ROWS["acme"])
    with pytest.raises(PriceTableError, match="line 6: duplicate acme/model-x, first on line 5"):
        load_prices(path)
    gpu = write_gpu_table(tmp_path, "\n", f"H100 SXM,80,acme,pod,-2.0,{URL},2026-11-23,\n")
    with pytest.raises(PriceTableError, match=r"gpu_prices.csv line 3 \(acme/H100 SXM\)"):
        load_gpu_prices(gpu)


def test_loaders_read_a_spreadsheets_utf8_export(tmp_path):
    # "CSV UTF-8" from a spreadsheet starts with a BOM: the first column was read as "\ufeffprovider"
    # (or "\ufeffgpu") and every row failed with "provider and model are required"
    path = tmp_path / "prices.csv"
    path.write_text(HEADER + ROWS["acme"], encoding="utf-8-sig")
    assert load_prices(path).find("model-x").provider == "acme"
    gpu = write_gpu_table(tmp_path, f"H100 SXM,80,acme,pod,2.0,{URL},2026-11-23,\n", encoding="utf-8-sig")
    assert gpu_price("H100-SXM", path=gpu).usd_per_gpu_hour == 2.0


def test_a_table_with_no_rows_is_refused_by_name(tmp_path):
    # a header alone loaded as a table of 0 rows; cost_table then raised a bare KeyError('cost_usd')
    # and usage_cost said "unknown model 'gpt-4.1'; closest known: " with nothing after it
    path = write_table(tmp_path, "\n")
    with pytest.raises(PriceTableError, match=rf"^{re.escape(str(path))}: no price rows"):
        load_prices(path)
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(PriceTableError, match="blank.csv: no price rows"):
        load_prices(tmp_path / "blank.csv")
    gpu = write_gpu_table(tmp_path)
    with pytest.raises(PriceTableError, match=r"gpu_prices.csv: no price rows"):
        gpu_price("H100 SXM", path=gpu)
    # a table emptied by hand (a filter that matched nothing) says so rather than failing obscurely
    empty = PriceTable([], tmp_path / "mine.csv")
    with pytest.raises(UnknownModelError, match=r"^unknown model 'gpt-4.1': the price table \(.*mine.csv\) has no rows$"):
        usage_cost("gpt-4.1", 10, 10, prices=empty)
    with pytest.raises(ValueError, match=r"^prices: the price table \(.*mine.csv\) has no rows"):
        cost_table(TokenCounts(1, 10, 10), prices=empty)
    with pytest.raises(ValueError, match=r"^prices: the price table has no rows"):
        cost_table(TokenCounts(1, 10, 10), prices=PriceTable([]))


# --- tables that loaded wrong silently: fields, header, duplicates, dates, URLs --------------------


def test_a_row_with_more_or_fewer_fields_than_the_header_is_refused(tmp_path):
    # an unquoted comma in a note made a 15th field, and zipping with the header dropped ", world"
    unquoted = ROWS["acme"].replace("cross_checked,", "cross_checked,hello, world")
    with pytest.raises(PriceTableError, match=r"prices.csv line 2: 15 fields, but the header has 14 columns; put a field"):
        load_prices(write_table(tmp_path, unquoted))
    short = "acme,model-x,2.00,0.50,8.00\n"
    with pytest.raises(PriceTableError, match="line 3: 5 fields, but the header has 14 columns; give every column"):
        load_prices(write_table(tmp_path, ROWS["acme"], short))
    quoted = ROWS["acme"].replace("cross_checked,", 'cross_checked,"hello, world"')
    assert load_prices(write_table(tmp_path, quoted)).rows[0].notes == "hello, world"
    gpu = write_gpu_table(tmp_path, f"H100 SXM,80,acme,pod,2.0,{URL},2026-11-23,8x, per GPU\n")
    with pytest.raises(PriceTableError, match="gpu_prices.csv line 2: 9 fields, but the header has 8 columns"):
        load_gpu_prices(gpu)


@pytest.mark.parametrize("header, row, message", [
    # a misspelled column was read as blank: model-x lost its cache discount
    (HEADER.replace("cached_input_per_mtok", "cached_per_mtok"), ROWS["acme"],
     r"unknown column 'cached_per_mtok' \(did you mean 'cached_input_per_mtok'\?\)"),
    # a repeated column kept its last field: the note "5" became the input price
    (HEADER.replace("notes", "input_per_mtok"), ROWS["acme"].replace("cross_checked,", "cross_checked,5"),
     "repeated column 'input_per_mtok'"),
    (HEADER.replace(",currency", ""), ROWS["acme"].replace(",USD", ""), "missing column 'currency'"),
])
def test_the_header_is_checked(tmp_path, header, row, message):
    path = tmp_path / "prices.csv"
    path.write_text(header + row, encoding="utf-8")
    with pytest.raises(PriceTableError, match=rf"^prices.csv line 1 \(header\): {message}\. Columns: provider, "):
        load_prices(path)


def test_header_names_are_stripped_and_optional_columns_may_be_left_out(tmp_path):
    # "provider, model, ..." (a space after each comma) said "provider and model are required"
    path = tmp_path / "prices.csv"
    path.write_text(HEADER.replace(",", ", ") + ROWS["acme"], encoding="utf-8")
    assert load_prices(path).find("model-x").cached_input_per_mtok == 0.50
    path.write_text(
        "provider,model,input_per_mtok,output_per_mtok,currency,source_url,seen,verification\n"
        f"acme,model-x,2.00,8.00,USD,{URL},2026-11-23,cross_checked\n", encoding="utf-8"
    )
    row = load_prices(path).find("model-x")
    assert row.cached_input_per_mtok is None and not row.offers_batch


@pytest.mark.parametrize("header, message", [
    (GPU_HEADER.replace("offering", "offer"), r"unknown column 'offer' \(did you mean 'offering'\?\)"),
    (GPU_HEADER.replace("notes", "currency"), "unknown column 'currency'"),  # EUR prices read as USD
    (GPU_HEADER.replace("notes", "usd_per_gpu_hour"), "repeated column 'usd_per_gpu_hour'"),
    (GPU_HEADER.replace("memory_gb", "memory"), "unknown column 'memory'.*; missing column 'memory_gb'"),
])
def test_the_gpu_header_is_checked(tmp_path, header, message):
    path = tmp_path / "gpu_prices.csv"
    path.write_text(header + f"H100 SXM,80,acme,pod,2.0,{URL},2026-11-23,EUR\n", encoding="utf-8")
    with pytest.raises(PriceTableError, match=rf"^gpu_prices.csv line 1 \(header\): {message}\. Columns: gpu, "):
        load_gpu_prices(path)


def test_gpu_loader_rejects_a_duplicate_row(tmp_path):
    # gpu_price silently took the cheaper of two rows for one GPU, provider and offering
    path = write_gpu_table(
        tmp_path,
        f"H100 SXM,80,acme,pod,3.99,{URL},2026-11-09,\n",
        f"h100-sxm,80,ACME,Pod,1.00,{URL},2026-11-09,\n",
    )
    with pytest.raises(PriceTableError, match=r"gpu_prices.csv line 3: duplicate acme/h100-sxm \(offering 'Pod'\), first on line 2"):
        load_gpu_prices(path)
    # another offering of the same GPU is a row of its own
    path = write_gpu_table(
        tmp_path,
        f"H100 SXM,80,acme,pod,3.99,{URL},2026-11-09,\n",
        f"H100 SXM,80,acme,spot pod,1.00,{URL},2026-11-09,\n",
    )
    assert gpu_price("H100 SXM", path=path).usd_per_gpu_hour == 1.00


TOMORROW = (date.today() + timedelta(days=1)).isoformat()


@pytest.mark.parametrize("seen, url, message", [
    ("2026-W47-1", URL, "seen must be a date YYYY-MM-DD, got '2026-W47-1'"),  # read as 2026-11-16
    ("20261123", URL, "seen must be a date YYYY-MM-DD, got '20261123'"),
    ("2026-02-30", URL, "seen must be a real date YYYY-MM-DD, got '2026-02-30'"),
    (TOMORROW, URL, rf"seen must not be after today \({date.today()}\), got {TOMORROW}"),
    ("2026-11-23", "https://", "source_url must be an http.s. URL with a host and no spaces .*, got 'https://'"),
    ("2026-11-23", "https:// see notes", "source_url must be an http.s. URL with a host .*, got 'https:// see notes'"),
    ("2026-11-23", "https://example.com/a b", "source_url must be .*, got 'https://example.com/a b'"),
    ("2026-11-23", "https://[::1/pricing", "source_url must be .*, got 'https://\\[::1/pricing'"),
])
def test_loaders_refuse_loose_dates_and_urls(tmp_path, seen, url, message):
    row = f"acme,model-x,2.00,0.50,8.00,1.00,4.00,USD,,,{url},{seen},cross_checked,\n"
    with pytest.raises(PriceTableError, match=rf"prices.csv line 2 \(acme/model-x\): {message}"):
        load_prices(write_table(tmp_path, row))
    gpu = write_gpu_table(tmp_path, f"H100 SXM,80,acme,pod,2.0,{url},{seen},\n")
    with pytest.raises(PriceTableError, match=rf"gpu_prices.csv line 2 \(acme/H100 SXM\): {message}"):
        load_gpu_prices(gpu)
    # today, and a URL with a port and a query, are fine
    row = f"acme,model-x,2.00,0.50,8.00,1.00,4.00,USD,,,http://example.com:8080/p?q=1,{date.today()},cross_checked,\n"
    assert load_prices(write_table(tmp_path, row)).rows[0].seen == date.today()


@pytest.mark.parametrize("counts, message", [
    (dict(requests=-5), "TokenCounts.requests must be an integer >= 0, got -5"),  # priced to a negative cost
    (dict(requests=True), "TokenCounts.requests must be an integer >= 0, got True"),  # counted as 1
    (dict(prompt_tokens="1000"), "TokenCounts.prompt_tokens must be an integer >= 0, got '1000'"),  # TypeError
    (dict(completion_tokens=100.5), "TokenCounts.completion_tokens must be an integer >= 0, got 100.5"),
])
def test_token_counts_are_checked(counts, message):
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
        TokenCounts(**{"requests": 1, "prompt_tokens": 1000, "completion_tokens": 100, **counts})
    # numpy integers (a pandas column's sum) are integers
    counts = TokenCounts(np.int64(2), np.int64(2000), np.int64(1000))
    assert cost_table(counts, cached_fraction=0.5).loc[0, "requests"] == 2


@pytest.mark.parametrize("tokens, name", [
    ((1000.5, 500, 0), "prompt_tokens"),  # was priced as half a token
    ((1000, 0.25, 0), "completion_tokens"),
    ((1000, 500, 0.5), "cached_tokens"),
    ((1000.0, 500, 0), "prompt_tokens"),  # a whole float too: int() it where it is made
])
def test_usage_cost_takes_whole_token_counts_only(table, tokens, name):
    value = tokens[("prompt_tokens", "completion_tokens", "cached_tokens").index(name)]
    with pytest.raises(ValueError, match=rf"^{name} must be an integer >= 0, got {value!r}$"):
        usage_cost("model-x", *tokens, prices=table)
    assert usage_cost("model-x", np.int64(1000), np.int32(500), np.int64(400), prices=table) == pytest.approx(0.0054)


def test_a_reseller_row_without_batch_keeps_its_claim_note(table):
    # with batch=True "no batch API" replaced "provider's claim, not verified"
    work = Workload([RequestSpec(id="r0", prompt_len=1000, output_len=500)])
    notes = cost_table(work, batch=True, prices=table).set_index(["provider", "model"])["note"]
    assert notes["resell", "model-x"] == "provider's claim, not verified; no batch API"
    assert notes["cheapco", "model-y"] == "no batch API"
    assert notes["acme", "model-x"] == ""


def test_client_cost_of_says_why_a_price_is_missing(monkeypatch, caplog):
    """An unpriced model (a local one) gives cost_usd None quietly; a broken price table or a usage the
    server got wrong gives None too (the answer still arrives), but with a warning naming the cause."""
    import lab.client.types as types
    from lab.cost import PriceTableError

    monkeypatch.setattr(types, "_COST_FN", [])
    usage = types.Usage(prompt_tokens=1200, completion_tokens=300, cached_tokens=1000)
    assert types.cost_of("gpt-4.1", usage, None) == pytest.approx(usage_cost("gpt-4.1", 1200, 300, 1000))
    with caplog.at_level("WARNING", logger="lab.client"):
        assert types.cost_of("tiny-shakespeare", usage, None) is None
        assert not caplog.records  # unpriced: the normal case, nothing to warn about
        bad = types.Usage(prompt_tokens=10, completion_tokens=1, cached_tokens=50)  # more cached than prompt
        assert types.cost_of("gpt-4.1", bad, None) is None
        assert "cost_usd left out for model 'gpt-4.1'" in caplog.text and "cached_tokens" in caplog.text

        def broken(*args, **kwargs):
            raise PriceTableError("prices.csv line 3: input_per_mtok must be >= 0")

        monkeypatch.setattr(types, "_COST_FN", [broken])
        assert types.cost_of("gpt-4.1", usage, None) is None
        assert "prices.csv line 3" in caplog.text
