"""The demo report's step axes start at 0 for each run, although its warm-up moved the engine's counter."""

from __future__ import annotations

from helpers_server import tiny_model_dir

from lab.demo import report_figures, run_demo


def test_demo_report_counts_each_runs_steps_from_zero():
    results = run_demo(tiny_model_dir(), n=6, rate=200.0, max_num_seqs=4, progress=False)
    assert list(results) == ["static", "continuous"]  # both runs, so the checks below run for each
    assert [len(r.requests) for r in results.values()] == [6, 6] and all(r.steps for r in results.values())
    for name, result in results.items():
        # the warm-up generate ran on the same engine: its steps were counted before the run's
        assert result.steps[0].step > 0
        occupancy = next(f for f in report_figures(results, 4) if f.layout.title.text == f"{name}: batch occupancy")
        xs = list(occupancy.data[0].x)
        assert xs == list(range(len(result.steps)))  # 0, 1, 2, ... not 16, 17, ...
