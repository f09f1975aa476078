"""Every simulator playground renders at the corners its sliders allow, and its figures and readouts
name what the controls set: lab.viz now refuses some inputs it used to draw (a max_num_seqs that
disagrees with the trace, a KV capacity under the peak), and a playground must never hand it one."""

from __future__ import annotations

import itertools

from lab import widgets


def _corners(slider) -> tuple:
    return slider.min, slider.max


def test_batching_playground_renders_at_every_slider_corner():
    pg = widgets.batching_playground(n=12)
    c = pg.controls
    rates = (10 ** c["rate"].min, 10 ** c["rate"].max)
    for policy, seqs, rate, spread in itertools.product(c["policy"].options, _corners(c["max_num_seqs"]), rates,
                                                        _corners(c["spread"])):
        c["policy"].value, c["max_num_seqs"].value, c["rate"].value, c["spread"].value = policy, seqs, rate, spread
        result = pg.results["simulator"]
        assert len(result.completed) == 12 and result.label == f"simulator · {policy}"
        names = {t.name for t in pg.figures["occupancy"].data}
        assert f"max_num_seqs = {seqs}" in names  # the limit line is the batch-size slider's
        assert pg.figures["timeline"].layout.title.text.endswith(policy)


def test_kv_cache_playground_renders_at_every_slider_corner():
    pg = widgets.kv_cache_playground()
    c = pg.controls
    for blocks, prefix, caching in itertools.product(_corners(c["num_blocks"]), _corners(c["prefix_len"]),
                                                     (True, False)):
        c["num_blocks"].value, c["prefix_len"].value, c["prefix_caching"].value = blocks, prefix, caching
        assert len(pg.results["simulator"].completed) == 32
        assert f"capacity = {blocks}" in {t.name for t in pg.figures["kv"].data}
        assert f"of {blocks} blocks" in pg.status.value
        assert f"prefix caching {'on' if caching else 'off'}" in pg.figures["kv"].layout.title.text


def test_cost_playground_renders_at_every_slider_corner():
    pg = widgets.cost_playground()
    c = pg.controls
    for prompt, output, cached, batch in itertools.product(_corners(c["prompt_tokens"]), _corners(c["output_tokens"]),
                                                           _corners(c["cached_fraction"]), (False, True)):
        c["prompt_tokens"].value, c["output_tokens"].value = prompt, output
        c["cached_fraction"].value, c["batch"].value = cached, batch
        frame = pg.results["frame"]
        assert set(frame["prompt_tokens"]) == {100_000 * prompt} and set(frame["completion_tokens"]) == {100_000 * output}
        assert pg.figures["cost"].layout.title.text == "Cost of 100,000 requests (USD)"
        assert pg.status.value.startswith("cheapest: ")
