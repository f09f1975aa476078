"""Huge and tiny numbers are refused by name, with what is allowed, never as an OverflowError or a
numpy message from deep inside (a 400-digit flag, lengths past int64, a rate of 1e-308)."""

import argparse
import re
import warnings

import numpy as np
import pytest

from lab._checks import is_finite
from lab.cli import main
from lab.cli_args import number_arg, positive_int_arg, seed_arg
from lab.lengths import Empirical, Exponential, Fixed, Uniform, lengths
from lab.workload import RequestSpec, azure_trace, poisson_arrivals, synthetic

HUGE = "1" * 400  # an int past the float range: math.isnan(int(HUGE)) raised OverflowError
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW = "2023-11-16 18:17:03.9799600,10,4\n"


def _cli(argv, capsys):
    """main's exit code (or argparse's) and its stderr; an exception escaping main fails the test."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# -- integer flags ------------------------------------------------------------------------------
def test_is_finite_refuses_an_int_past_the_float_range_and_keeps_the_rest():
    assert not is_finite(10**400) and not is_finite(-(10**400), above=-np.inf, inclusive=True)
    assert is_finite(2**1000) and is_finite(1.0) and is_finite(np.float64(2)) and is_finite(0, inclusive=True)
    assert not any(is_finite(x) for x in (0, -1, float("nan"), float("inf"), np.nan, True, "1", None))


@pytest.mark.parametrize("arg", [positive_int_arg, seed_arg, number_arg(0, low_ok=True, high=65535, high_ok=True,
                                                                        integer=True)])
def test_number_arg_refuses_an_int_past_the_float_range(arg):
    with pytest.raises(argparse.ArgumentTypeError, match=rf"^must be an integer >= \d+ and <= \d+, got '{HUGE}'$"):
        arg(HUGE)


@pytest.mark.parametrize("argv", [
    ["simulate", "--num-blocks", HUGE],
    ["simulate", "--num-prompts", HUGE],
    ["demo", "--num-requests", HUGE],
    ["serve", "--port", HUGE],
    ["batch", "in.jsonl", "out.jsonl", "--max-retries", HUGE],
])
def test_a_400_digit_integer_flag_is_a_usage_error(argv, capsys):
    code, err = _cli(argv, capsys)
    flag = argv[-2]
    assert code == 2 and re.search(rf"argument {flag}: must be an integer >= \d+ and <= \d+, got '{HUGE}'", err)


def test_integer_flags_stop_at_int64(capsys):
    # 2**63 fits a float, so it passed the parser and failed in numpy, naming no flag
    code, err = _cli(["simulate", "--num-prompts", str(2**63), "--no-progress"], capsys)
    assert code == 2 and f"argument --num-prompts: must be an integer >= 1 and <= {2**63 - 1}" in err
    assert positive_int_arg(str(2**63 - 1)) == 2**63 - 1


# -- lengths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda: lengths(10**22, 3, field_name="output_lens"), "output_lens: must be an integer >= 1 and <= 2**62, got 10"),
    (lambda: lengths(2**63, 3, field_name="prompt_lens"), "prompt_lens: must be an integer >= 1 and <= 2**62, got 9"),
    (lambda: synthetic(2, output_lens=10**22), "output_lens: must be an integer >= 1 and <= 2**62"),
    (lambda: Fixed(2**63), "Fixed.value: must be an integer >= 1 and <= 2**62"),
    (lambda: Uniform(1, 10**22), "Uniform.high: must be <= 2**62, got 10"),
    (lambda: Exponential(8, high=10**22), "Exponential.high: must be <= 2**62, got 10"),
    # one per request: an object array ("of type object"), or cast to int64 as a negative number
    (lambda: lengths([10**22, 1], 2, field_name="output_lens"), "output_lens: every length must be <= 2**62, found 10"),
    (lambda: lengths([1e22, 1.0], 2, field_name="prompt_lens"), "prompt_lens: every length must be <= 2**62, found 1e+22"),
    (lambda: lengths(np.array([np.inf, 1]), 2, field_name="prompt_lens"), "prompt_lens: every length must be <= 2**62, found inf"),
    (lambda: Empirical([10**22, 5]), "Empirical.values: every length must be <= 2**62, found 10"),
])
def test_lengths_past_the_bound_are_refused_by_name(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        call()


def test_lengths_stop_at_2_to_the_62():
    assert lengths(2**62, 2).tolist() == [2**62, 2**62] and lengths([2**62, 1], 2).tolist() == [2**62, 1]
    with pytest.raises(ValueError, match=r"^output_lens: must be an integer >= 1 and <= 2\*\*62"):
        lengths(2**62 + 1, 2, field_name="output_lens")


def test_an_output_len_past_the_bound_is_refused_on_the_cli(capsys):
    # the sim's Uniform spread rounds --output-len through a float: 2**63 - 1 became np.full's OverflowError
    code, err = _cli(["simulate", "--output-len", str(2**63 - 1), "--no-progress"], capsys)
    assert code == 2 and "error: --output-len: must be an integer >= 1 and <= 2**62" in err


# -- arrivals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [lambda: synthetic(10**22), lambda: poisson_arrivals(2**62, 1.0)])
def test_more_requests_than_fit_in_memory_are_refused_by_name(call):
    with pytest.raises(ValueError, match=r"^n: must be <= 100,000,000 requests .*, got \d+$"):
        call()


def test_num_prompts_past_the_bound_names_n_on_the_cli(capsys):
    code, err = _cli(["simulate", "--num-prompts", str(2**62), "--no-progress"], capsys)
    assert code == 2 and "error: --num-prompts: must be <= 100,000,000 requests" in err


@pytest.mark.parametrize("call", [
    lambda: synthetic(3, rate=1e-308),
    lambda: poisson_arrivals(3, 1e-308, burstiness=np.inf),
    lambda: poisson_arrivals(3, 1e-200, burstiness=1e-200),  # rate * burstiness was 0.0: ZeroDivisionError
])
def test_a_rate_too_low_for_a_float_clock_names_rate(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings are checked, not printed
        with pytest.raises(ValueError, match=r"^rate: 1e-\d+ requests/s \(burstiness \S+\) is too low for 3 requests"):
            call()


def test_a_rate_past_the_float_range_names_rate():
    # np.isinf(10**400) was a TypeError about ufunc casting
    with pytest.raises(ValueError, match=r"^rate: must be > 0 requests/s \(or inf\), got 1000"):
        poisson_arrivals(3, 10**400)
    with pytest.raises(ValueError, match=r"^burstiness: must be > 0 \(or inf\), got 1000"):
        synthetic(3, rate=1.0, burstiness=10**400)


def test_a_tiny_rate_names_rate_on_the_cli(capsys):
    code, err = _cli(["simulate", "--rate", "1e-308", "--num-prompts", "5", "--no-progress"], capsys)
    assert code == 2 and "error: --rate: 1e-308 requests/s (--burstiness 1) is too low for 5 requests" in err


def test_huge_request_fields_are_refused_by_name():
    with pytest.raises(ValueError, match=r"^request a: temperature must be a finite number >= 0, got 1000"):
        RequestSpec("a", prompt_len=1, temperature=10**400)
    with pytest.raises(ValueError, match=r"^request a: arrival_s must be a finite number >= 0, got 1000"):
        RequestSpec("a", 10**400, prompt_len=1)


# -- traces -------------------------------------------------------------------------------------
@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + ROW + ROW.replace("03.9", "05.9"))
    return path


def test_a_tiny_rate_scale_names_rate_scale(trace):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^rate_scale: 1e-308 is too small: it stretches 2\.0 s of trace"):
            azure_trace("code", path=trace, rate_scale=1e-308)
    assert azure_trace("code", path=trace, rate_scale=1e-300).duration_s == pytest.approx(2e300)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rate_scale=10**400), r"^rate_scale: must be a finite number > 0, got 1000"),  # np.isinf: TypeError
    (dict(start_s=10**400), r"^start_s/end_s: need 0 <= start_s < end_s, got 1000"),  # OverflowError in numpy
    (dict(end_s=10**400), r"^start_s/end_s: need 0 <= start_s < end_s, got 0\.0, 1000"),
])
def test_trace_window_and_scale_past_the_float_range_are_refused(trace, kwargs, match):
    with pytest.raises(ValueError, match=match):
        azure_trace("code", path=trace, **kwargs)
    assert len(azure_trace("code", path=trace, end_s=np.inf)) == 2


def test_a_tiny_rate_scale_names_it_on_the_cli(capsys):
    code, err = _cli(["simulate", "--trace", "conv", "--rate-scale", "1e-308", "--no-progress"], capsys)
    assert code == 2 and "error: --rate-scale: 1e-308 is too small" in err


@pytest.mark.parametrize("row, column, value", [
    ("2023-11-16 18:17:04.0,99999999999999999999999,4\n", "ContextTokens", "99999999999999999999999"),
    (f"2023-11-16 18:17:04.0,12,{2**63}\n", "GeneratedTokens", str(2**63)),
])
def test_a_token_count_past_int64_names_row_and_column(tmp_path, row, column, value):
    # was "Python int too large to convert to C long", naming neither
    path = tmp_path / "t.csv"
    path.write_text(HEADER + ROW + row)
    with pytest.raises(ValueError, match=rf"^t\.csv: row 3, column {column} must be <= 2\*\*62, found {value}$"):
        azure_trace("code", path=path)
