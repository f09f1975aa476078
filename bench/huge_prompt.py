"""One huge prompt against the other streams: does tokenizing it stall them?

A client streams a completion from the bundled model while another posts a prompt of `--chars`
characters. The bundled tokenizer's character-count bound (which refuses an over-long prompt without
tokenizing it) is switched off, as for any BPE vocabulary, so the server must tokenize all of it
before its context check answers 400. Reported: the largest gap between the stream's chunks, and how
long the huge request took. Writes bench/results/huge_prompt.json.

    .venv/bin/python bench/huge_prompt.py [--chars 4000000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import time
from pathlib import Path

import httpx
from _cli import check_out, stop_on_sigterm
from _machine import cpu_name  # bench/ is on sys.path when a bench runs as a script

from lab.cli_args import positive_int_arg
from lab.server import serve

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "corpus" / "tinyshakespeare.txt"


async def measure(url: str, chars: int) -> dict:
    corpus = CORPUS.read_text(encoding="utf-8")
    huge = (corpus * (chars // len(corpus) + 1))[:chars]
    chunk_times: list[float] = []
    async with httpx.AsyncClient(timeout=300) as http:
        model = (await http.get(url + "/models")).json()["data"][0]["id"]

        async def stream() -> None:
            body = {"model": model, "prompt": "ROMEO:", "max_tokens": 200, "stream": True, "ignore_eos": True}
            async with http.stream("POST", url + "/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        chunk_times.append(time.perf_counter())

        async def post_huge() -> tuple[int, float]:
            await asyncio.sleep(0.5)  # the stream is under way
            start = time.perf_counter()
            r = await http.post(url + "/completions", json={"model": model, "prompt": huge, "max_tokens": 1})
            return r.status_code, time.perf_counter() - start

        _, (status, huge_s) = await asyncio.gather(stream(), post_huge())
    gaps = [b - a for a, b in itertools.pairwise(chunk_times)]
    return {"chars": chars, "stream_chunks": len(chunk_times), "max_gap_s": round(max(gaps), 3),
            "huge_status": status, "huge_request_s": round(huge_s, 3)}


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=positive_int_arg, default=4_000_000, help="the huge prompt's length")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "huge_prompt.json"))
    args = parser.parse_args()
    check_out(parser, args.out)
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    with serve() as server:
        server.engine.engine.tokenizer._chars_per_token = 0  # no bound, as for a BPE vocabulary
        result = asyncio.run(measure(server.url, args.chars))
    print(f"stream chunks {result['stream_chunks']}, largest gap between them {result['max_gap_s']:.3f} s; "
          f"huge request: HTTP {result['huge_status']} after {result['huge_request_s']:.2f} s")
    result["machine"] = {"cpus": os.cpu_count(), "processor": cpu_name(), "python": platform.python_version(),
                         "load_avg_1min_before": round(load_before, 2)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
