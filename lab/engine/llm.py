"""LLM: the vLLM-style front door. `generate` for batches, `stream` for per-token events,
`run_workload` to replay a `Workload` at its wall-clock arrival times and return a `Result`.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lab._checks import is_int
from lab.engine.config import EngineConfig
from lab.engine.engine import Engine, RequestIdInFlight, TokenEvent
from lab.engine.loader import (
    checkpoint_dtype,
    load_model,
    read_sampling_defaults,
    resolve_device,
    resolve_dtype,
)
from lab.engine.sequence import SEED_MAX, SEED_MIN, SamplingParams
from lab.metrics import RequestMetrics, Result, StepRecord
from lab.workload import RequestSpec, Workload

_CONFIG_FIELDS = {f.name for f in fields(EngineConfig)}


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None
    metrics: RequestMetrics


class LLM:
    """`LLM()` loads the bundled model; `LLM(model="folder", policy="static", ...)` any HF-format folder.

    Keyword arguments other than model/device/dtype/seed are `EngineConfig` fields.

    Each `generate`, `stream` and `run_workload` call gets every event of its own requests, however
    calls interleave. A request queued by hand (`llm.engine.add_request`) also runs in the steps these
    calls take, while they last, but its events go to no call: read its tokens and text from the
    `Sequence` that add_request returned.
    """

    def __init__(self, model: str | Path | None = None, device: str = "auto", dtype: str = "auto",
                 seed: int = 0, **engine_kwargs):
        unknown = set(engine_kwargs) - _CONFIG_FIELDS
        if unknown:
            raise TypeError(f"LLM: unknown argument(s) {sorted(unknown)}; allowed: {sorted(_CONFIG_FIELDS)}")
        # checked before the (slow) load; torch would fail later with an error naming neither
        if model is not None and not isinstance(model, (str, Path)):
            raise ValueError(f"model: must be a model folder (str or Path) or None for the bundled model, "
                             f"got {type(model).__name__}")
        if not is_int(seed) or not SEED_MIN <= seed <= SEED_MAX:
            raise ValueError(f"seed: must be an integer in [-2**63, 2**63 - 1], got {seed!r}")
        seed = int(seed)  # torch.Generator.manual_seed rejects numpy integers
        config = EngineConfig(**engine_kwargs)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev, checkpoint_dtype(model) if dtype == "auto" else None)
        net, model_config, tokenizer = load_model(model, dev, dt)
        self.model_path = model
        # the folder's recommended temperature / top_p / top_k: what `generate` and the server use
        # where a request leaves them out, as vLLM does
        self.sampling_defaults = read_sampling_defaults(model)
        try:
            SamplingParams(**self.sampling_defaults)  # a bad value is named now, not at a request
        except ValueError as exc:
            raise ValueError(f"model: generation_config.json: {exc}") from None
        self.engine = Engine(net, model_config, tokenizer, config, dev, dt, seed)
        # request id -> the event queue of the open generate, stream or run_workload call that added it. A
        # step runs every request in the engine, so each call files the others' events for them (two streams
        # zipped, or a generate inside a stream's loop, took each other's tokens and finish events)
        self._queues: dict[str, deque[TokenEvent]] = {}

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    # -- batch generation --------------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """One output per prompt, in order. A prompt is text, token ids (a list of ints), or one of vLLM's
        prompt dicts, {"prompt": text} or {"prompt_token_ids": ids}; `prompts` is one prompt or a list.
        `params`: one SamplingParams for all, one each, or None for the model folder's defaults."""
        seqs, queue = self._add_all(prompts, params)
        try:
            with tqdm(total=len(seqs), desc="generate", disable=not use_tqdm or len(seqs) < 2) as bar:
                for event in self._events(seqs, queue):
                    bar.update(int(event.finished))
        finally:
            # an error or Ctrl-C in a step: its requests would hold their blocks and run inside the next call
            self._release(seqs, queue)
        return [self._output(s) for s in seqs]

    def stream(self, prompts, params=None) -> Iterator[TokenEvent]:
        """Yield a `TokenEvent` per new token of any prompt, as steps produce them, and one finished
        event per prompt. Streams and generate calls of one LLM may interleave."""
        seqs, queue = self._add_all(prompts, params)
        try:
            yield from self._events(seqs, queue)
        finally:
            # a consumer that stops early (break, close): its requests would run on inside the next
            # generate or stream, costing its steps and blocks
            self._release(seqs, queue)

    def _add_all(self, prompts, params) -> tuple[list, deque[TokenEvent]]:
        # all or none: every prompt is checked (and tokenized, once) before any is queued
        checked = [(self.engine.check_request(p, sp), sp) for p, sp in zip(*self._pair(prompts, params), strict=True)]
        seqs = [self.engine._enqueue(text, ids, sp) for (text, ids), sp in checked]
        queue: deque[TokenEvent] = deque()
        self._queues.update((s.request_id, queue) for s in seqs)
        return seqs, queue

    def _events(self, seqs, queue: deque[TokenEvent]) -> Iterator[TokenEvent]:
        """The events of `seqs` until each has finished, stepping the engine when none is queued."""
        left = len(seqs)
        # has_unfinished: if an event never comes (an id taken over by a request added by hand), do not spin
        while left and (queue or self.engine.has_unfinished()):
            if not queue:
                self._step(flush=True)
                continue
            event = queue.popleft()
            left -= event.finished
            yield event

    def _step(self, flush: bool) -> None:
        for event in self.engine.step(flush):
            queue = self._queues.get(event.request_id)
            if queue is not None:  # None: a request added by hand, or an abort its call already left
                queue.append(event)

    def _release(self, seqs, queue: deque[TokenEvent]) -> None:
        """A call ends: stop filing events for its requests and abort those still running."""
        for seq in seqs:
            if self._queues.get(seq.request_id) is queue:  # a later call may have reused a finished one's id
                del self._queues[seq.request_id]
            if not seq.is_finished:  # unfinished: the id is still this sequence's (the engine refuses reuse)
                self.engine.abort(seq.request_id)

    def _pair(self, prompts, params):
        if hasattr(prompts, "tolist"):  # a tensor or an array of token ids
            prompts = prompts.tolist()
        if not isinstance(prompts, (str, dict, list, tuple)):
            raise ValueError(f"prompts: must be a prompt (text or a list of token ids) or a list of prompts, "
                             f"got {type(prompts).__name__}")
        if isinstance(prompts, (str, dict)) or (prompts and is_int(prompts[0])):
            prompts = [prompts]  # a single prompt, as text, token ids or a vLLM prompt dict
        prompts = list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams(**self.sampling_defaults)] * len(prompts)
        elif not isinstance(params, (list, tuple)):
            raise ValueError(f"params: must be a SamplingParams or a list of them, got {type(params).__name__}")
        if len(params) != len(prompts):
            raise ValueError(f"params: got {len(params)} SamplingParams for {len(prompts)} prompts; give one or one each")
        return prompts, list(params)

    def _output(self, seq) -> RequestOutput:
        return RequestOutput(seq.request_id, seq.prompt, seq.prompt_token_ids, seq.text,
                             list(seq.output_token_ids), seq.finish_reason, self.engine.metrics(seq))

    # -- workloads ---------------------------------------------------------------------------
    def run_workload(self, workload: Workload, progress: bool = True, label: str | None = None) -> Result:
        """Replay `workload`: each request enters the engine at its `arrival_s` (wall clock)."""
        if not isinstance(workload, Workload):
            raise ValueError(f"workload: must be a lab.workload.Workload, got {type(workload).__name__}")
        engine = self.engine
        # all or none, as generate: a bad request fails the run before it starts, not at its arrival
        # with the earlier ones left running in the engine (and checked before t0, off the clock)
        checked = {}
        for spec in workload.requests:
            try:
                if spec.id in engine.seqs and not engine.seqs[spec.id].is_finished:
                    raise RequestIdInFlight(spec.id)
                params = _params_of(spec)
                checked[spec.id] = (*engine.check_request(self._prompt_of(spec), params), params)
            except ValueError as exc:  # in the workload's terms: its output_len is the engine's max_tokens
                message = re.sub(r"\bmax_tokens\b", "output_len", str(exc))
                raise ValueError(f"request {spec.id}: {message}") from None
        pending = deque(workload.requests)
        first_step = len(engine.trace)
        seqs: list = []
        queue: deque[TokenEvent] = deque()
        left = 0  # requests in the engine that have not finished
        t0 = engine.now()
        try:
            with tqdm(total=len(pending), desc=label or "run_workload", disable=not progress) as bar:
                # has_unfinished: if an event never comes (an id taken over by hand), do not wait forever
                while pending or (left and engine.has_unfinished()):
                    now = engine.now() - t0
                    while pending and pending[0].arrival_s <= now:
                        spec = pending.popleft()
                        text, token_ids, params = checked.pop(spec.id)
                        seqs.append(engine._enqueue(text, token_ids, params, spec.id, t0 + spec.arrival_s))
                        self._queues[spec.id] = queue
                        left += 1
                    before = engine.num_steps
                    self._step(flush=not pending)
                    finished = sum(e.finished for e in queue)
                    queue.clear()
                    left -= finished
                    bar.update(finished)
                    if engine.num_steps == before:  # nothing ran: idle until the next arrival or a static batch's timeout
                        wake = min(t0 + pending[0].arrival_s if pending else math.inf, engine.scheduler.static_timeout_at())
                        wait = wake - engine.now()
                        if engine.has_unfinished():  # and look again within 5 ms, whatever it waits for
                            wait = min(wait, 0.005)
                        time.sleep(max(wait, 0.0))  # finite: with nothing unfinished, an arrival is pending
        finally:  # an error or Ctrl-C: the requests that arrived must not stay in the engine holding blocks
            self._release(seqs, queue)
        requests = [engine.metrics(s).shifted(t0) for s in seqs]
        steps = [_shift_step(s, t0) for s in engine.trace[first_step:]]
        return Result(requests, steps, label=label or f"engine {engine.config.policy}")

    def _prompt_of(self, spec: RequestSpec) -> str | list[int]:
        if spec.prompt_token_ids is not None:
            return spec.prompt_token_ids
        if spec.prompt is not None:
            return spec.prompt
        # length only: random tokens, repeatable per request id, never an end-of-sequence token
        rng = np.random.default_rng(zlib.crc32(spec.id.encode()))
        vocab = self.engine.model_config.vocab_size
        eos = np.unique([t for t in self.engine.model_config.eos_token_ids if 0 <= t < vocab])
        if eos.size >= vocab:  # a vocabulary of nothing but EOS ids: nothing else to draw
            return rng.integers(0, vocab, spec.prompt_len).tolist()
        # drawn from the other ids (shifting an EOS by one landed on the next one where they are
        # neighbours, as Llama 3's 128008 and 128009): a draw among vocab - len(eos) ids, moved past
        # every EOS id at or below it, with no table of the whole vocabulary per request
        draws = rng.integers(0, vocab - eos.size, spec.prompt_len)
        return (draws + np.searchsorted(eos - np.arange(eos.size), draws, side="right")).tolist()


def _params_of(spec: RequestSpec) -> SamplingParams:
    return SamplingParams(max_tokens=spec.output_len, temperature=spec.temperature, top_p=spec.top_p,
                          seed=spec.seed, ignore_eos=spec.ignore_eos)


def _shift_step(s: StepRecord, t0: float) -> StepRecord:
    return StepRecord(**{f.name: getattr(s, f.name) for f in fields(StepRecord)} | {"start_s": s.start_s - t0})


def run_workload(llm: LLM, workload: Workload, progress: bool = True, label: str | None = None) -> Result:
    """The in-process runner of the Workload -> runner -> Result spine (`llm.run_workload` as a function,
    alongside `lab.sim.simulate` and `lab.client.run_workload`)."""
    return llm.run_workload(workload, progress=progress, label=label)
