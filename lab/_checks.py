"""Shared type checks for config validation: an integer or a real number, never a bool.

A leaf module (it imports nothing from lab), so any layer may use it.
"""

from __future__ import annotations

import numbers
import sys

_FLOAT_MAX = sys.float_info.max


def is_int(x, *, numpy: bool = True) -> bool:
    """An integer, not a bool (True is an int in Python). `numpy=False`: a Python int only."""
    kind = numbers.Integral if numpy else int
    return isinstance(x, kind) and not isinstance(x, bool)


def is_number(x, *, numpy: bool = True) -> bool:
    """A real number, not a bool. `numpy=False`: a Python int or float only (np.float64 is a float)."""
    kinds = numbers.Real if numpy else (int, float)
    return isinstance(x, kinds) and not isinstance(x, bool)


def is_finite(x, *, above: float = 0.0, inclusive: bool = False) -> bool:
    """A finite real number (not a bool, not NaN or inf) > `above` (>= with `inclusive`).

    An int past the float range (10**400) is not: every caller does float math with the value.
    """
    # comparisons, not math.isfinite: NaN and inf fail them all the same, and a huge int is compared
    # exactly where math.isfinite raised OverflowError converting it to a float
    return is_number(x) and -_FLOAT_MAX <= x <= _FLOAT_MAX and (x >= above if inclusive else x > above)
