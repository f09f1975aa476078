"""The benchmark scripts in bench/: their arguments, what their JSON records, what they leave behind.

No timings are asserted. Each script is loaded from its file (bench/ is not a package) with its costly
entry points replaced, so a bad argument that gets past argparse fails here at once instead of starting
a benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# what each script runs once its arguments are accepted
WORK = {"client": ["run"], "server": ["model_folder"], "engine": ["build_model"],
        "engine_steps": ["build_model"], "sim": ["accuracy", "trace_speed"], "huge_prompt": ["serve"]}


class Started(Exception):
    """Raised in place of a benchmark's work: its arguments were accepted."""


@pytest.fixture
def bench(monkeypatch):
    """load(name): bench/<name>.py as a module, its costly entry points raising Started."""
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import _machine, _cli and engine from there
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler: not for pytest's process

    def load(name: str, stub_work: bool = True):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if stub_work:
            for attr in WORK[name]:
                monkeypatch.setattr(module, attr, _started)
        return module

    yield load
    signal.signal(signal.SIGTERM, sigterm)


def _started(*args, **kwargs):
    raise Started


def run_main(module, monkeypatch, argv: list[str]):
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    return module.main(argv) if module.__name__ == "bench_server" else module.main()


BAD_ARGS = [
    ("client", ["--rounds", "0"], "--rounds"),
    ("client", ["--concurrency", "16", "0"], "--concurrency"),
    ("client", ["--requests", "-5"], "--requests"),
    ("server", ["--rates", "abc"], "--rates"),
    ("server", ["--rates", "4,,inf"], "--rates"),
    ("server", ["--rates", "-4"], "--rates"),
    ("server", ["--rates", "4,4"], "--rates"),
    ("server", ["--num-requests", "0"], "--num-requests"),
    ("server", ["--input-len", "0"], "--input-len"),
    ("server", ["--output-len", "0"], "--output-len"),
    ("server", ["--threads", "0"], "--threads"),
    ("server", ["--max-num-seqs", "0"], "--max-num-seqs"),
    ("server", ["--repeat", "0"], "--repeat"),
    ("engine", ["--predict-gpu", "H999"], "--predict-gpu"),
    ("engine", ["--num-requests", "0"], "--num-requests"),
    ("engine", ["--batch", "0"], "--batch"),
    ("engine", ["--token-budget", "0"], "--token-budget"),
    ("engine", ["--max-output", "-1"], "--max-output"),
    ("engine", ["--device", "tpu"], "--device"),
    ("engine", ["--warmup-rounds", "-1"], "--warmup-rounds"),
    ("engine_steps", ["--rows", "4"], "--rows"),
    ("engine_steps", ["--rows", "2", "2"], "--rows"),
    ("engine_steps", ["--context", "1000", "--profile"], "--context"),
    ("engine_steps", ["--device", "tpu"], "--device"),
    ("huge_prompt", ["--chars", "0"], "--chars"),
    ("sim", ["--quiet-load", "-1"], "--quiet-load"),
    ("sim", ["--quiet-load", "0"], "--quiet-load"),
    ("sim", ["--skip-engine", "--rounds", "2"], "--rounds"),
    ("sim", ["--skip-engine", "--quiet-load", "1.5"], "--quiet-load"),
]


@pytest.mark.parametrize(("script", "argv", "flag"), BAD_ARGS, ids=[f"{s}{' '.join(a)}" for s, a, _ in BAD_ARGS])
def test_bad_values_are_argparse_errors_naming_the_flag(bench, monkeypatch, capsys, tmp_path, script, argv, flag):
    module = bench(script)
    with pytest.raises(SystemExit) as exc:
        run_main(module, monkeypatch, ["--out", str(tmp_path / "out.json"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: " in err or f"error: {flag}: " in err


@pytest.mark.parametrize("script", sorted(WORK))
def test_an_unwritable_out_is_refused_before_the_run(bench, monkeypatch, capsys, tmp_path, script):
    """A folder as --out used to fail only when the JSON was written, after the whole run."""
    module = bench(script)
    with pytest.raises(SystemExit) as exc:
        run_main(module, monkeypatch, ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_engine_warmup_rounds_run_first_and_are_left_out_of_the_medians(bench, monkeypatch, capsys, tmp_path):
    """On a GPU the first round pays for every new shape's kernel plans; --warmup-rounds runs it untimed."""
    module = bench("engine", stub_work=False)
    monkeypatch.setattr(module, "build_model", lambda shape, folder: folder)
    calls = []

    def fake_round(folder, workload, args):  # round n makes n and 10n tok/s, so which were kept shows
        calls.append(len(calls) + 1)
        n = calls[-1]
        cols = ["completed", "req_s", "mean_ttft_ms", "mean_e2el_ms", "p99_e2el_ms", "wasted_slot_steps", "steps",
                "tokens_computed", "ms_per_step"]
        return [{"runner": "ours static", **dict.fromkeys(cols, 1.0), "output_tok_s": float(n)},
                {"runner": "ours continuous", **dict.fromkeys(cols, 1.0), "output_tok_s": 10.0 * n}]

    monkeypatch.setattr(module, "run_round", fake_round)
    out = tmp_path / "engine.json"
    run_main(module, monkeypatch, ["--shape", "tiny", "--warmup-rounds", "2", "--repeat", "3", "--skip",
                                   "hf-generate", "hf-continuous", "--predict-gpu", "none", "--out", str(out)])
    data = json.loads(out.read_text())
    assert calls == [1, 2, 3, 4, 5]
    assert [r[0]["output_tok_s"] for r in data["rounds"]] == [3.0, 4.0, 5.0]
    assert data["rows"][0]["output_tok_s"] == 4.0 and data["rows"][0]["output_tok_s_range"] == [3.0, 5.0]
    assert data["args"]["warmup_rounds"] == 2
    table = capsys.readouterr().out.split("\n\n")[1]  # the medians' table, after the rounds
    assert "output_tok_s_range" in table.splitlines()[0]
    assert "ours static | 1.0 | 4.0 | 3.0-5.0 |" in table  # each runner's spread over the counted rounds


def test_engine_medians_show_a_lost_request_and_counts_that_moved(bench):
    """The counts came from round 0 alone: a request lost in a later round, or a step count that
    changed, did not show in the medians table."""
    engine = bench("engine", stub_work=False)

    def row(tok_s, completed, steps):
        return {"runner": "ours continuous", "completed": completed, "output_tok_s": tok_s,
                "wasted_slot_steps": 0, "steps": steps, "tokens_computed": 100, "ms_per_step": 1.0}

    med, = engine.median_rows([[row(10.0, 64, 283)], [row(12.0, 63, 283)], [row(11.0, 64, 284)]])
    assert med["output_tok_s"] == 11.0 and med["output_tok_s_range"] == [10.0, 12.0]
    assert med["completed"] == 63 and med["steps"] == [283, 283, 284] and med["tokens_computed"] == 100


def test_engine_steps_context_check_matches_when_sequences_finish(bench, monkeypatch, capsys, tmp_path):
    """The largest --context accepted still decodes every row in every timed step; one more is refused
    (it used to time steps whose sequences had reached the model's context and finished)."""
    steps_mod = bench("engine_steps")
    room = steps_mod.SHAPES["tiny"]["max_position_embeddings"]
    steps = 3
    largest = room - 3 - steps  # the prefill and two warm-up steps, then the timed ones
    argv = ["--shape", "tiny", "--rows", "1", "2", "--steps", str(steps), "--repeat", "1",
            "--out", str(tmp_path / "out.json")]
    with pytest.raises(SystemExit):
        run_main(steps_mod, monkeypatch, [*argv, "--context", str(largest + 1)])
    assert "--context" in capsys.readouterr().err
    with pytest.raises(Started):
        run_main(steps_mod, monkeypatch, [*argv, "--context", str(largest)])

    engine_mod = bench("engine", stub_work=False)
    folder = engine_mod.build_model("tiny", tmp_path / "tiny")
    args = type("Args", (), {"device": "cpu", "dtype": "float32", "shape": "tiny", "cuda_graphs": False})()
    engine = steps_mod.decoding_engine(folder, 2, largest, args)
    for _ in range(steps):
        before = len(engine.trace)
        engine.step()
        assert len(engine.trace) == before + 1 and engine.trace[-1].decode_seqs == 2


def test_sim_removes_its_model_folder(bench, monkeypatch, tmp_path):
    sim = bench("sim", stub_work=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    tiny = sim.synthetic(6, prompt_lens=16, output_lens=12, seed=1)
    monkeypatch.setattr(sim, "workloads", lambda: (("fit", "continuous", tiny), [("A", "static", tiny)]))
    report = sim.accuracy(None, 1)
    assert [row["workload"] for row in report["rounds"][0]["rows"]] == ["fit", "A"]
    assert list(tmp_path.glob("sim-bench-*")) == []


def test_sim_json_records_its_arguments(bench, monkeypatch, tmp_path):
    sim = bench("sim")
    timing = {"wall_s": 1.0, "cpu_s": 1.0, "requests_per_s": 1.0}
    monkeypatch.setattr(sim, "trace_speed", lambda: {"requests": 1, "trace_s": 1.0, "no_steps": timing,
                                                      "with_steps": timing})
    out = tmp_path / "sim.json"
    run_main(sim, monkeypatch, ["--skip-engine", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["args"]["skip_engine"] is True and report["args"]["quiet_load"] is None
    assert report["machine"]["cpu"]


def test_server_json_records_rates_and_versions(bench, monkeypatch, tmp_path):
    server = bench("server")
    monkeypatch.setattr(server, "model_folder", lambda: (tmp_path, "a stand-in"))

    def fake_rows(folder, policy, workloads, args):
        return [{"system": f"batching-lab {policy}", "rate": wl.meta["rate"], "errors": [],
                 **dict.fromkeys(server.COLUMNS, 1.0)} for wl in workloads]

    monkeypatch.setattr(server, "run_ours", fake_rows)
    monkeypatch.setattr(server, "stop_on_sigterm", lambda: None, raising=False)  # not in the test process
    out = tmp_path / "server.json"
    assert run_main(server, monkeypatch, ["--rates", "4,inf", "--num-requests", "2", "--skip-static",
                                          "--skip-transformers", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rates"] == ["4", "inf"]
    assert {"python", "torch", "transformers"} <= set(report["versions"])


def test_server_prompts_are_new_at_every_rate_and_round_and_shared_by_the_servers(bench, monkeypatch, tmp_path):
    """One prompt set at every rate gave ours prefix-cache hits from the rate before, which transformers
    serve (whole 256-token pages) could not get."""
    server = bench("server")
    monkeypatch.setattr(server, "model_folder", lambda: (tmp_path, "a stand-in"))
    seen: dict[str, list[tuple[str, ...]]] = {}

    def record(label, workloads):
        seen.setdefault(label, []).extend(tuple(spec.prompt for spec in wl) for wl in workloads)
        return [{"system": label, "rate": wl.meta["rate"], "errors": [], **dict.fromkeys(server.COLUMNS, 1.0)}
                for wl in workloads]

    monkeypatch.setattr(server, "run_ours", lambda folder, policy, workloads, args: record(policy, workloads))
    monkeypatch.setattr(server, "run_transformers", lambda folder, workloads, args: record("transformers", workloads))
    monkeypatch.setattr(server, "stop_on_sigterm", lambda: None, raising=False)
    assert run_main(server, monkeypatch, ["--rates", "4,16,inf", "--num-requests", "3", "--repeat", "2",
                                          "--out", str(tmp_path / "s.json")]) == 0
    sets = seen["continuous"]
    assert len(sets) == 6 and len(set(sets)) == 6  # 3 rates x 2 rounds, no prompt set twice
    assert len({p for prompts in sets for p in prompts}) == 18  # nor any prompt
    assert seen["static"] == sets and seen["transformers"] == sets  # every server the same work


def test_client_json_says_how_many_requests_each_measurement_made(tmp_path):
    """At concurrency 1 a measurement makes at least 200 requests whatever --requests says."""
    out = tmp_path / "client.json"
    subprocess.run([sys.executable, str(BENCH / "client.py"), "--requests", "30", "--rounds", "1",
                    "--concurrency", "1", "16", "--out", str(out)], cwd=ROOT, check=True, timeout=120,
                   capture_output=True)
    rows = json.loads(out.read_text())["results"]
    assert {(r["concurrency"], r["requests"]) for r in rows} == {(1, 200), (16, 30)}


def test_huge_prompt_is_tokenized_and_refused_while_the_stream_runs(tmp_path):
    """A smoke test of the script (the gaps it reports are timings, for bench/, not for asserts): the
    prompt is over the bundled model's context, so with the character bound off it reaches the
    tokenizer and comes back 400, and the stream beside it gets all of its chunks. That tokenizing
    leaves the event loop free is tested in test_server_load and test_tokenizer."""
    out = tmp_path / "huge.json"
    subprocess.run([sys.executable, str(BENCH / "huge_prompt.py"), "--chars", "50000", "--out", str(out)],
                   cwd=ROOT, check=True, timeout=120, capture_output=True)
    report = json.loads(out.read_text())
    assert report["huge_status"] == 400 and report["chars"] == 50000
    assert report["stream_chunks"] >= 200  # 200 tokens (ignore_eos), some chunks may hold two


def _stat(pid: int) -> list[str]:
    """State, parent pid, ... of a process, from /proc; [] when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


def _children(pid: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [c for c in pids if _stat(c)[1:2] == [str(pid)] and _alive(c)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
def test_client_stub_stops_when_the_benchmark_is_terminated(tmp_path):
    """SIGTERM (`timeout`, `kill`) used to end the benchmark without stopping its stub server."""
    proc = subprocess.Popen([sys.executable, str(BENCH / "client.py"), "--requests", "1000000", "--rounds", "1",
                             "--concurrency", "16", "--out", str(tmp_path / "client.json")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stubs: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not stubs and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            stubs = _children(proc.pid)
        assert stubs, "the stub server never started"
        time.sleep(1)  # into the measurement
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        time.sleep(0.5)
        assert not any(_alive(pid) for pid in stubs), "the stub server outlived the benchmark"
    finally:
        for pid in [proc.pid, *stubs]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


@pytest.mark.parametrize("script", ["engine", "sim"])
def test_the_model_folder_goes_when_the_benchmark_is_terminated(tmp_path, script):
    """SIGTERM used to end engine.py and sim.py without removing their temporary model folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, str(BENCH / f"{script}.py"), "--out", str(tmp_path / "out.json")],
                            cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        # the weights are written last (transformers writes shards on a thread of its own): wait for them
        while not list(tmp.glob("**/model.safetensors")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the benchmark never wrote its model"
            time.sleep(0.1)
        time.sleep(0.5)  # into the run
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        assert not list(tmp.glob("**/*.safetensors")) and not list(tmp.glob("**/config.json"))
    finally:
        proc.kill()
        proc.wait()


def test_a_noisy_server_cannot_block_on_its_stderr(bench, monkeypatch):
    """Its stderr went to a pipe nobody read: past 64 KB of warnings the server would block mid-run."""
    server = bench("server", stub_work=False)
    started, real_popen = [], subprocess.Popen
    monkeypatch.setattr(server.subprocess, "Popen", lambda *a, **kw: started.append(real_popen(*a, **kw)) or started[-1])
    cmd = [sys.executable, "-c", "import sys; sys.stderr.write('w' * 200_000 + ' last words'); sys.exit(1)"]
    outcome = []

    def serve():
        try:
            server.serve_process("noisy", cmd, server.free_port(), "m", [], 1)
        except RuntimeError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        thread.join(30)
        assert not thread.is_alive(), "the server blocked writing to its stderr"
        assert outcome and outcome[0].startswith("noisy exited: ") and outcome[0].endswith(" last words")
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def test_the_bare_server_loop_times_requests_as_run_workload_does(bench):
    """`--loadgen loop` ended E2E after the usage chunk and [DONE], and left an EOS's closing chunk
    untimed: its E2E and TPOT were not those of run_workload, which it is the yardstick for."""
    import asyncio

    import httpx

    from lab.workload import RequestSpec

    server = bench("server", stub_work=False)
    chunks = [{"choices": [{"index": 0, "text": "A", "finish_reason": None}]},
              {"choices": [{"index": 0, "text": "B", "finish_reason": None}]},
              {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]},  # the EOS: no text
              {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}]

    def handler(request):
        async def body():
            for chunk in chunks:
                await asyncio.sleep(0.01)
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            await asyncio.sleep(0.3)  # slow to close the stream: not generation
            yield b"data: [DONE]\n\n"

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await server._one(http, "http://test/v1", "m", RequestSpec("r0", 0.0, prompt="hi"), time.perf_counter())

    m = asyncio.run(run())
    assert m.status == "ok" and len(m.token_times_s) == 3 and m.output_tokens == 3
    assert m.finish_s == m.token_times_s[-1]  # the 0.3 s before [DONE] is not in E2E
