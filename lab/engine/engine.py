"""Engine: requests in, one scheduled forward pass per `step()`, token events out.

`add_request` validates and queues a request, `step` runs the scheduler, the model and the stop
checks once, `abort` cancels. Every step appends a `StepRecord` to `engine.trace`. The
user-facing `LLM` wrapper lives in `llm.py`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace

import torch

from lab._checks import is_int, is_number
from lab.engine.block_manager import BlockManager
from lab.engine.config import EngineConfig, blocks_in_budget
from lab.engine.model import ModelConfig
from lab.engine.model_runner import ModelRunner, kv_bytes_per_block
from lab.engine.sampler import SamplingError, seeded_generator
from lab.engine.scheduler import Scheduler, admission_error
from lab.engine.sequence import SamplingParams, Sequence, SequenceStatus
from lab.engine.stop_strings import first_stop, partial_stop_length
from lab.engine.tokenizer import Tokenizer
from lab.metrics import RequestMetrics, StepRecord

log = logging.getLogger(__name__)


class RequestIdInFlight(ValueError):
    """An id that names a request still running: the engine keys its requests by id."""

    def __init__(self, request_id: str):
        super().__init__(f"request_id: {request_id!r} is already in flight")
        self.request_id = request_id


DETOK_CONTEXT_TOKENS = 5  # prompt tokens the detokenizer starts from (vLLM's initial offset)

CPU_KV_BUDGET_GIB = 2.0  # default cap for the KV cache on CPU; most runs need far less
GPU_KV_FRACTION = 0.85  # of the memory still free after loading the weights


@dataclass(slots=True)
class TokenEvent:
    """What one step produced for one request: a token (and its text), or its end."""

    request_id: str
    token_id: int | None
    text: str  # new text since the previous event; stop strings are held back until resolved
    finished: bool
    finish_reason: str | None = None  # stop, length, abort, or error (this request alone failed)
    error: str | None = None  # why, with finish_reason "error"


class Engine:
    def __init__(self, model, model_config: ModelConfig, tokenizer: Tokenizer | None, config: EngineConfig,
                 device: torch.device, dtype: torch.dtype, seed: int = 0):
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.device = device
        if config.max_model_len is not None and config.max_model_len > model_config.max_position_embeddings:
            # as vLLM: positions past the model's context were never trained; clamping would hide that
            # the limit asked for is not the one in force
            raise ValueError(f"max_model_len: {config.max_model_len} exceeds this model's context "
                             f"(max_position_embeddings={model_config.max_position_embeddings}); allowed: at most "
                             f"{model_config.max_position_embeddings}, or None for the model's own")
        if config.max_model_len is None:
            # a copy: the caller's config may serve a simulation too, which must keep its own limit
            config = replace(config, max_model_len=model_config.max_position_embeddings)
        self.config = config
        if config.cuda_graphs and device.type != "cuda":
            log.warning("cuda_graphs: CUDA graphs need a GPU; on %s every step runs eagerly", device)
        num_blocks = config.num_blocks or self._blocks_from_budget(dtype)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.runner = ModelRunner(model, model_config, num_blocks, config.block_size, device, dtype, seed,
                                  graph_batch=config.max_num_seqs if config.cuda_graphs else 0,
                                  graph_width=-(-config.max_model_len // config.block_size))
        self.trace: list[StepRecord] = []  # a long-running owner may trim it; steps keep their numbers
        self.num_steps = 0
        self.seqs: dict[str, Sequence] = {}
        self._aborted: list[Sequence] = []  # reported as events by the next step
        self._t0 = time.perf_counter()
        self._next_id = 0
        # the thread of the AsyncEngine (a server) that drives this engine, if one does: the engine is
        # not thread-safe, and an LLM.generate beside a serve() broke both (IndexError, failed steps)
        self.driver: threading.Thread | None = None

    def _check_thread(self, what: str) -> None:
        driver = self.driver
        if driver is not None and driver is not threading.current_thread():
            raise RuntimeError(f"{what}: a server (AsyncEngine) drives this engine from its own thread; "
                               "send the request to the server, or stop the server first")

    def _blocks_from_budget(self, dtype: torch.dtype) -> int:
        cfg = self.config
        per_block = kv_bytes_per_block(self.model_config, cfg.block_size, dtype)
        enough = cfg.max_num_seqs * -(-cfg.max_model_len // cfg.block_size)  # every slot at full length
        if cfg.kv_cache_memory_gib is not None:  # yours: refused if it holds no block
            return min(enough, blocks_in_budget(cfg, per_block))
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            # memory torch's caching allocator holds but no tensor uses (an engine built and dropped
            # before this one, say) is free to this engine too; the driver counts it as taken
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            budget = free * GPU_KV_FRACTION
        else:
            budget = CPU_KV_BUDGET_GIB * 2**30
        # the engine's own guess at a budget: at least one block. With CUDA graphs the runner's cache
        # holds a scratch block beyond those handed out: in the budget too
        return max(1, min(enough, int(budget // per_block) - cfg.cuda_graphs))

    def now(self) -> float:
        """Seconds since the engine started: the clock of every time it records."""
        return time.perf_counter() - self._t0

    # -- requests --------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, arrival_s: float | None = None) -> Sequence:
        if params is None:  # not `params or ...`: a falsy wrong type ({}) silently became the defaults
            params = SamplingParams()
        if request_id is not None and not isinstance(request_id, str):
            raise ValueError(f"request_id: must be a string or None, got {type(request_id).__name__}")
        if request_id in self.seqs and not self.seqs[request_id].is_finished:
            raise RequestIdInFlight(request_id)
        if arrival_s is not None and not (is_number(arrival_s) and math.isfinite(arrival_s)):
            # a NaN arrival never reaches the static batch timeout: a server (which never flushes) would hang
            raise ValueError(f"arrival_s: must be a finite number (engine clock seconds) or None, got {arrival_s!r}")
        text, ids = self.check_request(prompt, params)
        return self._enqueue(text, ids, params, request_id, arrival_s)

    def _enqueue(self, text: str | None, ids: list[int], params: SamplingParams, request_id: str | None = None,
                 arrival_s: float | None = None) -> Sequence:
        """Queue a request `check_request` has already validated (and tokenized)."""
        self._check_thread("add_request")  # LLM.generate and run_workload queue through here too
        if request_id is None:
            request_id = self._new_request_id()
        # a copy, made by rerunning SamplingParams' checks: a field set after construction (sp.stop = "of"
        # was then matched letter by letter) is normalized, and the caller's later changes do not reach
        # a request in flight
        params = replace(params)
        seq = Sequence(request_id, ids, params, self.now() if arrival_s is None else arrival_s, prompt=text)
        seq.detok_ids = ids[-DETOK_CONTEXT_TOKENS:]
        seq.detok_read = len(seq.detok_ids)
        if params.seed is not None:
            # on the model's device, so sampling never copies a row of probabilities to the host
            seq.generator = seeded_generator(self.runner.device, params.seed)
        self.seqs[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def _new_request_id(self) -> str:
        # skip ids the caller already used ("req-N" is a plain string): two requests in flight under one
        # id would share aborts, events and (static) batch membership, and taking a just-aborted one
        # would swallow its abort event
        while True:
            request_id = f"req-{self._next_id}"
            self._next_id += 1
            if request_id not in self.seqs:
                return request_id

    def check_request(self, prompt: str | list[int], params: SamplingParams) -> tuple[str | None, list[int]]:
        """Validate a request without queueing it: (text or None, token ids), or a ValueError naming the field."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params: must be a SamplingParams, got {type(params).__name__}")
        params = replace(params)  # its checks again: a field may have been set to a bad value since
        text, ids = self._tokenize(prompt)
        self._validate(ids, params)
        return text, ids

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            prompt = _from_prompt_dict(prompt)
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt: must not be empty")
            if self.tokenizer is None:
                raise ValueError("prompt: this model folder has no tokenizer; pass token ids instead of text")
            return prompt, self.tokenizer.encode(prompt)
        ids = prompt.tolist() if hasattr(prompt, "tolist") else prompt  # a tensor or an array of ids
        if not isinstance(ids, (list, tuple)) or not all(is_int(t) for t in ids):
            raise ValueError(f"prompt: must be text (str) or token ids (a list of ints), got {_describe(prompt)}")
        if not ids:
            raise ValueError("prompt: must not be empty")
        return None, [int(t) for t in ids]

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        cfg, vocab = self.config, self.model_config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt: token id {bad} is outside the vocabulary [0, {vocab})")
        bad = next((t for t in params.stop_token_ids if not 0 <= t < vocab), None)
        if bad is not None:  # it can never be sampled, so the stop would silently never happen
            raise ValueError(f"stop_token_ids: token id {bad} is outside the vocabulary [0, {vocab})")
        problem = admission_error(len(ids), params.max_tokens, cfg, cfg.max_model_len, self.block_manager)
        if problem is not None:
            raise ValueError(problem)
        if params.stop and self.tokenizer is None:
            # stop strings are matched in decoded text, and this model has no tokenizer to decode with
            raise ValueError("stop: this model folder has no tokenizer, so stop strings cannot be matched; "
                             "use stop_token_ids")
        alphabet = self.tokenizer.alphabet if self.tokenizer is not None else None
        unknown = sorted(set("".join(params.stop)) - alphabet) if alphabet is not None else []
        if unknown:  # a character vocabulary never writes them, so the stop would silently never happen
            raise ValueError(f"stop: character(s) {''.join(unknown)!r} are not in this model's vocabulary, so "
                             f"the stop string can never match; allowed: {''.join(sorted(alphabet))!r}")

    def abort(self, request_id: str) -> bool:
        """Cancel a request; its blocks are free when this returns. False if it already ended."""
        if not isinstance(request_id, str):  # a tuple of ids was looked up as one id: "already ended"
            raise ValueError(f"request_id: must be a string (one request per call), got {type(request_id).__name__}")
        self._check_thread("abort")
        seq = self.seqs.get(request_id)
        if seq is None or seq.is_finished:
            return False
        self.scheduler.finish(seq, "abort", self.now())
        self._aborted.append(seq)
        return True

    def has_unfinished(self) -> bool:
        """Requests still to run, or aborts the next step has yet to report."""
        return self.scheduler.has_unfinished() or bool(self._aborted)

    # -- one step --------------------------------------------------------------------------
    def step(self, flush: bool = False) -> list[TokenEvent]:
        """Schedule, run the model once, sample, check stops. `flush`: no more requests are coming."""
        self._check_thread("step")
        # an id reused since its abort belongs to the new request now: its old end is not reported
        events = [TokenEvent(s.request_id, None, "", True, "abort") for s in self._aborted
                  if self.seqs.get(s.request_id) is s]
        self._aborted.clear()
        start = self.now()
        batch = self.scheduler.schedule(start, flush)
        if not batch.seqs:
            return events
        context_tokens = batch.context_tokens
        computed = [s.num_computed_tokens for s in batch.seqs]  # lets FittedStepModel.fit see exact contexts
        sampled = self.runner.execute(batch)
        self.scheduler.on_computed(batch)
        end = self.now()
        finished = 0
        for seq, token in sampled:
            if isinstance(token, SamplingError):  # its logits were NaN or inf: it fails, the batch goes on
                event = self._fail_request(seq, token, end)
            else:
                try:
                    event = self._append_token(seq, token, end)
                except Exception as exc:  # one request's text or stop check, not the batch's forward pass
                    event = self._fail_request(seq, exc, end)
            finished += event.finished
            events.append(event)
        sched = self.scheduler
        self.trace.append(StepRecord(
            step=self.num_steps, start_s=start, duration_s=end - start,
            prefill_tokens=batch.num_prefill_tokens, decode_seqs=batch.num_decode_seqs,
            num_running=len(sched.running), num_waiting=len(sched.waiting),
            kv_blocks_used=self.block_manager.num_used, num_preempted=len(batch.preempted),
            num_finished=finished, context_tokens=context_tokens,
            idle_slots=self.config.max_num_seqs - len(batch.seqs),
            batch=[(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)], computed=computed,
        ))
        self.num_steps += 1
        return events

    def _append_token(self, seq: Sequence, token: int, now: float) -> TokenEvent:
        p = seq.params
        seq.output_token_ids.append(token)
        seq.token_times_s.append(now)
        if seq.first_token_s is None:
            seq.first_token_s = now
        reason = None
        if (token in self.model_config.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            reason = "stop"
        if reason is None and (len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.config.max_model_len):
            reason = "length"
        hold = 0
        if self.tokenizer is not None:
            # decode only the new tokens (a full decode per token is quadratic in the output length)
            longest_stop = max((len(s) for s in p.stop), default=0)
            search_from = max(0, len(seq.text) - longest_stop + 1)
            if reason != "stop":
                # a stop token (EOS, stop_token_ids) stays in token_ids and usage but not in the text,
                # as vLLM and OpenAI do; decoding without it still flushes characters held back
                seq.detok_ids.append(token)
            new, seq.detok_prefix, seq.detok_read = self.tokenizer.decode_next(
                seq.detok_ids, seq.detok_prefix, seq.detok_read, final=reason is not None)
            seq.text += new
            cut = first_stop(seq.text, p.stop, search_from)
            if cut >= 0:
                seq.text, reason = seq.text[:cut], "stop"
            elif reason is None and p.stop:  # a stop string may be completing: hold its possible start back
                hold = partial_stop_length(seq.text, p.stop, longest_stop)
        if reason is not None:
            self.scheduler.finish(seq, reason, now)
        visible = seq.text[: max(seq.stream_offset, len(seq.text) - hold)]
        delta, seq.stream_offset = visible[seq.stream_offset:], len(visible)
        return TokenEvent(seq.request_id, token, delta, reason is not None, reason)

    def _fail_request(self, seq: Sequence, exc: Exception, now: float) -> TokenEvent:
        """End one request whose token could not be sampled or turned into text (NaN logits, a
        detokenizer error): raising instead failed the whole step, and every other request in the batch."""
        log.error("%s: failed at its token (%s); the other requests go on", seq.request_id, exc, exc_info=exc)
        if not seq.is_finished:
            self.scheduler.finish(seq, "error", now)
        seq.finish_reason, seq.error = "error", f"{type(exc).__name__}: {exc}"
        return TokenEvent(seq.request_id, None, "", True, "error", seq.error)

    def metrics(self, seq: Sequence) -> RequestMetrics:
        ok = seq.is_finished and seq.finish_reason != "error"
        status = "aborted" if seq.finish_reason == "abort" else "ok" if ok else "error"
        return RequestMetrics(
            request_id=seq.request_id, arrival_s=seq.arrival_s, prompt_tokens=seq.num_prompt_tokens,
            output_tokens=len(seq.output_token_ids), first_scheduled_s=seq.first_scheduled_s,
            first_token_s=seq.first_token_s, finish_s=seq.finish_s, token_times_s=list(seq.token_times_s),
            status=status, finish_reason=seq.finish_reason, error=seq.error,
        )

    def release(self, request_id: str) -> None:
        """Forget a finished request (long-running servers call this to bound memory)."""
        seq = self.seqs.get(request_id)
        if seq is not None and seq.status is SequenceStatus.FINISHED:
            del self.seqs[request_id]


def _from_prompt_dict(prompt: dict):
    """vLLM's prompt dicts, so code written for vLLM's `LLM.generate` runs here: TextPrompt
    {"prompt": text} and TokensPrompt {"prompt_token_ids": ids}; nothing else (no multi-modal data)."""
    (key, value), *rest = prompt.items() or [(None, None)]
    if rest or key not in ("prompt", "prompt_token_ids"):
        raise ValueError(f"prompt: a dict must hold one key, 'prompt' (text) or 'prompt_token_ids' (a list of "
                         f"ints), as vLLM's TextPrompt and TokensPrompt; got keys {sorted(map(str, prompt))}")
    if (key == "prompt") != isinstance(value, str):  # else text would pass as ids, or ids as text
        wanted = "text (str)" if key == "prompt" else "a list of ints"
        raise ValueError(f"prompt: {key!r} must be {wanted}, got {_describe(value)}")
    return value


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
