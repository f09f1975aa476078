"""The bundled model's training script and the demo refuse what they cannot run, before any work, naming
the option; a training run records a command that trains the same folder again; the shipped card is
what the script renders from the shipped training.json and config.json."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch

from lab.engine.loader import bundled_model_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_shakespeare.py"
TINY = ["--steps", "2", "--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64",
        "--context", "32", "--batch", "2", "--eval-windows", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def train():
    """The script as a module; its import sets OMP_WAIT_POLICY for itself, not for this test session."""
    saved = os.environ.get("OMP_WAIT_POLICY")
    spec = importlib.util.spec_from_file_location("train_tiny_shakespeare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = saved
        sys.modules.pop(spec.name, None)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--heads", "0"], "--heads: must be an integer >= 1, got 0"),  # was a ZeroDivisionError
    (["--eval-every", "0"], "--eval-every: must be an integer >= 1, got 0"),  # ZeroDivisionError at step 0
    (["--eval-windows", "0"], "--eval-windows: must be an integer >= 1, got 0"),  # after the whole run
    (["--batch", "0"], "--batch: must be an integer >= 1, got 0"),
    (["--steps", "0"], "--steps: must be an integer >= 1, got 0"),  # wrote an untrained model
    (["--context", "200000"], "--context: must be an integer >= 1 and < 111539"),
    (["--dropout", "1.5"], "--dropout: must be a number >= 0 and < 1, got 1.5"),
    (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    (["--min-lr", "0.01"], "--min-lr: must be a number >= 0 and <= --lr (0.002), got 0.01"),
    (["--heads", "5"], "--heads: must split --hidden (32) into heads of an even size, got 5"),  # 32 // 5 dropped 2
    (["--hidden", "30", "--heads", "2"], "--heads: must split --hidden (30)"),  # odd heads: RoPE rotates pairs
    (["--bf16-autocast", "flase"], "argument --bf16-autocast: must be true or false"),  # was a silent False
])
def test_training_refuses_bad_settings_naming_the_flag(train, argv, message, tmp_path, monkeypatch, capsys):
    # a tiny model, the bad setting last (it wins), a folder of its own: should a check go missing, the
    # run fails this test in a second and writes nothing that matters
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *TINY, *argv, "--out", str(tmp_path / "m")])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # not for this test session
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_other_settings_may_not_overwrite_the_bundled_model(train, capsys):
    # the docstring's dry run without its --out replaced the shipped weights its card and tests describe
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--steps", "30"])
    assert exit_info.value.code == 2
    assert "error: --out: the bundled model's folder takes only its own recipe, and --steps" in capsys.readouterr().err
    # its own recipe on another machine (threads, progress printing) still writes there
    assert train.parse_args(["--threads", "1", "--eval-every", "50"]) == (train.TrainConfig(threads=1, eval_every=50),
                                                                         train.OUT)


def test_tiny_run_records_a_command_that_trains_the_same_folder(train, tmp_path, monkeypatch):
    from lab.engine import LLM, SamplingParams

    out = tmp_path / "tiny model"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *TINY, "--out", str(out)])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # not for this test session
    train.main()
    record = json.loads((out / "training.json").read_text())
    # the command used to drop --out: following it trained into the bundled model's folder
    assert record["command"].endswith(f" --out {shlex.quote(str(out))}")
    assert train.parse_args(shlex.split(record["command"])[2:]) == (train.TrainConfig(**record["train_config"]), out)
    card = (out / "README.md").read_text()
    assert card == train.render_card(record, json.loads((out / "config.json").read_text()))
    text = LLM(str(out), device="cpu").generate(["ROMEO:"], SamplingParams(max_tokens=5, temperature=0),
                                               use_tqdm=False)[0].text
    assert len(text) == 5


def test_shipped_card_is_what_the_script_renders_from_its_record(train):
    folder = bundled_model_dir()
    record = json.loads((folder / "training.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())
    assert train.render_card(record, cfg) == (folder / "README.md").read_text()
    c = train.TrainConfig(**record["train_config"])
    assert train.hf_config(c, cfg["vocab_size"]) == cfg
    assert train.parse_args(shlex.split(record["command"])[2:]) == (c, train.OUT)
    # the last scoring window overlaps the one before; the card used to say "non-overlapping"
    starts = train.full_val_starts(record["val_chars"], c.context)
    assert starts[-1] - starts[-2] < c.context and "non-overlapping" not in (folder / "README.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--rate", "1e-300", "--num-requests", "2"], "error: --rate: must let the 2 requests arrive within 3600 s"),
    (["--rate", "0.01"], "error: --rate: must let the 48 requests arrive within 3600 s"),
])
def test_demo_refuses_a_rate_it_would_sleep_through(argv, message, tmp_path, monkeypatch, capsys):
    # 1e-300 overflowed time.sleep after the warm-up (a traceback); 0.01 waited over an hour per policy
    from lab.cli import main

    def never(*a, **k):
        raise AssertionError("the demo ran")

    monkeypatch.setattr("lab.demo.run_demo", never)
    assert main(["demo", *argv, "--report", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1


def test_run_demo_refuses_such_a_rate_before_loading_a_model():
    from lab.demo import run_demo

    with pytest.raises(ValueError, match=r"^rate: must let the 2 requests arrive within 3600 s"):
        run_demo("/nonexistent/model", n=2, rate=1e-9)

    from lab.demo import arrival_span_error, demo_workload

    assert arrival_span_error(demo_workload(), 16.0) is None  # the default demo takes seconds
