"""Client overhead: requests/s against a minimal local stub server, ours vs the openai SDK vs bare httpx.

The stub (raw asyncio, HTTP/1.1 keep-alive, one fixed chat completion) runs in a child process so the
clients, measured one after another in this process, get the parent's CPU. Rounds are interleaved and the
median kept, because the machine is shared. Writes bench/results/client.json.

    .venv/bin/python bench/client.py [--requests 1500] [--rounds 3] [--concurrency 1 16 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import time
from pathlib import Path

from _cli import check_out, stop_on_sigterm
from _machine import cpu_name  # bench/ is on sys.path when a bench runs as a script

from lab.cli_args import positive_int_arg

BODY = json.dumps({
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the stub server."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req-stub\r\n"
            b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
MESSAGES = [{"role": "user", "content": "Say hello."}]


class StubProtocol(asyncio.Protocol):
    """Just enough HTTP/1.1: headers, a Content-Length body, the same answer every time."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(RESPONSE)


def serve_stub(sock: socket.socket) -> None:
    async def main():
        server = await asyncio.get_running_loop().create_server(StubProtocol, sock=sock, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def drive(call, total: int, concurrency: int) -> float:
    """Requests/s for `total` calls spread over `concurrency` workers."""
    remaining = total

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


def requests_at(concurrency: int, total: int) -> int:
    """Requests per measurement: a third at concurrency 1 (each one waits for the last), at least 200."""
    return max(total // 3, 200) if concurrency == 1 else total


def make_clients(base_url: str):
    """name -> (async call, async close): each sends the same chat completion and parses the answer."""
    import httpx
    import openai

    from lab.client import AsyncClient

    ours = AsyncClient(base_url=base_url, api_key="sk-bench-0123456789")
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench-0123456789")
    # bare httpx gets the same pool size as ours, so a reconnect per request never decides the race
    bare = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
                             headers={"authorization": "Bearer sk-bench-0123456789"})
    body = {"model": "stub-model", "messages": MESSAGES, "max_tokens": 16}

    async def call_ours():
        r = await ours.chat.completions.create(model="stub-model", messages=MESSAGES, max_tokens=16)
        assert r.choices[0].message.content

    async def call_sdk():
        r = await sdk.chat.completions.create(model="stub-model", messages=MESSAGES, max_tokens=16)
        assert r.choices[0].message.content

    async def call_bare():
        r = await bare.post(base_url + "/chat/completions", json=body)
        r.raise_for_status()
        assert r.json()["choices"][0]["message"]["content"]

    return {"lab.client": (call_ours, ours.close), "openai SDK": (call_sdk, sdk.close),
            "bare httpx": (call_bare, bare.aclose)}


async def run(base_url: str, concurrencies, total: int, rounds: int) -> dict:
    clients = make_clients(base_url)
    for call, _ in clients.values():  # warm up connections and lazy imports
        await drive(call, 200, 16)
    samples = {name: {c: [] for c in concurrencies} for name in clients}
    for _ in range(rounds):
        for c in concurrencies:
            for name, (call, _) in clients.items():
                samples[name][c].append(await drive(call, requests_at(c, total), c))
    for _, close in clients.values():
        await close()
    return {name: {c: statistics.median(v) for c, v in by_c.items()} for name, by_c in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=positive_int_arg, default=1500,
                        help="requests per measurement (a third at c=1, at least 200)")
    parser.add_argument("--rounds", type=positive_int_arg, default=3)
    parser.add_argument("--concurrency", type=positive_int_arg, nargs="+", default=[1, 16, 64])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "client.json"))
    args = parser.parse_args()
    args.concurrency = list(dict.fromkeys(args.concurrency))  # each once: the table has a column per value
    check_out(parser, args.out)
    stop_on_sigterm()  # the stub must not outlive this process

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stub = mp.get_context("fork").Process(target=serve_stub, args=(sock,), daemon=True)
    stub.start()
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    try:
        t0 = time.perf_counter()
        rps = asyncio.run(run(base_url, args.concurrency, args.requests, args.rounds))
        wall = time.perf_counter() - t0
    finally:
        stub.terminate()
        stub.join()

    import httpx
    import openai

    rows = []
    header = f"{'client':<12}" + "".join(f"{'c=' + str(c) + ' req/s':>15}{'vs best':>9}" for c in args.concurrency)
    print(header)
    for name, by_c in rps.items():
        line = f"{name:<12}"
        for c in args.concurrency:
            best = max(r[c] for r in rps.values())
            line += f"{by_c[c]:>15.0f}{by_c[c] / best:>9.0%}"
            rows.append({"client": name, "concurrency": c, "requests": requests_at(c, args.requests),
                         "requests_per_s": round(by_c[c], 1),
                         "relative_to_best": round(by_c[c] / best, 3)})
        print(line)
    result = {
        "benchmark": "client overhead, loopback stub, non-streaming chat completion",
        "machine": {"cpus": os.cpu_count(), "processor": cpu_name(), "python": platform.python_version(),
                    "platform": platform.platform(), "gpu": None,
                    "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "versions": {"httpx": httpx.__version__, "openai": openai.__version__},
        "requests_per_measurement": args.requests, "rounds": args.rounds, "wall_s": round(wall, 1),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
