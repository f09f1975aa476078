"""argparse option types and checks shared by every `batching-lab` subcommand: numbers in a range,
seeds, output paths. A leaf module (it imports nothing from lab), so lab.client and lab.sim mount
their verbs without importing lab.cli, which sits on top of them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

SEED_MAX = 2**63 - 1  # the engine's torch.Generator takes no more
# an integer flag ends up in numpy and torch int64s: a bigger one failed deep inside them, naming no flag
INTEGER_MAX = 2**63 - 1


def number_arg(low: float = 0.0, *, low_ok: bool = False, high: float = math.inf, high_ok: bool = False,
               inf_ok: bool = False, integer: bool = False):
    """argparse type: a number in the range (low, high), ends included where *_ok, inf only with
    inf_ok, never NaN; an integer no more than INTEGER_MAX. A bad value exits 2 with
    `argument --flag: must be ...`, before anything runs."""
    if inf_ok:
        high, high_ok = math.inf, True

    def fmt(x):
        return str(x) if isinstance(x, int) else f"{x:g}"

    kind = "an integer" if integer else "a number" if inf_ok or high < math.inf else "a finite number"
    rule = kind + (f" >= {fmt(low)}" if low_ok else f" > {fmt(low)}") + (
        " (or inf)" if inf_ok else "" if high == math.inf else f" and {'<=' if high_ok else '<'} {fmt(high)}")

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = math.nan
        # isnan on floats only: an int is never NaN, and one past the float range (a 400-digit
        # --num-blocks) made math.isnan raise OverflowError
        nan = isinstance(value, float) and math.isnan(value)
        if nan or not (value >= low if low_ok else value > low) or not (value <= high if high_ok else value < high):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        if integer and value > INTEGER_MAX:  # said only here: "an integer >= 1" reads better in every other error
            raise argparse.ArgumentTypeError(f"must be {rule} and <= {INTEGER_MAX}, got {text!r}")
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse's fallback wording, if ever used
    return parse


seed_arg = number_arg(0, low_ok=True, high=SEED_MAX, high_ok=True, integer=True)
positive_int_arg = number_arg(1, low_ok=True, integer=True)  # counts: requests, blocks, threads


def check_output_path(option: str, path: str | os.PathLike | None, *, create_parent: bool = False) -> None:
    """Fail before a long run, not after it, where its output file could not be written: a folder that
    does not exist (unless create_parent), a folder in the file's place, an empty name, a place no file
    can be made (/proc). A bad option, as the README has it: ValueError, exit 2 naming `option`."""
    if path is None:
        return
    if not os.fspath(path):
        raise ValueError(f"{option}: an empty path; give a file name")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option}: {str(path)!r} is a folder; give a file name inside it")
    parent = path.parent
    if create_parent:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # "[Errno 17] File exists: 'x'" for a file in the way said neither what nor why
            raise ValueError(f"{option}: cannot create the folder {str(parent)!r}: {e.strerror}") from None
    elif parent.exists() and not parent.is_dir():
        raise ValueError(f"{option}: {str(parent)!r} is a file, not a folder")
    elif not parent.is_dir():
        raise ValueError(f"{option}: the folder {str(parent)!r} does not exist; create it first "
                         f"or write somewhere else")
    _check_writable(option, path)


def _check_writable(option: str, path: Path) -> None:
    """Open the file for appending, as the run will write it (a new one removed again): a folder that
    exists can still refuse files (/proc, read-only mounts, permissions), and the run found out only
    at its end, with "[Errno 2] No such file or directory" naming no option."""
    existed = os.path.lexists(path)
    if existed and not path.is_file():  # a device or pipe (/dev/stdout: opening one can block), a dangling link
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
    except OSError as e:
        raise ValueError(f"{option}: cannot write {str(path)!r}: {e.strerror}; write somewhere else") from None
    if not existed:
        path.unlink(missing_ok=True)


def in_flag_terms(message: str, flags: dict[str, str]) -> str:
    """`message` with each library parameter name in `flags` replaced by the flag a user typed, where it
    stands as a name: "max_num_batched_tokens (2048) must be >= max_num_seqs (5000)" -> "--max-num-...";
    inside a path or a longer word it stays ("/data/max_model_len-4k" is a folder)."""
    names = "|".join(map(re.escape, sorted(flags, key=len, reverse=True)))
    pattern = re.compile(rf"(?<![\w/.-])({names})(?![\w/-]|\.\w)")
    return pattern.sub(lambda m: flags[m[1]], message)


def leading_flag(message: str, flags: dict[str, str]) -> str:
    """A library error's leading "name:" as the flag a user typed ("model: x is not a folder" ->
    "--model: ..."), there only: single words such as "model" stand in prose too ("this model's context")."""
    head, sep, rest = message.partition(":")
    return flags[head] + sep + rest if sep and head in flags else message


def in_flag_error(e: Exception, message: str) -> Exception:
    """`e` again with `message`, as its base type (ValueError or OSError), so the command's exit code
    (2 for a bad option, 1 for a missing file) stays what it was; `e` itself when nothing changed."""
    if message == str(e):
        return e
    return (ValueError if isinstance(e, ValueError) else OSError)(message)
