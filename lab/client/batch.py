"""Batch runs that lose nothing: one record per input, appended and flushed as it completes, resumable.

`await arun_batch(...)` in async code (and Jupyter, which allows top-level await); `run_batch(...)` anywhere
else, notebooks included (it runs on a helper thread when a loop is already running). Inputs are OpenAI
Batch API lines ({"custom_id", "method", "url", "body"}) or plain request bodies; records mirror its output.
A body's timeout, extra_headers and extra_body are per-request options, as in `create()`, not sent as fields.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

from lab.client._aio import run_sync
from lab.client._base import make_timeout
from lab.client.client import AsyncClient, Client

ENDPOINTS = {"/v1/chat/completions": "/chat/completions", "/v1/completions": "/completions"}
# how records are written: a server's JSON may hold a lone surrogate ("\ud83d", half an emoji, from a
# gateway that cut a string at a UTF-16 boundary), which json.loads accepts and UTF-8 cannot encode: the
# write raised, killing the batch at that record, and every rerun again. Surrogates occur only inside JSON
# strings, so "backslashreplace" writes back the very escape they came from (`\ud83d`): the line stays
# valid JSON, readable UTF-8 elsewhere, and reads back as the same string
RECORD_ERRORS = "backslashreplace"


def load_requests(path: str | os.PathLike) -> list[dict]:
    """Input lines of a JSONL file (blank lines skipped)."""
    return [item for _, item in numbered_requests(path)]


def numbered_requests(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, input line) for each non-blank line of a JSONL file: the number names the line
    in a message about it, where a position in the list would miscount past blank lines."""
    # utf-8-sig: editors on Windows (Notepad, PowerShell's Out-File) save UTF-8 with a byte order mark,
    # which json.loads refused as "Unexpected UTF-8 BOM" on line 1
    with open(path, encoding="utf-8-sig") as f:
        return [(n, _input_line(path, n, line)) for n, line in enumerate(f, 1) if line.strip()]


def _input_line(path, n: int, line: str) -> dict:
    # json's own message says "line 1 column 5" of the one line: name the file's line instead
    try:
        item = json.loads(line)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}, line {n}: not valid JSON ({e})") from None
    if not isinstance(item, dict):
        raise ValueError(f"{os.fspath(path)}, line {n}: expected a JSON object (a Batch API line or a request "
                         f"body), got {type(item).__name__}")
    return item


def _custom_id(item: dict, index: int) -> str:
    """The line's id as text, its position when it has none. A null was stored as "None", where a
    second null or a real "None" id then collided with it."""
    cid = item.get("custom_id", index)
    if isinstance(cid, bool) or not isinstance(cid, (str, int)) or cid == "":
        raise ValueError(f"request {index}: custom_id must be a non-empty string (or left out: the line's "
                         f"position), got {cid!r}")
    return str(cid)


def normalize(requests) -> list[tuple[str, str, dict]]:
    """(custom_id, endpoint path, body) per input; ids default to the input's position."""
    if isinstance(requests, (str, bytes, dict)) or not hasattr(requests, "__iter__"):
        raise TypeError(f"requests: must be a list of request bodies (dicts; `load_requests(path)` reads a JSONL "
                        f"file), got {type(requests).__name__}")
    out, seen = [], set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict):
            raise TypeError(f"request {i}: expected a dict, got {type(item).__name__}")
        custom_id = _custom_id(item, i)
        if "body" in item:  # a Batch API line
            method = item.get("method", "POST")
            # a null or numeric field must be named, not fail as `'NoneType' object has no attribute ...`
            if not isinstance(method, str) or method.upper() != "POST":
                raise ValueError(f"request {custom_id}: method must be POST, got {method!r}")
            if not isinstance(item["body"], dict):
                raise ValueError(f"request {custom_id}: body must be a JSON object (the request body), "
                                 f"got {type(item['body']).__name__}")
            body = dict(item["body"])
            # no url: the body says which endpoint, as for a bare body (a chat default sent a prompt
            # to /chat/completions, which refused it as "messages: field required")
            url = item.get("url", _default_url(body))
            url = url if not isinstance(url, str) or url.startswith("/v1") else "/v1" + url
            if not isinstance(url, str) or url not in ENDPOINTS:
                raise ValueError(f"request {custom_id}: url {item.get('url')!r} unsupported; allowed: "
                                 f"{', '.join(ENDPOINTS)}")
            path = ENDPOINTS[url]
        else:  # a bare body
            body = {k: v for k, v in item.items() if k != "custom_id"}
            path = ENDPOINTS[_default_url(body)]
        _check_options(custom_id, body)
        if custom_id in seen:
            raise ValueError(f"custom_id {custom_id!r} appears twice; ids must be unique to resume a batch")
        seen.add(custom_id)
        body.pop("stream", None)  # a batch stores whole answers
        body.pop("stream_options", None)
        out.append((custom_id, path, body))
    return out


def _default_url(body: dict) -> str:
    """The endpoint of a body that names none: chat if it has messages."""
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


def _check_options(custom_id: str, body: dict) -> None:
    """A body's timeout, extra_headers and extra_body are create()'s per-request options, as they have
    always been here: per-line headers are how a batch sends x-lab-fault (tests/test_client_server.py),
    and no OpenAI request field has these names (its Batch API would forward them, to be refused as
    unknown), so no file meant for it is read differently. What the client cannot use is refused
    before anything is sent: it failed every line, as `'int' object is not iterable` and the like."""
    if "timeout" in body:
        try:
            make_timeout(body["timeout"])
        except (TypeError, ValueError):
            raise ValueError(f"request {custom_id}: body key timeout is this client's per-request timeout, not "
                             f"a field it sends; it must be seconds > 0, null (no limit) or an object of "
                             f"connect/read/write/pool seconds, got {body['timeout']!r}") from None
    headers = body.get("extra_headers")
    if headers is not None and not (isinstance(headers, dict) and all(
            isinstance(v, str) for v in headers.values())):
        raise ValueError(f"request {custom_id}: body key extra_headers is the headers this client adds to the "
                         f"request, not a field it sends; it must be an object of strings, got {headers!r}")
    extra = body.get("extra_body")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"request {custom_id}: body key extra_body is merged into the body this client sends; "
                         f"it must be an object, got {type(extra).__name__}")


def read_checkpoint(path: Path) -> tuple[dict[str, dict], bool]:
    """Records by custom_id (the last one wins) and whether the file needs rewriting (a torn line
    from a killed run, or duplicates). A file that holds anything else is refused, not rewritten:
    the rewrite keeps records only, so pointing `checkpoint` at the wrong file would lose it."""
    records: dict[str, dict] = {}
    dirty = False
    if not path.exists():
        return records, dirty
    # read as bytes, decoded line by line: a write cut short can end inside a multi-byte character,
    # and decoding the whole file refused it as "not UTF-8", so a killed run could not resume
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                if raw.startswith(b"{"):  # a record cut inside a character: torn, as below
                    dirty = True
                    continue
                raise ValueError(f"checkpoint: {path} is not UTF-8 text, so not the output of a batch "
                                 f"run; give a new file") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                if line.startswith("{"):  # a record cut short: the process died mid-write
                    dirty = True  # that request simply runs again
                    continue
                rec = None
            if not (isinstance(rec, dict) and "custom_id" in rec and "error" in rec
                    and (rec["error"] is None or isinstance(rec["error"], dict))):
                raise ValueError(f"checkpoint: {path}, line {n} is not a record of a batch run; give a "
                                 f"new file, or the output of an earlier run to resume it")
            dirty |= rec["custom_id"] in records
            records[rec["custom_id"]] = rec
    return records, dirty


def success_record(custom_id: str, index: int, result) -> dict:
    return {
        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
        "custom_id": custom_id,
        "index": index,
        "response": {"status_code": 200, "request_id": result.request_id, "body": result.raw},
        "error": None,
        "retries": result.retries,
        "latency_s": result.latency_s,
        "cost_usd": result.cost_usd,
    }


def error_record(custom_id: str, index: int, exc: Exception) -> dict:
    status = getattr(exc, "status_code", None)
    request_id = getattr(exc, "request_id", None)
    return {
        "id": f"batch_req_{uuid.uuid4().hex[:24]}",
        "custom_id": custom_id,
        "index": index,
        "response": None if status is None else {"status_code": status, "request_id": request_id,
                                                 "body": getattr(exc, "body", None)},
        "error": {"type": type(exc).__name__, "message": getattr(exc, "message", None) or str(exc),
                  "status_code": status, "request_id": request_id},
        "retries": getattr(exc, "retries_taken", 0),
        "latency_s": None,
        "cost_usd": None,
    }


async def arun_batch(client, requests, *, concurrency: int = 16, checkpoint: str | os.PathLike | None = None,
                     progress: bool = True, retry_errors: bool = False, desc: str = "batch") -> list[dict]:
    """Send every request; return one record per input, in input order.

    With `checkpoint`, records already in that JSONL file are skipped (errors too, unless
    `retry_errors=True`), and each new record is appended and flushed the moment it completes, so a
    killed run loses at most the requests in flight.
    """
    return await _arun(client, False, requests, concurrency=concurrency, checkpoint=checkpoint,
                       progress=progress, retry_errors=retry_errors, desc=desc)


async def _arun(client, fresh: bool, requests, *, concurrency, checkpoint, progress, retry_errors, desc):
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    items = normalize(requests)
    path = Path(checkpoint) if checkpoint is not None else None
    done, dirty = read_checkpoint(path) if path else ({}, False)
    if retry_errors:  # only this run's inputs: other runs' records in the same file stay as they are
        wanted = {cid for cid, _, _ in items}
        done = {cid: rec for cid, rec in done.items() if cid not in wanted or rec.get("error") is None}
    todo = [(i, cid, p, body) for i, (cid, p, body) in enumerate(items) if cid not in done]
    # a sync Client lends its settings to an async twin; so does any client when run_batch starts a new
    # loop, because an AsyncClient's connections belong to the loop that opened them
    own = fresh or not isinstance(client, AsyncClient)
    aclient = AsyncClient(**client.config()) if own else client

    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, disable=not progress)
    out = open(path, "a", encoding="utf-8", errors=RECORD_ERRORS) if path else None  # noqa: SIM115 (closed in finally)
    if out is not None and out.tell() > 0 and not _ends_with_newline(path):
        out.write("\n")  # a torn last line must not swallow the next record
    queue: asyncio.Queue = asyncio.Queue()
    for job in todo:
        queue.put_nowait(job)
    errors = 0

    async def worker():
        nonlocal errors
        while not queue.empty():
            index, cid, endpoint, body = queue.get_nowait()
            try:
                result = await aclient._create(endpoint, body)
                rec = success_record(cid, index, result)
            except Exception as exc:  # every failure becomes a record; cancellation still propagates
                rec = error_record(cid, index, exc)
                errors += 1
            done[cid] = rec
            if out is not None:
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                out.flush()
            bar.update(1)
            if errors:
                bar.set_postfix(errors=errors, refresh=False)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(todo)))]
    try:
        await asyncio.gather(*workers)
    finally:
        # one worker failing (a record that cannot be written: a full disk) ends the run; gather leaves
        # the others running, sending requests whose records could no longer be written
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        bar.close()
        if out is not None:
            out.close()
        if own:
            await aclient.close()
    if path is not None and (dirty or retry_errors):
        _rewrite(path, done)
    return [done[cid] for cid, _, _ in items]


def run_batch(client, requests, *, concurrency: int = 16, checkpoint: str | os.PathLike | None = None,
              progress: bool = True, retry_errors: bool = False, desc: str = "batch") -> list[dict]:
    """`arun_batch` for plain code: scripts, and notebook cells that prefer not to `await`."""
    if not isinstance(client, (Client, AsyncClient)):
        raise TypeError(f"client must be a lab.client Client or AsyncClient, got {type(client).__name__}")
    return run_sync(lambda: _arun(client, True, requests, concurrency=concurrency, checkpoint=checkpoint,
                                  progress=progress, retry_errors=retry_errors, desc=desc))


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _rewrite(path: Path, records: dict[str, dict]) -> None:
    """One line per custom_id, atomically (a crash leaves the old file or the new one, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", errors=RECORD_ERRORS) as f:
        for rec in records.values():
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
