"""Length distributions for prompts and outputs: fixed, uniform, exponential, lognormal, empirical.

Each is a small dataclass with `sample(n, rng)`; `lengths()` also accepts an int or one value per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lab._checks import is_finite, is_int

# the longest length: no length comes near it. int64 arrays hold lengths, which wrap a bigger one negative
# (a heavy tail, LogNormal sigma 25, can pass 2**63) or refuse it ("Python int too large to convert to C long")
MAX_LENGTH = 2**62


@dataclass(slots=True)
class Fixed:
    value: int

    def __post_init__(self):
        _check_int("Fixed.value", self.value)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


@dataclass(slots=True)
class Uniform:
    """Integers in [low, high], both included (vLLM's random dataset with a range ratio)."""

    low: int
    high: int

    def __post_init__(self):
        if self.high is None:  # the others' "no upper bound"; a uniform range needs one
            raise ValueError(f"Uniform.high: must be an integer >= low ({self.low}), got None")
        _check_bounds("Uniform", self.low, self.high)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, size=n)


@dataclass(slots=True)
class Exponential:
    """Mean `mean`, rounded and clipped to [low, high]: many short requests, a long tail."""

    mean: float
    low: int = 1
    high: int | None = None

    def __post_init__(self):
        _check_finite("Exponential.mean", self.mean)
        _check_bounds("Exponential", self.low, self.high)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _clip(rng.exponential(self.mean, size=n), self.low, self.high)


@dataclass(slots=True)
class LogNormal:
    """Median `median` and log-space spread `sigma`, the usual fit to chat prompt lengths."""

    median: float
    sigma: float = 1.0
    low: int = 1
    high: int | None = None

    def __post_init__(self):
        _check_finite("LogNormal.median", self.median)
        if not is_finite(self.sigma, inclusive=True):
            raise ValueError(f"LogNormal.sigma: must be a finite number >= 0, got {self.sigma!r}")
        _check_bounds("LogNormal", self.low, self.high)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _clip(rng.lognormal(np.log(self.median), self.sigma, size=n), self.low, self.high)


@dataclass(slots=True)
class Empirical:
    """Resample observed lengths (e.g. a trace's), with optional weights."""

    values: Sequence[int]
    weights: Sequence[float] | None = None

    def __post_init__(self):
        values = np.asarray(self.values)
        if values.ndim != 1:  # a scalar n would make rng.choice sample 0..n-1, zero included
            raise ValueError(f"Empirical.values: need a 1-D sequence of lengths, got {self.values!r}")
        if values.size == 0:
            raise ValueError("Empirical.values: need at least one value, all >= 1")
        self.values = _whole(values, "Empirical.values")
        if (self.values < 1).any():
            raise ValueError(f"Empirical.values: need at least one value, all >= 1, found {self.values.min()}")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=float)
            # NaN and inf pass `w < 0` and `w.sum() <= 0`, then break the normalisation
            if w.shape != self.values.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError("Empirical.weights: need one finite weight >= 0 per value, not all zero")
            self.weights = w / w.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.values, size=n, p=self.weights)


LENGTH_KINDS = (Fixed, Uniform, Exponential, LogNormal, Empirical)


def lengths(spec, n: int, rng: np.random.Generator | None = None, field_name: str = "lengths") -> np.ndarray:
    """`n` lengths from an int (fixed), a sequence (one per request) or a distribution."""
    rng = rng if rng is not None else np.random.default_rng(0)
    if not is_int(n) or n < 0:  # else numpy's "negative dimensions are not allowed", naming nothing
        raise ValueError(f"n: must be an integer >= 0, got {n!r}")
    if isinstance(spec, LENGTH_KINDS):
        return spec.sample(n, rng)
    if np.isscalar(spec):
        _check_int(field_name, spec)
        return np.full(n, int(spec), dtype=np.int64)
    arr = _whole(np.asarray(spec), field_name)
    if arr.ndim != 1 or len(arr) != n:
        got = f"{arr.size}" if arr.ndim == 1 else f"an array of shape {arr.shape}"
        raise ValueError(
            f"{field_name}: need a flat list of {n} values, got {got}; or give an int or a distribution "
            f"({', '.join(k.__name__ for k in LENGTH_KINDS)})"
        )
    if (arr < 1).any():
        raise ValueError(f"{field_name}: every length must be >= 1, found {arr.min()}")
    return arr


def _whole(values: np.ndarray, field_name: str) -> np.ndarray:
    """`values` as int64, refusing what the cast would change: 10.7 would become 10 without a word,
    1e22 or inf a negative number."""
    if values.dtype.kind == "O":  # an int past int64 makes an object array: "of type object" hid why
        big = next((v for v in values.flat if is_int(v) and v > MAX_LENGTH), None)
        if big is not None:
            raise ValueError(f"{field_name}: every length must be <= 2**62, found {big}")
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise ValueError(f"{field_name}: lengths must be whole numbers, got {values[values != np.round(values)][0]}")
    if values.dtype.kind not in "iuf":
        raise ValueError(f"{field_name}: need integer lengths, got values of type {values.dtype}")
    if values.size and values.max() > MAX_LENGTH:
        raise ValueError(f"{field_name}: every length must be <= 2**62, found {values.max()}")
    return values.astype(np.int64)


def _check_int(name: str, v) -> None:
    if not is_int(v) or not 1 <= v <= MAX_LENGTH:
        raise ValueError(f"{name}: must be an integer >= 1 and <= 2**62, got {v!r}")


def _check_bounds(kind: str, low: int, high: int | None) -> None:
    _check_int(f"{kind}.low", low)
    if high is not None and (not is_int(high) or high < low):
        raise ValueError(f"{kind}.high: must be an integer >= low ({low}), got {high!r}")
    if high is not None and high > MAX_LENGTH:  # Uniform's rng.integers failed: "high is out of bounds for int64"
        raise ValueError(f"{kind}.high: must be <= 2**62, got {high!r}")


def _check_finite(name: str, v) -> None:
    # inf would sample lengths that overflow int64 into negative numbers
    if not is_finite(v):
        raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")


def _clip(x: np.ndarray, low: int, high: int | None) -> np.ndarray:
    top = MAX_LENGTH if high is None else min(high, MAX_LENGTH)
    return np.clip(np.rint(x), low, top).astype(np.int64)
