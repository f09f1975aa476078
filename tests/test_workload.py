"""lab.workload: arrivals, length distributions, corpus prompts, Azure trace loaders and their errors."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from lab.workload import (
    Empirical,
    Exponential,
    Fixed,
    LogNormal,
    RequestSpec,
    Uniform,
    Workload,
    azure_trace,
    corpus_text,
    gamma_arrivals,
    lengths,
    poisson_arrivals,
    synthetic,
)

DATA = Path(__file__).resolve().parents[1] / "data"
TRACES = DATA / "traces"
CORPUS = DATA / "corpus" / "tinyshakespeare.txt"


def _read_rows(kind):
    with (TRACES / f"AzureLLMInferenceTrace_{kind}.csv").open() as f:
        return list(csv.DictReader(f))


# -- arrivals ----------------------------------------------------------------------------------
def test_poisson_mean_gap_and_start():
    t = poisson_arrivals(20000, rate=5.0, seed=1)
    assert t[0] == 0 and np.all(np.diff(t) >= 0)
    assert np.diff(t).mean() == pytest.approx(0.2, rel=0.03)


def test_burstiness_changes_spread_not_mean():
    # gamma gaps with shape k: mean 1/rate, coefficient of variation 1/sqrt(k), as vLLM's --burstiness
    for k in (0.25, 1.0, 4.0):
        gaps = np.diff(gamma_arrivals(40000, rate=2.0, burstiness=k, seed=2))
        assert gaps.mean() == pytest.approx(0.5, rel=0.05)
        assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(k), rel=0.05)


def test_infinite_rate_and_burstiness():
    assert poisson_arrivals(3, float("inf")).tolist() == [0, 0, 0]
    assert poisson_arrivals(4, 2.0, burstiness=float("inf")).tolist() == [0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(rate=0), "rate"), (dict(rate=-1), "rate"), (dict(rate=1, burstiness=0), "burstiness")],
)
def test_arrival_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        poisson_arrivals(5, **kwargs)


# -- lengths -----------------------------------------------------------------------------------
def test_distributions_respect_bounds_and_means():
    rng = np.random.default_rng(0)
    assert (Fixed(7).sample(5, rng) == 7).all()
    u = Uniform(3, 5).sample(3000, rng)
    assert set(u.tolist()) == {3, 4, 5}
    e = Exponential(100, low=1, high=1000).sample(20000, rng)
    assert e.min() >= 1 and e.max() <= 1000 and e.mean() == pytest.approx(100, rel=0.05)
    ln = LogNormal(200, 0.5).sample(20000, rng)
    assert np.median(ln) == pytest.approx(200, rel=0.05)
    emp = Empirical([10, 20], weights=[1, 3]).sample(20000, rng)
    assert set(emp.tolist()) == {10, 20} and (emp == 20).mean() == pytest.approx(0.75, abs=0.02)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: Fixed(0), "Fixed.value"),
        (lambda: Uniform(5, 4), "Uniform.high"),
        (lambda: Exponential(-1), "Exponential.mean"),
        (lambda: LogNormal(10, -1), "LogNormal.sigma"),
        (lambda: LogNormal(10, high=0), "LogNormal.high"),
        (lambda: Empirical([]), "Empirical.values"),
        (lambda: Empirical([1, 2], weights=[0, 0]), "Empirical.weights"),
        (lambda: lengths([1, 2], 3), "lengths"),
        (lambda: lengths(0, 3, field_name="output_lens"), "output_lens"),
    ],
)
def test_length_errors(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_synthetic_lengths_only_and_distribution():
    w = synthetic(50, rate=10, prompt_lens=Uniform(10, 20), output_lens=[3] * 50, seed=4)
    assert len(w) == 50 and all(10 <= r.prompt_len <= 20 and r.prompt is None for r in w)
    assert w.total_output_tokens == 150
    assert synthetic(50, rate=10, prompt_lens=Uniform(10, 20), seed=4)[7].prompt_len == w[7].prompt_len


def test_synthetic_text_prompts_come_from_the_corpus():
    text = corpus_text(CORPUS)
    w = synthetic(5, prompt_lens=40, text_prompts=True, chars_per_token=1.0, corpus_path=CORPUS, seed=3)
    for r in w:
        assert len(r.prompt) == 40 and r.prompt in text and r.prompt_len == 40
    # a prompt longer than the whole corpus used to be clipped to it while prompt_len kept its value
    with pytest.raises(ValueError, match=rf"prompt_lens: a text prompt of {len(text) + 1} characters .* whole corpus \({len(text)} characters\)"):
        synthetic(2, prompt_lens=[5, len(text) + 1], text_prompts=True, chars_per_token=1.0, corpus_path=CORPUS)


def test_corpus_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus"):
        corpus_text(tmp_path / "nope.txt")


def test_request_spec_and_workload_checks():
    with pytest.raises(ValueError, match="prompt_len"):
        RequestSpec("a")
    with pytest.raises(ValueError, match="unique"):
        Workload([RequestSpec("a", prompt_len=1), RequestSpec("a", prompt_len=2)])
    w = Workload([RequestSpec("b", 2.0, prompt_len=1), RequestSpec("a", 1.0, prompt_token_ids=[1, 2])])
    assert [r.id for r in w] == ["a", "b"] and w.total_prompt_tokens == 3 and w.duration_s == 2.0


# -- Azure traces ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, rows", [("code", 8819), ("conv", 19366)])
def test_trace_row_counts_and_sums_match_the_file(kind, rows):
    raw = _read_rows(kind)
    w = azure_trace(kind)
    assert len(raw) == len(w) == rows
    assert w.total_prompt_tokens == sum(int(r["ContextTokens"]) for r in raw)
    assert w.total_output_tokens == sum(int(r["GeneratedTokens"]) for r in raw)
    assert w[0].arrival_s == 0 and w.name == f"azure-{kind}"


def test_conv_trace_span_and_stats():
    w = azure_trace("conv")
    assert w.duration_s == pytest.approx(3501.72, abs=0.01)  # 18:15:46.68 -> 19:14:08.40
    prompt_lens = [int(r["ContextTokens"]) for r in _read_rows("conv")]  # the file's own column
    assert np.mean([r.prompt_len for r in w]) == pytest.approx(np.mean(prompt_lens))


def test_trace_window_and_rate_scale():
    full = azure_trace("code")
    t = np.array([r.arrival_s for r in full])
    win = azure_trace("code", start_s=600, end_s=900)
    assert len(win) == ((t >= 600) & (t < 900)).sum() > 0
    assert win[0].arrival_s == 0 and win.duration_s < 300
    fast = azure_trace("code", start_s=600, end_s=900, rate_scale=2.0)
    assert fast.duration_s == pytest.approx(win.duration_s / 2)
    assert [r.prompt_len for r in fast] == [r.prompt_len for r in win]
    assert len(azure_trace("code", max_requests=10)) == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate_scale=-1.0), "rate_scale"),
        (dict(rate_scale=0), "rate_scale"),
        (dict(start_s=100, end_s=50), "start_s"),
        (dict(start_s=5000), "holds no requests"),
        (dict(kind="chat"), "allowed: code, conv"),
    ],
)
def test_trace_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        azure_trace(**({"kind": "code"} | kwargs))


def test_trace_missing_column_and_file(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,10\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['GeneratedTokens'\]"):
        azure_trace("code", path=bad)
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,10,-3\n")
    with pytest.raises(ValueError, match="GeneratedTokens must be >= 1"):
        azure_trace("code", path=bad)
    with pytest.raises(FileNotFoundError, match="trace file"):
        azure_trace("code", path=tmp_path / "none.csv")


HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD_ROW = "2023-11-16 18:17:03.9799600,10,4\n"


@pytest.mark.parametrize(
    "bad_row, match",
    [
        ("2023-11-16 18:17:04.0,12\n", r"t\.csv: row 3, column GeneratedTokens: missing \(the row has 2 cells\)"),
        ("2023-11-16 18:17:04.0\n", r"t\.csv: row 3, column ContextTokens: missing \(the row has 1 cells\)"),
        ("2023-11-16 18:17:04.0,twelve,4\n", r"t\.csv: row 3, column ContextTokens: 'twelve' is not a whole number"),
        ("2023-11-16 18:17:04.0,12,4.5\n", r"t\.csv: row 3, column GeneratedTokens: '4\.5' is not a whole number"),
        ("yesterday,12,4\n", r"t\.csv: row 3, column TIMESTAMP: 'yesterday' is not a timestamp"),
        ("2023-13-40 00:00:00,12,4\n", r"t\.csv: row 3, column TIMESTAMP: '2023-13-40 00:00:00' is not a timestamp"),
        (",12,4\n", r"t\.csv: row 3, column TIMESTAMP: '' is not a timestamp"),
        ("2023-11-16 18:17:04.0,0,4\n", r"t\.csv: row 3, column ContextTokens must be >= 1, found 0"),
    ],
)
def test_trace_bad_rows_name_file_row_and_column(tmp_path, bad_row, match):
    bad = tmp_path / "t.csv"
    bad.write_text(HEADER + GOOD_ROW + bad_row + GOOD_ROW.replace("03.9", "05.9"))
    with pytest.raises(ValueError, match=match):
        azure_trace("code", path=bad)


def test_trace_rows_numbered_as_in_the_file_past_blank_lines(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text(HEADER + GOOD_ROW + "\n" + GOOD_ROW + "2023-11-16 18:17:06.0,7,x\n")
    with pytest.raises(ValueError, match=r"row 5, column GeneratedTokens: 'x'"):
        azure_trace("code", path=bad)
    bad.write_text(HEADER + GOOD_ROW + "\n" + GOOD_ROW.replace("03.9", "06.0"))
    w = azure_trace("code", path=bad)
    assert [r.prompt_len for r in w] == [10, 10] and w.duration_s == pytest.approx(2.1)  # 03.97996 -> 06.07996


@pytest.mark.parametrize("max_requests", [0, -5, 2.5, "3", True])
def test_trace_max_requests_must_be_positive(max_requests):
    with pytest.raises(ValueError, match=r"max_requests: must be an integer >= 1 or None, got "):
        azure_trace("code", max_requests=max_requests)


def test_trace_max_requests_keeps_the_first_rows():
    full = azure_trace("code", start_s=600, end_s=900)
    first = azure_trace("code", start_s=600, end_s=900, max_requests=np.int64(5))
    assert [r.prompt_len for r in first] == [r.prompt_len for r in full[:5]]
    assert len(azure_trace("code", max_requests=None)) == 8819


@pytest.mark.parametrize("call, message", [
    (lambda: synthetic(2.5), r"n: must be an integer >= 0, got 2.5"),
    (lambda: synthetic("5"), r"n: must be an integer >= 0, got '5'"),
    (lambda: synthetic(3, rate="fast"), r"rate: must be > 0 requests/s \(or inf\), got 'fast'"),
    (lambda: synthetic(3, rate=1.0, burstiness=None), r"burstiness: must be > 0 \(or inf\), got None"),
    (lambda: azure_trace("code", rate_scale="2"), r"rate_scale: must be a finite number > 0, got '2'"),
    (lambda: azure_trace("code", start_s="x"), r"start_s/end_s: must be numbers"),
    (lambda: azure_trace("code", start_s=float("nan")), r"start_s/end_s: need 0 <= start_s < end_s, got nan"),
    (lambda: azure_trace("code", end_s=float("nan")), r"start_s/end_s: need 0 <= start_s < end_s, got 0.0, nan"),
    (lambda: RequestSpec(7, prompt_len=3), r"id: must be a non-empty string, got 7"),
    (lambda: RequestSpec("a", prompt_len=3, output_len=2.5), r"request a: output_len must be an integer >= 1, got 2.5"),
    (lambda: RequestSpec("a", prompt_len="3"), r"request a: prompt_len must be an integer >= 1, got '3'"),
    (lambda: RequestSpec("a", float("nan"), prompt_len=3), r"request a: arrival_s must be a finite number >= 0, got nan"),
    (lambda: Workload(5), r"requests: must be a list of RequestSpec, got int"),
    (lambda: Workload([{"id": "a"}]), r"requests: must be a list of RequestSpec, got an item of type dict"),
])
def test_wrong_types_rejected_with_the_field_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_workload_accepts_any_iterable_of_specs_and_sorts_it():
    specs = (RequestSpec(f"r{i}", arrival_s=float(3 - i), prompt_len=4) for i in range(3))
    w = Workload(specs)
    assert [r.id for r in w] == ["r2", "r1", "r0"] and w.duration_s == 3.0


@pytest.mark.parametrize("call, message", [
    (lambda: lengths([10.7, 20.2, 30.9], 3, field_name="prompt_lens"), "prompt_lens: lengths must be whole numbers, got 10.7"),
    (lambda: lengths(["a", "b"], 2, field_name="output_lens"), "output_lens: need integer lengths"),
    (lambda: Exponential(float("inf")), "Exponential.mean: must be a finite number > 0, got inf"),
    (lambda: LogNormal(10, sigma=float("nan")), "LogNormal.sigma: must be a finite number >= 0, got nan"),
    (lambda: Uniform(1, 5.5), "Uniform.high: must be an integer >= low (1), got 5.5"),
    (lambda: Uniform(8, None), "Uniform.high: must be an integer >= low (8), got None"),
    (lambda: lengths([[1, 2]], 2, field_name="prompt_lens"), "prompt_lens: need a flat list of 2 values, got an array of shape (1, 2)"),
    (lambda: lengths([1, 2, 3], 2, field_name="prompt_lens"), "prompt_lens: need a flat list of 2 values, got 3"),
])
def test_length_specs_are_checked_not_truncated(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
    assert list(lengths([10.0, 20.0], 2)) == [10, 20]  # whole floats are fine


def test_synthetic_lengths_do_not_echo_the_arrival_gaps():
    # lengths and arrivals used to draw from two generators with the same seed: with Poisson arrivals
    # and Exponential lengths, each prompt_len was exactly 100 x the gap before it (correlation 1.0)
    spec = dict(rate=1.0, prompt_lens=Exponential(100, high=10**6), output_lens=Exponential(50, high=10**6), seed=0)
    w = synthetic(4000, **spec)
    gaps = np.diff([r.arrival_s for r in w])
    for name in ("prompt_len", "output_len"):
        lens = np.array([getattr(r, name) for r in w])[1:]
        assert abs(np.corrcoef(gaps, lens)[0, 1]) < 0.1, name
    # still Poisson at the rate asked, and a seed still reproduces
    assert gaps.mean() == pytest.approx(1.0, rel=0.05) and gaps.std() == pytest.approx(1.0, rel=0.05)
    again = synthetic(4000, **spec)
    assert [r.prompt_len for r in again] == [r.prompt_len for r in w]


@pytest.mark.parametrize("make, message", [
    (lambda: Empirical([10.7, 20.2]), "Empirical.values: lengths must be whole numbers, got 10.7"),
    (lambda: Empirical(5), "Empirical.values: need a 1-D sequence of lengths"),
    (lambda: Empirical([[1, 2], [3, 4]]), "Empirical.values: need a 1-D sequence of lengths"),
    (lambda: Empirical(["a"]), "Empirical.values: need integer lengths"),
    (lambda: Empirical([1, 2], weights=[float("nan"), 1]), "Empirical.weights: need one finite weight >= 0"),
    (lambda: Empirical([1, 2], weights=[float("inf"), 1]), "Empirical.weights: need one finite weight >= 0"),
])
def test_empirical_values_and_weights_are_checked(make, message):
    # 10.7 used to be truncated to 10; Empirical(5) sampled 0..4, zero-length requests included
    with pytest.raises(ValueError, match=re.escape(message)):
        make()
    assert set(Empirical([3.0, 4.0]).sample(50, np.random.default_rng(0)).tolist()) == {3, 4}


def test_heavy_tailed_lengths_stay_positive():
    # exp(25 * z) passes 2**63 for z > 1.75; the int64 cast wrapped those to -2**63
    rng = np.random.default_rng(0)
    assert LogNormal(100, sigma=25).sample(2000, rng).min() >= 1
    assert Exponential(1e30).sample(100, rng).min() >= 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1), "request a: temperature must be a finite number >= 0, got -1"),
    (dict(temperature="hot"), "request a: temperature must be a finite number >= 0, got 'hot'"),
    (dict(top_p=0), "request a: top_p must be a number in (0, 1], got 0"),
    (dict(top_p=1.5), "request a: top_p must be a number in (0, 1], got 1.5"),
    (dict(seed="7"), "request a: seed must be an integer or None, got '7'"),
    (dict(ignore_eos="no"), "request a: ignore_eos must be True or False, got 'no'"),
    (dict(prompt=["To", "be"]), "request a: prompt must be a string, got list"),
    (dict(prompt_token_ids=[1, 2.5, 3]), "request a: prompt_token_ids must be a list of integers, got 2.5"),
])
def test_request_spec_sampling_and_prompt_fields_checked(kwargs, message):
    # these used to pass, then fail every request at run time (or as HTTP 400s, one per request)
    with pytest.raises(ValueError, match=re.escape(message)):
        RequestSpec("a", **({"prompt_len": 3} | kwargs))
    assert RequestSpec("a", prompt_len=3, temperature=np.float64(0.7), top_p=1, seed=np.int64(5)).seed == 5


@pytest.mark.parametrize("cpt", [float("nan"), float("inf"), "4", 0])
def test_chars_per_token_checked(cpt):
    with pytest.raises(ValueError, match=r"chars_per_token: must be a finite number > 0, got "):
        synthetic(3, text_prompts=True, chars_per_token=cpt, corpus_path=CORPUS)


def test_trace_with_a_byte_order_mark_loads(tmp_path):
    # spreadsheets save CSV with a UTF-8 BOM; the header then read '\ufeffTIMESTAMP' and "lacked" TIMESTAMP
    bom = tmp_path / "t.csv"
    bom.write_text(HEADER + GOOD_ROW + GOOD_ROW.replace("03.9", "05.9"), encoding="utf-8-sig")
    w = azure_trace("code", path=bom)
    assert len(w) == 2 and w.duration_s == pytest.approx(2.0)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_seed_checked(seed):
    # numpy's own errors ("expected non-negative integer") named no field
    with pytest.raises(ValueError, match=re.escape(f"seed: must be an integer >= 0 or None, got {seed!r}")):
        synthetic(3, rate=1.0, seed=seed)


def test_prompt_token_ids_as_an_array_become_a_list_of_ints():
    # tokenizers hand back arrays; the engine takes them, but RequestSpec raised numpy's "truth value of
    # an array ... is ambiguous" (one id passed, and stayed an array of numpy ints that json refuses)
    for ids in (np.array([5, 17, 9]), np.array([5]), (5, 17), [np.int64(5), 17]):
        spec = RequestSpec("a", prompt_token_ids=ids)
        assert spec.prompt_token_ids == list(np.atleast_1d(ids).tolist()) and spec.prompt_len == len(ids)
        assert all(type(t) is int for t in spec.prompt_token_ids)


def test_prompt_len_follows_the_token_ids_through_replace():
    """dataclasses.replace carries the old prompt_len along with new ids: the ids' count wins."""
    from dataclasses import replace

    spec = replace(RequestSpec("a", prompt_token_ids=[1, 2, 3]), prompt_token_ids=[1, 2, 3, 4, 5])
    assert spec.prompt_len == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_token_ids=[]), "request a: prompt_token_ids must not be empty"),
    (dict(prompt_token_ids=np.array([], dtype=int)), "request a: prompt_token_ids must not be empty"),
    (dict(prompt_token_ids=5), "request a: prompt_token_ids must be a list of integers, got int"),
    (dict(prompt_token_ids="5 17"), "request a: prompt_token_ids must be a list of integers, got str"),
    (dict(prompt=""), "request a: prompt must not be empty"),
])
def test_empty_or_scalar_prompts_name_the_field(kwargs, message):
    # [] was blamed on prompt_len (never given), 5 raised "object of type 'int' has no len()", and ""
    # passed, then failed once per request at run time
    with pytest.raises(ValueError, match=re.escape(message)):
        RequestSpec("a", **kwargs)


@pytest.mark.parametrize("n", [-1, 2.5, "3"])
def test_lengths_count_checked(n):
    # numpy's own errors ("negative dimensions are not allowed") named no field
    for spec in (3, Fixed(3), [3, 3]):
        with pytest.raises(ValueError, match=re.escape(f"n: must be an integer >= 0, got {n!r}")):
            lengths(spec, n)
