"""One simulated engine: the engine's own Scheduler and BlockManager, with a step-time model in
place of the forward pass. `step` mirrors `lab.engine.engine.Engine.step` line for line.

Prompts are token ids, not text (no tokenizer): text prompts that share only a prefix never share
cached blocks here, unlike in the engine (see `_token_ids`).
"""

from __future__ import annotations

import math
import zlib

from lab.engine.block_manager import BlockManager
from lab.engine.config import EngineConfig
from lab.engine.scheduler import Scheduler, admission_error
from lab.engine.sequence import SamplingParams, Sequence
from lab.metrics import RequestMetrics, StepRecord
from lab.sim.step_models import batch_shape
from lab.workload import RequestSpec

DUMMY_TOKEN_BASE = 1 << 40  # dummy prompt tokens: one id per request, clear of real vocabularies


class Replica:
    """An engine in virtual time. `next_t`: when it next wants to step (inf: waiting for work)."""

    def __init__(
        self,
        config: EngineConfig,
        step_model,
        num_blocks: int,
        max_model_len: float,
        index: int = 0,
        record_steps: bool = True,
    ):
        self.config = config
        self.step_time = step_model.step_time
        self.bm = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.sched = Scheduler(config, self.bm)
        self.max_model_len = max_model_len
        self.index = index
        self.record_steps = record_steps
        self.steps: list[StepRecord] = []
        self.num_steps = 0
        self.done: dict[str, RequestMetrics] = {}
        self.out_token: dict[str, int] = {}
        self.free_at = 0.0  # end of the last step
        self.next_t = math.inf
        self.outstanding = 0  # admitted, not finished
        self.last_finished = 0  # finished by the last step (still outstanding until free_at)

    # -- requests --------------------------------------------------------------------------
    def add(self, spec: RequestSpec, serial: int) -> None:
        # checked before the ids are built: a prompt of 10**12 tokens, refused here anyway, first
        # became a list of 10**12 ids (a MemoryError traceback, or minutes and gigabytes)
        prompt_len = _prompt_len(spec)
        error = self._invalid(prompt_len, spec.output_len)
        if error:
            self.done[spec.id] = RequestMetrics(
                spec.id, spec.arrival_s, prompt_tokens=prompt_len, status="error", error=error
            )
            return
        ids, out = _token_ids(spec, serial)
        params = SamplingParams(
            max_tokens=spec.output_len,
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
            ignore_eos=True,
        )
        self.sched.add(Sequence(spec.id, ids, params, spec.arrival_s))
        self.out_token[spec.id] = out
        self.outstanding += 1

    def _invalid(self, prompt_len: int, max_tokens: int) -> str | None:
        """The engine's add_request checks; the engine raises, the simulator records a failure."""
        # named as the workload names it: a RequestSpec's output_len, not the engine's max_tokens
        return admission_error(prompt_len, max_tokens, self.config, self.max_model_len, self.bm, "output_len")

    def outstanding_at(self, now: float) -> int:
        return self.outstanding + (self.last_finished if self.free_at > now else 0)

    # -- one step, as Engine.step ---------------------------------------------------------
    def step(self, now: float, flush: bool) -> bool:
        sched = self.sched
        batch = sched.schedule(now, flush)
        seqs, counts = batch.seqs, batch.num_new_tokens
        if not seqs:
            self.next_t = self._wake_time(now)
            return False
        shape = batch_shape(seqs, counts)
        seconds = self.step_time(shape)
        # any step model may be a user's own: inf stalled the run with an error blaming the KV cache,
        # NaN made every later time NaN, a negative time ran the clock backwards
        if not 0 <= seconds < math.inf:  # a plain comparison: this runs every step (NaN fails it too)
            raise ValueError(f"step_model: step_time returned {seconds!r} for {shape}; "
                             "must be a finite number of seconds >= 0")
        end = now + seconds
        if end == math.inf:  # finite steps (or a late arrival) can still add up past the largest float
            raise ValueError(f"step_model: step_time returned {seconds!r} s at t={now!r} s, and the clock passed "
                             "the largest float (about 1.8e308 s); step times and arrival times must add up to less")
        computed = [s.num_computed_tokens for s in seqs] if self.record_steps else None
        sampled = sched.on_computed(batch)
        finished = 0
        for seq in sampled:
            seq.output_token_ids.append(self.out_token[seq.request_id])
            seq.token_times_s.append(end)
            if seq.first_token_s is None:
                seq.first_token_s = end
            if len(seq.output_token_ids) >= seq.params.max_tokens or seq.num_tokens >= self.max_model_len:
                sched.finish(seq, "length", end)
                self._record_finish(seq)
                finished += 1
        if self.record_steps:
            self.steps.append(
                StepRecord(
                    step=self.num_steps,
                    start_s=now,
                    duration_s=end - now,
                    prefill_tokens=batch.num_prefill_tokens,
                    decode_seqs=batch.num_decode_seqs,
                    num_running=len(sched.running),
                    num_waiting=len(sched.waiting),
                    kv_blocks_used=self.bm.num_used,
                    num_preempted=len(batch.preempted),
                    num_finished=finished,
                    context_tokens=shape.context_tokens,
                    idle_slots=self.config.max_num_seqs - len(seqs),
                    batch=[(s.request_id, n) for s, n in zip(seqs, counts, strict=True)],
                    computed=computed,
                    replica=self.index,
                )
            )
        self.num_steps += 1
        self.free_at = self.next_t = end
        self.last_finished = finished
        self.outstanding -= finished
        return True

    def _record_finish(self, seq: Sequence) -> None:
        del self.out_token[seq.request_id]
        self.done[seq.request_id] = RequestMetrics(
            request_id=seq.request_id,
            arrival_s=seq.arrival_s,
            prompt_tokens=seq.num_prompt_tokens,
            output_tokens=len(seq.output_token_ids),
            first_scheduled_s=seq.first_scheduled_s,
            first_token_s=seq.first_token_s,
            finish_s=seq.finish_s,
            token_times_s=seq.token_times_s,
            status="ok",
            finish_reason=seq.finish_reason,
        )

    def _wake_time(self, now: float) -> float:
        """Nothing ran: static waits for its batch timeout; otherwise only an arrival wakes it."""
        t = self.sched.static_timeout_at()
        return t if t > now else math.nextafter(now, math.inf)


def _prompt_len(spec: RequestSpec) -> int:
    """The prompt's length in tokens, as `_token_ids` makes it, without making the ids."""
    if spec.prompt_token_ids is not None:
        return len(spec.prompt_token_ids)
    if spec.prompt is not None:
        return spec.prompt_len or max(1, round(len(spec.prompt) / 4))
    return spec.prompt_len


def _token_ids(spec: RequestSpec, serial: int) -> tuple[list[int], int]:
    """Prompt token ids and the token every output step appends.

    Length-only prompts get one dummy id repeated, distinct per request, so prompts never share
    a cached prefix (but a preempted request still hits its own blocks, as in the engine). Equal
    token-id or text prompts get equal ids and outputs, so they hit each other exactly as in a
    greedy engine.

    Limitations: there is no tokenizer here, so a text prompt becomes `prompt_len` copies of one id
    hashed from the whole text. Two texts that share only a prefix (one system prompt, different
    questions) share no ids and never hit each other's cached blocks, though the engine's would;
    pass `prompt_token_ids` to simulate prefix caching between different prompts. And there is no
    model: outputs are dummy ids, so a prompt that continues another request's output (a chat's next
    turn, holding the last answer) hits the engine's cached blocks of that output but not the
    simulator's, which then prefills more than the engine does.
    """
    if spec.prompt_token_ids is not None:
        ids = list(spec.prompt_token_ids)
        return ids, -1 - (hash(tuple(ids)) & 0x7FFFFFFF)
    if spec.prompt is not None:  # equal texts, equal ids; a length-less text: ~4 characters a token
        tok = DUMMY_TOKEN_BASE - 1 - zlib.crc32(spec.prompt.encode())
    else:
        tok = DUMMY_TOKEN_BASE + serial
    return [tok] * _prompt_len(spec), -tok
