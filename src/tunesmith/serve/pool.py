"""Serve many fine-tuned models from one process: a pool of base models and LoRA adapters.

One base model in memory serves every LoRA adapter trained on it: adapters load on demand
into an LRU cache and are attached to one `peft.PeftModel` over that base, never merged.
Full fine-tunes and other adapter types load as separate models in a second LRU.

All torch work happens in one background thread that the `Engine` owns; the asyncio handlers
of a server await its results. Requests that arrive together and can share a `generate` call
are batched, including requests for different LoRA adapters of the same base (peft's
mixed-adapter inference, `adapter_names=[...]`).

No request can pin the engine: a request whose caller has gone is skipped, or stops at its
next token while the rest of its batch goes on; answers are clamped to the context the model
has left after the prompt; the next batch starts with the oldest request of the caller served
least recently, so one caller's flood does not hold up the others; `close` stops the running
batch within a token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.errors import ConfigError, ModelError, TunesmithError
from tunesmith.inference.classifier import (
    abstain,
    load_classifier,
    load_threshold,
    predict,
)
from tunesmith.inference.generate import load_for_inference, with_system
from tunesmith.models import load_model, load_tokenizer, resolve_model
from tunesmith.runs import RunDir

BASE_ROW = "__base__"  # peft's adapter name for "no adapter" in a mixed-adapter batch
NOT_TEXT_STAGES = {
    "classify": "a classifier, which labels text",
    "reward": "a reward model, which scores answers",
}
MAX_STOP = 4  # as in the OpenAI API
# A temperature this close to 0 is greedy (as vLLM treats it): dividing float32 logits by it
# overflows to inf and sampling fails on NaN probabilities.
GREEDY_BELOW = 1e-5
# Stop strings are markers ("\n\n", "User:"); every generation step decodes this many characters
# (in tokens) of each row's tail to look for them, so the bound is the per-step cost of a batch.
MAX_STOP_CHARS = 128
# Each choice is a generation row of its own: a batch of max_batch prompts holds up to
# max_batch x 8 rows (their KV caches), enough for best-of-n and self-consistency sampling.
MAX_N = 8
NO_LIMIT = 10**9  # a tokenizer without a length limit reports about 1e30 as its model_max_length


class EngineClosed(RuntimeError):
    """The engine shut down before the request was answered."""


class PromptTooLong(TunesmithError):
    """The prompt leaves its model no room to answer."""


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Target:
    """What one model id serves: a base model (`run_dir` None) or a finished tunesmith run."""

    key: str  # the model id, also the cache key: "smollm2-135m" or "ft:base:proj:suffix:abc123"
    base: str  # a base model name or folder (models.load_model / load_tokenizer), used when run_dir is None
    run_dir: Path | None = None  # a finished tunesmith run directory; None = serve `base` itself


@dataclass(frozen=True)
class Sampling:
    """How to generate: greedy when `temperature` is 0; `n` choices per prompt; a `seed`
    makes sampling reproducible (such a request runs on its own, never in a batch)."""

    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # up to 4 stop strings; the text is cut before the first one
    n: int = 1  # choices per prompt
    seed: int | None = None  # reproducible sampling: such a request runs on its own, after torch.manual_seed(seed)

    def __post_init__(self):
        # A server hands over JSON lists; a tuple keeps the dataclass hashable for batching.
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        object.__setattr__(self, "stop", tuple(s for s in stop if s))
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1.")
        if self.temperature < 0:
            raise ValueError("temperature must not be negative.")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be above 0 and at most 1.")
        if len(self.stop) > MAX_STOP:
            raise ValueError(f"At most {MAX_STOP} stop strings are allowed.")
        if any(len(s) > MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"A stop string may be at most {MAX_STOP_CHARS} characters long.")
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be between 1 and {MAX_N}.")


@dataclass
class Choice:
    """One generated answer."""

    text: str
    finish_reason: str  # "stop" (end-of-turn/eos token or a stop string) or "length" (max_tokens reached)
    tokens: int  # completion tokens generated for this choice (up to and excluding eos/padding)


@dataclass
class Completion:
    """The answer to one request: `n` choices and the prompt's length in tokens."""

    choices: list[Choice]
    prompt_tokens: int


@dataclass
class Chunk:
    """One streamed piece of text; the last one carries finish_reason and the usage counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


# --------------------------------------------------------------------------- internals


@dataclass
class _Plan:
    """How a target loads, worked out from its files without loading any weights."""

    kind: str  # "base" (a base model), "lora" (a shared adapter on a base), "model" (a separate model)
    group: str  # the models-LRU key: "base:<base id>" for base and lora, "model:<key>" otherwise
    key: str
    base: str | None = None  # the base model name to load (base, lora)
    adapter_dir: Path | None = None  # lora
    weights: Path | None = None  # model: a full fine-tune's weights folder
    run_dir: Path | None = None  # model: a run with another adapter type, for load_for_inference
    system: str | None = None  # the run's training system prompt


@dataclass
class _BaseEntry:
    """A base model in memory; once it carries adapters, `peft` wraps it (in place)."""

    model: object
    tokenizer: object
    peft: object | None = None
    adapters: dict[str, str] = field(default_factory=dict)  # target key -> adapter name
    served_as: set[str] = field(default_factory=set)  # model ids that named this base itself

    @property
    def runner(self):
        return self.peft if self.peft is not None else self.model


@dataclass
class _ModelEntry:
    """A separate model: full weights, or an adapter type that cannot be shared."""

    model: object
    tokenizer: object
    system: str | None = None

    @property
    def runner(self):
        return self.model


@dataclass
class _AdapterEntry:
    group: str  # the base it is attached to
    name: str  # its name inside the PeftModel
    tokenizer: object


@dataclass
class _Slot:
    """What one request runs on."""

    entry: _BaseEntry | _ModelEntry
    tokenizer: object
    adapter: str | None  # adapter name in entry.peft; None = the model itself (or the bare base)
    adapter_key: str | None
    system: str | None

    @property
    def signature(self) -> tuple:
        # Rows of one batch share padding and stopping, so their tokenizers must agree on these.
        tok = self.tokenizer
        return (tok.eos_token_id, tok.pad_token_id, len(tok))


class _Sink:
    """Carries streamed chunks from the worker thread to the awaiting coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


@dataclass
class _Request:
    target: Target
    prompt: list[dict] | str
    sampling: Sampling
    future: concurrent.futures.Future | None = None  # complete()
    sink: _Sink | None = None  # stream()
    cancel: threading.Event = field(default_factory=threading.Event)  # set when the caller has gone
    owner: str = ""  # who asked (an API key): the next batch starts with the owner served least recently
    plan: _Plan | None = None
    ids: list[int] | None = None  # the prompt's token ids, once its tokenizer is known
    limit: int = 0  # tokens it may generate: max_tokens, clamped to the context left after the prompt

    @property
    def batchable(self) -> bool:
        return self.sink is None and self.sampling.seed is None

    @property
    def gone(self) -> bool:
        """Whether its caller has given up on it."""
        return self.cancel.is_set() or (self.future is not None and self.future.cancelled())

    @property
    def batch_key(self) -> tuple:
        s = self.sampling
        return (s.max_tokens, s.temperature, s.top_p, s.stop, s.n)

    def start(self) -> bool:
        """Mark the request as running; False when its caller has given up on it."""
        if self.cancel.is_set():
            if self.future is not None:
                self.future.cancel()
            return False
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return True

    def fail(self, exc: BaseException) -> None:
        if self.future is not None:
            # A future still pending must be marked running first; a cancelled one is left alone.
            if not self.future.done() and (self.future.running() or self.future.set_running_or_notify_cancel()):
                self.future.set_exception(exc)
        elif self.sink is not None:
            self.sink.put(exc)


@dataclass
class _Call:
    """Work for the worker thread between batches (a classifier's label), its result to `future`."""

    fn: Callable[[], object]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def __call__(self) -> None:
        if self.future.set_running_or_notify_cancel():  # False: the caller has gone
            try:
                self.future.set_result(self.fn())
            except Exception as exc:  # noqa: BLE001 - the caller gets the error, the worker goes on
                self.future.set_exception(exc)

    def fail(self, exc: BaseException) -> None:
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(exc)


_STOP = object()  # queue sentinel: the worker ends


class Engine:
    """A pool of models behind one worker thread. Async callers submit requests with
    `complete` and `stream`; the worker loads what they name (base models and separate
    models in an LRU of `max_models`, LoRA adapters in an LRU of `max_adapters`) and batches
    compatible requests (up to `max_batch` prompts, waiting `batch_wait_s` for company)."""

    def __init__(self, max_adapters: int = 8, max_models: int = 2, max_batch: int = 16, batch_wait_s: float = 0.005):
        if max_adapters < 1 or max_models < 1 or max_batch < 1:
            raise ValueError("max_adapters, max_models and max_batch must be at least 1.")
        self.max_adapters = max_adapters
        self.max_models = max_models
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._models: OrderedDict[str, _BaseEntry | _ModelEntry] = OrderedDict()  # LRU, oldest first
        self._adapters: OrderedDict[str, _AdapterEntry] = OrderedDict()  # LRU, oldest first
        self._names = itertools.count()  # adapter names must be identifiers; model ids are not
        self._lock = threading.Lock()  # guards the caches and counters that stats() reads, and submit/close
        self._batches = 0
        self._batched_requests = 0
        self._cancelled = 0
        self._running = 0
        self._pending: deque[_Request] = deque()  # requests the worker has taken off the queue, not yet started
        self._turns = itertools.count()
        self._last_served: dict[str, int] = {}  # owner -> the turn its last batch started
        self._closed = False
        self._closing = threading.Event()  # every running generate stops at its next token
        self._device = None
        self._thread = threading.Thread(target=self._work, name="tunesmith-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    async def complete(self, target: Target, prompt: list[dict] | str, sampling: Sampling, owner: str = "") -> Completion:
        """Generate `sampling.n` answers to `prompt`: a list of chat messages (rendered with
        the chat template, after the run's system prompt) or a plain string (raw text).
        Cancelling the awaiting task cancels the generation: skipped if it has not started,
        stopped at its next token if it has (the rest of its batch goes on). Raises
        PromptTooLong when the prompt fills the model's context, EngineClosed on close."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        request = _Request(target, _check_prompt(prompt), sampling, future=future, owner=owner)
        self._submit(request)
        try:
            return await asyncio.wrap_future(future)
        finally:
            request.cancel.set()  # a no-op once answered; otherwise the caller has gone

    async def stream(self, target: Target, prompt: list[dict] | str, sampling: Sampling, owner: str = "") -> AsyncIterator[Chunk]:
        """Generate one answer to `prompt` piece by piece. The pieces add up to the text that
        `complete` would return; the last chunk carries finish_reason and the token counts.
        Closing the iterator early stops the generation."""
        if sampling.n != 1:
            raise ValueError("Streaming returns one choice: n must be 1.")
        request = _Request(target, _check_prompt(prompt), sampling, sink=_Sink(asyncio.get_running_loop()), owner=owner)
        self._submit(request)
        try:
            while True:
                item = await request.sink.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            request.cancel.set()  # a client that stops reading stops the generation

    async def classify(self, target: Target, text: str) -> dict:
        """Label `text` with a classifier run: `inference.classifier.abstain`'s answer (the label,
        or "refer to a person" below the confidence threshold the run's evaluation calibrated;
        the confidence and the threshold), its top labels and `prompt_tokens`. Runs in the
        worker thread between batches; the classifier is a separate model in the models LRU."""
        call = _Call(lambda: self._classify(target, text))
        self._submit(call)
        return await asyncio.wrap_future(call.future)

    def check(self, target: Target) -> None:
        """Raise ModelError now if `target` cannot write text (a classifier, a reward model, a
        folder that is not a run), reading its files only: a server calls this before it
        starts an event stream."""
        self._plan(target)

    def unload(self, key: str) -> None:
        """Drop a (deleted) model id from the caches; safe if it is not loaded. It takes
        effect in the worker before any request submitted after this call. A base model
        is dropped only when no loaded adapter still uses it."""
        if not self._closed:
            self._queue.put(lambda: self._drop(key))

    def waiting(self) -> int:
        """Requests submitted and not yet started (a server refuses more past its queue limit)."""
        return len(self._pending) + self._queue.qsize()

    def stats(self) -> dict:
        """What is loaded (LRU order, oldest first) and how much batching happened:
        `batches` counts generate calls, `batched_requests` the requests that shared one;
        `waiting` and `running` count requests now, `cancelled` those whose caller left
        before their answer (skipped, or stopped mid-generation)."""
        with self._lock:
            return {
                "bases": [g.removeprefix("base:") for g, e in self._models.items() if isinstance(e, _BaseEntry)],
                "adapters": list(self._adapters),
                "models": [g.removeprefix("model:") for g, e in self._models.items() if isinstance(e, _ModelEntry)],
                "batches": self._batches,
                "batched_requests": self._batched_requests,
                "waiting": self.waiting(),
                "running": self._running,
                "cancelled": self._cancelled,
            }

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker thread and free the models: the running generation stops at its
        next token, and its requests and those still waiting fail with EngineClosed. Waits at
        most `timeout` seconds for the worker (a model being loaded cannot be interrupted; the
        thread is a daemon and ends when it is done)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing.set()
            self._queue.put(_STOP)  # under the lock: no request can be queued behind it
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker loop

    def _submit(self, request: _Request) -> None:
        with self._lock:
            if self._closed:
                raise EngineClosed("The engine is closed.")
            self._queue.put(request)

    def _work(self) -> None:
        pending = self._pending
        running = True
        while running and not self._closing.is_set():
            if not pending:
                running = self._take(self._queue.get(), pending)
                wait = self.batch_wait_s  # a fresh request waits briefly for company
            else:
                wait = 0.0  # leftovers have waited already; take only what has arrived
            deadline = time.monotonic() + wait
            while running:
                try:
                    left = deadline - time.monotonic()
                    # Wait for company only while a batch could still grow; then take everything
                    # that has arrived, so the next head is chosen among all waiting requests.
                    if left > 0 and len(pending) < self.max_batch:
                        item = self._queue.get(timeout=left)
                    else:
                        item = self._queue.get_nowait()
                except queue.Empty:
                    break
                running = self._take(item, pending)
            if running and pending and not self._closing.is_set():
                self._step(pending)
        closed = EngineClosed("The engine is closed.")
        while pending:
            pending.popleft().fail(closed)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, (_Request, _Call)):
                item.fail(closed)
        with self._lock:
            self._models.clear()
            self._adapters.clear()
        self._free_memory()

    def _take(self, item, pending: deque) -> bool:
        """Handle one queue item; False when it is the stop sentinel."""
        if item is _STOP:
            return False
        if isinstance(item, _Request):
            pending.append(item)
        else:
            # A control action (unload) runs between batches, in order; an unload of something
            # odd must not end the worker.
            with contextlib.suppress(Exception):
                item()
        return True

    def _step(self, pending: deque) -> None:
        """Run the next head (see _next_head), with every later request that can share its batch."""
        for request in [r for r in pending if r.gone]:  # callers that left while waiting: skip them
            pending.remove(request)
            request.start()
            self._count_cancelled()
        if not pending:
            return
        head = self._next_head(pending)
        if not head.start():
            self._count_cancelled()
            return
        try:
            slot = self._acquire(self._plan_of(head), pinned=set())
            self._prepare(head, slot)
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, the worker goes on
            head.fail(exc)
            return
        batch = [(head, slot)]
        try:
            if head.batchable:
                self._add_companions(batch, pending)
            with self._lock:
                self._running = len(batch)
            if head.sink is not None:
                self._stream_one(head, slot)
            else:
                self._generate(batch)
        except Exception as exc:  # noqa: BLE001
            for request, _ in batch:
                request.fail(exc)
        finally:
            with self._lock:
                self._running = 0

    def _next_head(self, pending: deque) -> _Request:
        """The oldest request of the owner served least recently (owners never served first):
        round-robin over callers, so one caller that floods the queue does not delay the rest.
        Its batch companions still join in arrival order, whoever owns them."""
        head = min(pending, key=lambda r: self._last_served.get(r.owner, -1))  # min keeps the first of equals
        pending.remove(head)
        self._last_served[head.owner] = next(self._turns)
        return head

    def _prepare(self, request: _Request, slot: _Slot) -> None:
        """Tokenize the prompt and work out how many tokens the request may generate: its
        max_tokens, clamped to what the model's context leaves after the prompt."""
        if request.ids is None:
            request.ids = _encode(slot.tokenizer, request.prompt, slot.system)
        context = _context_length(slot.entry.runner, slot.tokenizer)
        if context is None:
            request.limit = request.sampling.max_tokens
            return
        if len(request.ids) >= context:
            raise PromptTooLong(
                f"The prompt is {len(request.ids)} tokens but {request.target.key} reads at most {context} tokens, "
                "prompt and answer together; shorten the prompt."
            )
        request.limit = min(request.sampling.max_tokens, context - len(request.ids))

    def _count_cancelled(self) -> None:
        with self._lock:
            self._cancelled += 1

    def _add_companions(self, batch: list[tuple[_Request, _Slot]], pending: deque) -> None:
        """Move later requests that can join the head's batch from `pending` into `batch`, in
        arrival order: same model (or PeftModel), same sampling settings, compatible tokenizer."""
        head, slot = batch[0]
        group = head.plan.group
        pinned = {slot.adapter_key} - {None}  # adapters this batch uses must not be evicted
        for request in list(pending):
            if len(batch) >= self.max_batch:
                break
            if not request.batchable or request.batch_key != head.batch_key:
                continue
            try:
                plan = self._plan_of(request)
            except Exception as exc:  # noqa: BLE001
                pending.remove(request)
                request.fail(exc)
                continue
            if plan.group != group:
                continue
            if plan.kind == "lora" and plan.key not in self._adapters and len(pinned) >= self.max_adapters:
                continue  # loading it would evict an adapter this batch needs
            try:
                other = self._acquire(plan, pinned)
            except Exception as exc:  # noqa: BLE001
                pending.remove(request)
                request.fail(exc)
                continue
            if other.entry is not slot.entry or other.signature != slot.signature:
                continue  # (a failed adapter load may have restarted the base under us)
            try:
                self._prepare(request, other)
            except Exception as exc:  # noqa: BLE001
                pending.remove(request)
                request.fail(exc)
                continue
            if request.limit != head.limit:
                # One generate call has one length, and a row must not run past its own context.
                continue
            pending.remove(request)
            if request.start():
                batch.append((request, other))
                if other.adapter_key:
                    pinned.add(other.adapter_key)
            else:
                self._count_cancelled()

    # ------------------------------------------------------------------ loading

    def _plan_of(self, request: _Request) -> _Plan:
        if request.plan is None:
            request.plan = self._plan(request.target)
        return request.plan

    def _classify(self, target: Target, text: str) -> dict:
        """classify(), in the worker thread."""
        if not is_classifier(target):
            raise ModelError(f"{target.key} is not a classifier; ask it for a completion instead.")
        group = f"model:{target.key}"
        entry = self._models.get(group)
        if entry is None:
            classifier = load_classifier(target.run_dir)
            classifier.model.to(self._torch_device())
            entry = _ModelEntry(classifier, classifier.tokenizer)
            self._insert_model(group, entry)
        self._touch_model(group)
        classifier = entry.model
        prediction = predict(classifier, [text])[0]
        tokens = len(classifier.tokenizer(text, truncation=True, max_length=classifier.max_length)["input_ids"])
        # Read on every request: a new evaluation's threshold applies at once.
        return abstain(prediction, load_threshold(target.run_dir)) | {"top": prediction["top"], "prompt_tokens": tokens}

    def _plan(self, target: Target) -> _Plan:
        """Read what a target needs from its run folder, without loading weights."""
        if target.run_dir is None:
            base_id = _base_id(target.base)
            return _Plan("base", f"base:{base_id}", target.key, base=target.base)
        run = RunDir(target.run_dir)
        if not run.exists:
            raise ModelError(f"{run.path} is not a tunesmith run directory (it has no config.yaml).")
        try:
            final = run.final
            config = final.config
        except ConfigError as exc:
            raise ModelError(str(exc)) from exc
        last = config.method.stages[-1]
        if last in NOT_TEXT_STAGES:
            raise ModelError(f"{target.key} is {NOT_TEXT_STAGES[last]} rather than writing it, so it cannot serve completions.")
        system = config.data.system_prompt
        if final.full_weights:
            return _Plan("model", f"model:{target.key}", target.key, weights=final.full_weights, system=system)
        if final.adapter and _is_lora(final.adapter):
            base_id = _base_id(config.model.name)
            return _Plan("lora", f"base:{base_id}", target.key, base=config.model.name, adapter_dir=final.adapter, system=system)
        # Prompt/prefix tuning, LoHa, LoKr, IA3 (or no weights: load_for_inference says so).
        return _Plan("model", f"model:{target.key}", target.key, run_dir=run.path, system=system)

    def _acquire(self, plan: _Plan, pinned: set[str]) -> _Slot:
        """Load (or find in the caches) what `plan` names; never evicts a `pinned` adapter."""
        if plan.kind == "model":
            entry = self._models.get(plan.group)
            if entry is None:
                entry = self._load_model(plan)
                self._insert_model(plan.group, entry)
            self._touch_model(plan.group)
            return _Slot(entry, entry.tokenizer, None, None, entry.system)
        base = self._models.get(plan.group)
        if base is None:
            base = _BaseEntry(*self._load_base(plan.base))
            self._insert_model(plan.group, base)
        self._touch_model(plan.group)
        if plan.kind == "base":
            base.served_as.add(plan.key)
            return _Slot(base, base.tokenizer, None, None, None)
        adapter = self._adapters.get(plan.key)
        if adapter is not None and adapter.group != plan.group:  # the run now names another base
            self._drop_adapter(plan.key)
            adapter = None
        if adapter is None:
            adapter = self._load_adapter(plan, base, pinned)
        with self._lock:
            self._adapters.move_to_end(plan.key)
        return _Slot(base, adapter.tokenizer, adapter.name, plan.key, plan.system)

    def _load_base(self, name: str) -> tuple[object, object]:
        model = load_model(name)
        model.eval()
        return model.to(self._torch_device()), load_tokenizer(name)

    def _load_model(self, plan: _Plan) -> _ModelEntry:
        if plan.weights is not None:
            model, tokenizer = self._load_base(str(plan.weights))
            return _ModelEntry(model, tokenizer, plan.system)
        loaded = load_for_inference(str(plan.run_dir))
        return _ModelEntry(loaded.model.to(self._torch_device()), loaded.tokenizer, loaded.system_prompt)

    def _load_adapter(self, plan: _Plan, base: _BaseEntry, pinned: set[str]) -> _AdapterEntry:
        from peft import PeftModel
        from transformers import AutoTokenizer

        while len(self._adapters) >= self.max_adapters:
            victim = next((k for k in self._adapters if k not in pinned), None)
            if victim is None:
                break  # the caller keeps a batch within max_adapters; this is only a guard
            self._drop_adapter(victim)
        name = f"adapter_{next(self._names)}"
        try:
            if base.peft is None:
                # Wraps the base in place: from now on the bare base runs with adapters disabled.
                base.peft = PeftModel.from_pretrained(base.model, str(plan.adapter_dir), adapter_name=name)
                base.peft.eval()
            else:
                base.peft.load_adapter(str(plan.adapter_dir), adapter_name=name)
        except Exception:
            # A half-loaded adapter may sit in the base's layers: start that base afresh.
            self._drop_group(plan.group)
            raise
        # The adapter folder holds the training tokenizer (with its chat template).
        tokenizer = AutoTokenizer.from_pretrained(plan.adapter_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        entry = _AdapterEntry(plan.group, name, tokenizer)
        with self._lock:
            base.adapters[plan.key] = name
            self._adapters[plan.key] = entry
        return entry

    def _insert_model(self, group: str, entry) -> None:
        while len(self._models) >= self.max_models:
            self._drop_group(next(iter(self._models)))
        with self._lock:
            self._models[group] = entry

    def _touch_model(self, group: str) -> None:
        with self._lock:
            self._models.move_to_end(group)

    def _drop_group(self, group: str) -> None:
        """Evict a model; a base takes its adapters with it."""
        entry = self._models.get(group)
        if isinstance(entry, _BaseEntry):
            with self._lock:
                for key in entry.adapters:
                    self._adapters.pop(key, None)
                entry.adapters.clear()
        with self._lock:
            self._models.pop(group, None)
        self._free_memory()

    def _drop_adapter(self, key: str) -> None:
        adapter = self._adapters.get(key)
        if adapter is None:
            return
        base = self._models.get(adapter.group)
        with self._lock:
            self._adapters.pop(key, None)
            if isinstance(base, _BaseEntry):
                base.adapters.pop(key, None)
        if isinstance(base, _BaseEntry) and base.peft is not None:
            if base.adapters:
                # Activate a remaining adapter first: peft warns when the active one goes (every
                # call picks its adapter anyway).
                base.peft.set_adapter(next(iter(base.adapters.values())), inference_mode=True)
                base.peft.delete_adapter(adapter.name)
            else:  # the last adapter: take the LoRA layers out and serve the bare base again
                base.model = base.peft.unload()
                base.peft = None
        # No gc or cache flush here: adapter tensors are small and freed with their last
        # reference, and the allocator reuses their memory for the next adapter.

    def _drop(self, key: str) -> None:
        """unload(key), in the worker thread."""
        self._drop_adapter(key)
        if f"model:{key}" in self._models:
            self._drop_group(f"model:{key}")
        for group, entry in list(self._models.items()):
            if isinstance(entry, _BaseEntry) and key in entry.served_as:
                entry.served_as.discard(key)
                if not entry.served_as and not entry.adapters:  # nothing else stands on it
                    self._drop_group(group)

    def _torch_device(self):
        if self._device is None:
            import torch

            self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return self._device

    def _free_memory(self) -> None:
        import gc

        gc.collect()
        if self._device is not None and self._device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ generation

    def _generate(self, batch: list[tuple[_Request, _Slot]]) -> None:
        """One batch of complete() requests: all rows share a model, sampling settings and length limit."""
        head = batch[0][0]
        sampling = dataclasses.replace(head.sampling, max_tokens=head.limit)
        n = sampling.n
        prompts = [request.ids for request, _ in batch]
        rows = [ids for ids in prompts for _ in range(n)]  # n choices = the prompt repeated n times
        names = [slot.adapter or BASE_ROW for _, slot in batch for _ in range(n)]
        owners = [i for i in range(len(batch)) for _ in range(n)]
        entry, tokenizer = batch[0][1].entry, batch[0][1].tokenizer
        if sampling.seed is not None:
            import torch

            torch.manual_seed(sampling.seed)
        outputs = self._run_rows(entry, tokenizer, sampling, rows, names, owners, [r.cancel for r, _ in batch])
        if self._closing.is_set():
            raise EngineClosed("The engine closed before the answer was complete.")
        for i, (request, slot) in enumerate(batch):
            if request.cancel.is_set():  # its caller left: its row stopped early, nobody waits for it
                self._count_cancelled()
                request.fail(concurrent.futures.CancelledError())
                continue
            choices = [_choice(outputs[i * n + j], slot.tokenizer, sampling) for j in range(n)]
            future = request.future
            if not future.done():
                future.set_result(Completion(choices, len(prompts[i])))

    def _run_rows(self, entry, tokenizer, sampling, rows, names, owners, cancels, **extra) -> list[list[int]]:
        """Generate for every row; returns each row's new tokens. Rows for different adapters
        of one base (and the base itself) share one mixed-adapter call; adapters peft cannot
        mix (DoRA) get a call each, as does every adapter when peft refuses a mix. `owners[i]`
        is row i's request, an index into `cancels` (set when that request's caller leaves)."""
        peft = getattr(entry, "peft", None)
        distinct = list(dict.fromkeys(names))
        if peft is None or len(distinct) == 1:
            return self._call(entry, peft, distinct[0], tokenizer, sampling, rows, owners, cancels, **extra)
        mixable = [name for name in distinct if _mixable(peft, name)]
        groups = ([mixable] if mixable else []) + [[name] for name in distinct if name not in mixable]
        out: list = [None] * len(rows)
        for group in groups:
            idx = [i for i, name in enumerate(names) if name in group]
            part_rows, part_owners = [rows[i] for i in idx], [owners[i] for i in idx]
            if len(group) == 1:
                part = self._call(entry, peft, group[0], tokenizer, sampling, part_rows, part_owners, cancels, **extra)
            else:
                try:
                    part = self._call(entry, peft, [names[i] for i in idx], tokenizer, sampling, part_rows, part_owners, cancels, **extra)
                except (ValueError, TypeError, NotImplementedError):
                    # peft refused this mix: run each adapter's rows apart.
                    part = [None] * len(idx)
                    for name in group:
                        sub = [j for j, i in enumerate(idx) if names[i] == name]
                        tokens = self._call(entry, peft, name, tokenizer, sampling, [part_rows[j] for j in sub], [part_owners[j] for j in sub], cancels, **extra)
                        for j, t in zip(sub, tokens):
                            part[j] = t
            for i, tokens in zip(idx, part):
                out[i] = tokens
        return out

    def _call(self, entry, peft, adapter, tokenizer, sampling, rows, owners, cancels, **extra) -> list[list[int]]:
        """One generate call. `adapter`: a list of per-row names (mixed batch), one name, or
        `BASE_ROW` (the base with its adapters disabled); ignored for a model without adapters."""
        import torch

        input_ids, attention_mask = _left_pad(rows, tokenizer.pad_token_id, self._torch_device())
        stopping = _stopping([cancels[o] for o in owners], self._closing, sampling.stop, tokenizer, input_ids.shape[1])
        kwargs = _generate_kwargs(sampling, tokenizer) | {"stopping_criteria": stopping} | extra
        context = contextlib.nullcontext()
        if peft is not None:
            if isinstance(adapter, list):
                kwargs["adapter_names"] = adapter
            elif adapter == BASE_ROW:
                context = peft.disable_adapter()
            else:
                peft.set_adapter(adapter, inference_mode=True)
        try:
            with torch.inference_mode(), context:
                out = entry.runner.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        except BaseException:
            if "adapter_names" in kwargs:
                _remove_adapter_name_hooks(peft)
            raise
        with self._lock:
            self._batches += 1
            requests = len(set(owners))
            if requests > 1:
                self._batched_requests += requests
        return out[:, input_ids.shape[1] :].tolist()

    def _stream_one(self, request: _Request, slot: _Slot) -> None:
        """A streamed request, alone: a streamer pushes text pieces to the caller as they form."""
        sampling, tokenizer = dataclasses.replace(request.sampling, max_tokens=request.limit), slot.tokenizer
        prompt = request.ids
        streamer = _TextStreamer(tokenizer, sampling.stop, lambda text: request.sink.put(Chunk(text)))
        if sampling.seed is not None:
            import torch

            torch.manual_seed(sampling.seed)
        names = [slot.adapter or BASE_ROW]
        (tokens,) = self._run_rows(slot.entry, tokenizer, sampling, [prompt], names, [0], [request.cancel], streamer=streamer)
        if self._closing.is_set():
            raise EngineClosed("The engine closed before the answer was complete.")
        if request.cancel.is_set():  # the caller stopped reading
            self._count_cancelled()
            return
        choice = _choice(tokens, tokenizer, sampling)
        # The final text decides; the streamer only ever sent a prefix of it.
        rest = choice.text[len(streamer.sent) :] if choice.text.startswith(streamer.sent) else ""
        request.sink.put(Chunk(rest, choice.finish_reason, len(prompt), choice.tokens))


class _TextStreamer:
    """A transformers streamer that decodes the tokens so far and hands on only text that can
    no longer change: nothing past a stop string, a tail as long as the longest stop string
    held back, and no trailing whitespace or half-decoded character (which the next token may
    still change)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], emit: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=0)
        self.emit = emit
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.stopped = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        if self.stopped:
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = _first_stop(text, self.stop)
        if cut is not None:
            safe, self.stopped = cut, True
        else:
            safe = len(text) - self.hold
        while safe > len(self.sent) and (text[safe - 1].isspace() or text[safe - 1] == "\ufffd"):
            safe -= 1
        if safe > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent) : safe], text[:safe]
            self.emit(piece)

    def end(self) -> None:
        pass


# --------------------------------------------------------------------------- helpers


def is_classifier(target: Target) -> bool:
    """Whether `target` is a classification run (it labels text rather than writing it)."""
    if target.run_dir is None:
        return False
    run = RunDir(target.run_dir)
    try:
        return run.exists and run.stage == "classify"
    except ConfigError:
        return False


def _check_prompt(prompt) -> list[dict] | str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt) and prompt:
        return prompt
    raise ValueError("prompt must be a string or a non-empty list of chat messages with a 'role'.")


def _base_id(name: str) -> str:
    """One identity per base model, however it is named: a built-in name and its cache
    folder, or two spellings of one path, share a single copy in memory."""
    source = resolve_model(name)
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else source


def _is_lora(adapter_dir: Path) -> bool:
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("peft_type") == "LORA"


def _mixable(peft, name: str) -> bool:
    """Whether peft can run this adapter in a mixed-adapter batch (it refuses DoRA)."""
    config = peft.peft_config.get(name)
    return name == BASE_ROW or not getattr(config, "use_dora", False)


def _remove_adapter_name_hooks(peft) -> None:
    """Take out the per-row adapter hooks that a failed mixed-adapter generate left behind:
    peft removes them only when generate returns, and stale ones break every later call."""
    for module in peft.modules():
        hooks = getattr(module, "_forward_pre_hooks", None)
        if not hooks:
            continue
        for hook_id, hook in list(hooks.items()):
            if getattr(getattr(hook, "func", None), "__name__", "") == "_adapter_names_pre_forward_hook":
                del hooks[hook_id]
                getattr(module, "_forward_pre_hooks_with_kwargs", {}).pop(hook_id, None)


def _encode(tokenizer, prompt: list[dict] | str, system: str | None) -> list[int]:
    """Prompt token ids: chat messages through the chat template (after the run's system
    prompt), or a raw string as is (with the tokenizer's own special tokens, e.g. a BOS)."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt)["input_ids"]
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError("This model has no chat template, so it takes a plain text prompt rather than chat messages.")
        text = tokenizer.apply_chat_template(with_system(prompt, system), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:  # generate needs at least one token to continue from
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return list(ids)


def _left_pad(rows: list[list[int]], pad_id: int | None, device):
    # Left padding: a decoder-only model continues each row from its right edge.
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _generate_kwargs(sampling: Sampling, tokenizer) -> dict:
    kwargs = {
        "max_new_tokens": sampling.max_tokens,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if sampling.temperature >= GREEDY_BELOW:
        kwargs |= {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    else:
        kwargs["do_sample"] = False
    return kwargs


def _stopping(cancels: list[threading.Event], closing: threading.Event, stop: tuple[str, ...], tokenizer, width: int):
    """Stopping criteria for one generate call over rows `width` tokens wide: a row ends when
    its caller has gone (`cancels`, one per row), every row when the engine closes, and a row
    whose new text contains a stop string. Stop strings are matched on each row's decoded tail
    rather than with transformers' `stop_strings`, whose set-up loops in Python over the
    vocabulary times the stop string's length and builds a vocabulary x length table (and each
    step a batch x length^2 one): one long stop string took the server's time and memory."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    # Almost every token decodes to one character or more; a rare miss only stops the row later,
    # and _choice cuts the text at the stop string all the same.
    tail = max((len(s) for s in stop), default=0) + 8

    class Rows(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if closing.is_set():
                return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            done = [cancel.is_set() for cancel in cancels]
            if stop:
                texts = tokenizer.batch_decode(input_ids[:, width:][:, -tail:].tolist(), skip_special_tokens=True)
                done = [d or _first_stop(text, stop) is not None for d, text in zip(done, texts)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Rows()])


def _context_length(model, tokenizer) -> int | None:
    """Tokens the model reads at most, prompt and answer together: its config's position
    limit, else its tokenizer's model_max_length; None when neither sets one."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < NO_LIMIT else None


def _first_stop(text: str, stop: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _choice(tokens: list[int], tokenizer, sampling: Sampling) -> Choice:
    """Text, finish reason and token count of one generated row (which a batch may have
    padded after it finished)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos in tokens:
        end = tokens.index(eos)
        text = tokenizer.decode(tokens[:end], skip_special_tokens=True)
        cut = _first_stop(text, sampling.stop)
        return Choice(text if cut is None else text[:cut], "stop", end)
    core = list(tokens)
    while core and core[-1] == pad:  # a row stopped by a stop string is padded to the batch's length
        core.pop()
    text = tokenizer.decode(core, skip_special_tokens=True)
    cut = _first_stop(text, sampling.stop)
    if cut is not None:
        return Choice(text[:cut], "stop", len(core))
    return Choice(tokenizer.decode(tokens, skip_special_tokens=True), "length", len(tokens))
