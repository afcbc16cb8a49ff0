"""Chat and text completions with a base or fine-tuned model, as OpenAI's API answers them
(streamed as server-sent events on request).

Every request passes admission first (a limit per API key and on the engine's queue, 429 past
either), then the engine (serve/pool.py) batches it with others. A client that disconnects
cancels its generation; a server that stops answers 503 rather than dropping the connection.

A classifier run answers a chat completion with the label of the last user message, or "refer
to a person" when its confidence is below the threshold the run's evaluation calibrated
(`RUN/abstention.json`); the `classification` field carries the label predicted, the
confidence and the threshold.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from tunesmith.errors import TunesmithError
from tunesmith.serve.deps import (
    APIError,
    Caller,
    CallerDep,
    EngineDep,
    SessionDep,
    Settings,
    SettingsDep,
    base_models,
    error_body,
    get_model,
)
from tunesmith.serve.pool import (
    MAX_N,
    MAX_STOP,
    MAX_STOP_CHARS,
    Engine,
    EngineClosed,
    PromptTooLong,
    Sampling,
    Target,
    is_classifier,
)

# No common prefix: /chat/completions and /completions.
router = APIRouter(tags=["inference"])
# What one generation request may ask for, so that no single request pins the engine (the body
# itself is capped by the server's max_body_mb; max_tokens by Settings.max_tokens and the context).
MAX_MESSAGES = 1024  # chat turns in one request
MAX_PROMPTS = 64  # prompts in one /v1/completions request: each is a request to the engine
MAX_CHOICES = 128  # prompts x n: the generation rows one request may ask for
# Prompt characters per request: about 250k tokens, past any context served (a longer prompt is
# refused after tokenizing anyway), and tokenized in the engine's thread in well under a second.
MAX_PROMPT_CHARS = 1_000_000
DEFAULT_MAX_TOKENS = 256  # a chat completion without max_tokens; clamped like any other
RETRY_AFTER_S = 2  # a 429's Retry-After: many generation steps, and it spreads the clients' retries
DISCONNECT_POLL_S = 0.25  # how soon a non-streamed generation stops after its client has gone
SHUTTING_DOWN = "The server is shutting down; retry the request in a moment."


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())  # clients send fields we do not use
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)  # clamped to the server's max_tokens and the context left
    stop: str | list[str] | None = None  # at most MAX_STOP of at most MAX_STOP_CHARS each (_sampling)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # torch takes 64-bit seeds
    stream: bool = False
    stream_options: dict | None = None


class ChatCompletionCreate(_SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionCreate(_SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions


class Admission:
    """Generation requests in flight per API key: the one place that decides whether a request
    may reach the engine. Handlers run on the event loop, so the counts need no lock."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    def enter(self, key: str, per_key: int, waiting: int, max_queue: int) -> Callable[[], None]:
        """Take one of `key`'s slots, or answer 429 (with Retry-After, as OpenAI does) when the key
        has `per_key` requests in flight or the engine already holds `max_queue` waiting ones.
        Returns the function that gives the slot back (once, however often it is called)."""
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if self.in_flight.get(key, 0) >= per_key:
            raise APIError(429, f"This API key already has {per_key} generation requests in flight, the server's limit "
                           "per key; retry when one has finished.", code="rate_limit_exceeded", type="requests", headers=retry)
        if waiting >= max_queue:
            raise APIError(429, f"The server already has {max_queue} generation requests waiting, its limit; retry in a "
                           "few seconds.", code="server_overloaded", type="server_error", headers=retry)
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight[key] -= 1
                if not self.in_flight[key]:
                    del self.in_flight[key]

        return release


def get_admission(request: Request) -> Admission:
    """The app's one Admission, made by its first generation request."""
    state = request.app.state
    if getattr(state, "admission", None) is None:
        state.admission = Admission()
    return state.admission


AdmissionDep = Annotated[Admission, Depends(get_admission)]


def _admit(admission: Admission, settings: Settings, caller: Caller, engine: Engine) -> Callable[[], None]:
    """Admit one generation request for the caller's key (429 past its limits); returns its release."""
    return admission.enter(caller.key_id or caller.project, settings.max_concurrent_per_key, engine.waiting(),
                           settings.max_queue)


def _target(sessions: sessionmaker[Session], settings: Settings, caller: Caller, model_id: str) -> Target:
    """What serves `model_id`: a base model, or one of the caller's fine-tuned models (404 otherwise)."""
    bases = base_models(settings)
    if model_id in bases:
        return Target(key=model_id, base=bases[model_id])
    m = get_model(sessions, caller, model_id)
    return Target(key=m.id, base=m.base, run_dir=Path(m.run_dir))


def _sampling(settings: Settings, body: _SamplingFields, max_tokens: int | None) -> Sampling:
    """The request's sampling settings, max_tokens clamped to the server's limit (the engine
    clamps it further to the context the model has left after the prompt)."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise APIError(400, f"stop takes at most {MAX_STOP} sequences; send fewer.", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise APIError(400, f"Each stop sequence may be at most {MAX_STOP_CHARS} characters long; shorten it.", param="stop")
    if body.stream and body.n > 1:
        raise APIError(400, "Streaming returns one choice: set n to 1 or stream to false.", param="n")
    limit = max(1, min(max_tokens or DEFAULT_MAX_TOKENS, settings.max_tokens))
    return Sampling(max_tokens=limit, temperature=body.temperature, top_p=body.top_p,
                    stop=tuple(s for s in stop if s), n=body.n, seed=body.seed)


def _check_size(chars: int, param: str) -> None:
    if chars > MAX_PROMPT_CHARS:
        raise APIError(400, f"'{param}' holds {chars} characters, more than the {MAX_PROMPT_CHARS} one request may send; "
                       "shorten it.", param=param)


def _text(content) -> str:
    if isinstance(content, list):  # content parts: only text parts are understood
        if any(not isinstance(part.get("text", ""), str) or part.get("type") != "text" for part in content):
            raise APIError(400, "Only text content parts ({'type': 'text', 'text': '...'}) are supported.", param="messages")
        return "".join(part.get("text", "") for part in content)
    return content or ""


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@router.post("/chat/completions")
async def create_chat_completion(request: Request, sessions: SessionDep, settings: SettingsDep, caller: CallerDep,
                                 engine: EngineDep, admission: AdmissionDep, body: ChatCompletionCreate):
    """Answer a conversation with a base or fine-tuned model; `stream=true` sends server-sent events.
    max_tokens is clamped to the server's limit and to the context left after the prompt; a key
    with too many requests in flight, or a full queue, gets 429 with Retry-After."""
    target = _target(sessions, settings, caller, body.model)
    sampling = _sampling(settings, body, body.max_completion_tokens or body.max_tokens)
    if len(body.messages) > MAX_MESSAGES:
        raise APIError(400, f"'messages' has {len(body.messages)} entries, more than the {MAX_MESSAGES} one request may "
                       "send; shorten the conversation.", param="messages")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)} for m in body.messages]
    _check_size(sum(len(m["content"]) for m in messages), "messages")
    ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    head = {"id": ident, "created": created, "model": body.model, "system_fingerprint": None}
    if is_classifier(target):
        return await _classify_chat(request, settings, caller, engine, admission, target, messages, body, head)
    release = _admit(admission, settings, caller, engine)
    if body.stream:
        def deltas(piece):
            if piece.text:
                yield {"choices": [{"index": 0, "delta": {"content": piece.text}, "finish_reason": None}]}
            if piece.finish_reason:
                yield {"choices": [{"index": 0, "delta": {}, "finish_reason": piece.finish_reason}]}

        opening = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        return await _event_stream(request, caller, engine, target, messages, sampling, body,
                                   head | {"object": "chat.completion.chunk"}, deltas, release, "messages", opening)
    try:
        result = await _answer(request, _complete(engine, target, messages, sampling, caller, "messages"))
    finally:
        release()
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                "logprobs": None} for i, c in enumerate(result.choices)]
    return head | {"object": "chat.completion", "choices": choices,
                   "usage": _usage(result.prompt_tokens, sum(c.tokens for c in result.choices))}


async def _classify_chat(request: Request, settings: Settings, caller: Caller, engine: Engine, admission: Admission,
                         target: Target, messages: list[dict], body: ChatCompletionCreate, head: dict) -> dict:
    """A classifier's answer to a conversation: the label of its last user turn as the assistant's
    content, or "refer to a person" when the confidence is below the threshold the run's evaluation
    calibrated; `classification` carries the label predicted, the confidence, the threshold,
    whether it was referred and the top labels."""
    if body.stream:
        raise APIError(400, "A classifier answers with one label, not a stream: set stream to false.", param="stream")
    text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not text.strip():
        raise APIError(400, "A classifier labels the last user message, and there is none; send one.", param="messages")
    release = _admit(admission, settings, caller, engine)
    try:
        result = await _answer(request, _labelled(engine, target, text))
    finally:
        release()
    tokens = result.pop("prompt_tokens")
    choice = {"index": 0, "message": {"role": "assistant", "content": result["label"]}, "finish_reason": "stop",
              "logprobs": None}
    return head | {"object": "chat.completion", "choices": [choice], "usage": _usage(tokens, 0), "classification": result}


async def _labelled(engine: Engine, target: Target, text: str) -> dict:
    try:
        return await engine.classify(target, text)
    except (TunesmithError, EngineClosed) as exc:
        raise _engine_error(exc, "messages") from None


def _engine_error(exc: Exception, param: str) -> APIError:
    """The answer to an error the engine raised for one request; `param` names the prompt field."""
    if isinstance(exc, PromptTooLong):
        return APIError(400, str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, EngineClosed):
        return APIError(503, SHUTTING_DOWN, type="server_error", code="server_shutting_down")
    return APIError(400, str(exc), param="model")  # a model that cannot be loaded or cannot write text


async def _complete(engine: Engine, target: Target, prompt, sampling: Sampling, caller: Caller, param: str):
    try:
        return await engine.complete(target, prompt, sampling, owner=caller.key_id or caller.project)
    except (TunesmithError, EngineClosed) as exc:
        raise _engine_error(exc, param) from None


async def _answer(request: Request, work):
    """Await the engine's answer (`work`) while watching the client: when it disconnects, the
    work is cancelled, so a request not yet started is skipped and a running one stops at its
    next token. When the server stops and uvicorn cancels this handler (its graceful-shutdown
    time is up), the client gets a 503 rather than a dropped connection."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                # Nobody reads this answer; the status marks the request in the access log.
                raise APIError(499, "The client closed the connection before the answer was ready.",
                               code="client_closed_request")
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if hasattr(current, "uncancel"):  # Python 3.11+: the handler may still answer
            current.uncancel()
        raise APIError(503, SHUTTING_DOWN, type="server_error", code="server_shutting_down") from None
    finally:
        task.cancel()  # a no-op once it is done


async def _first_piece(pieces, param: str):
    try:
        return await anext(pieces)
    except (TunesmithError, EngineClosed) as exc:
        raise _engine_error(exc, param) from None


class _EventStream(StreamingResponse):
    """An event stream that, however it ends (finished, client gone, server stopping), stops its
    generation and gives the caller's admission slot back."""

    def __init__(self, events, pieces, release: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream")
        self.pieces, self.release = pieces, release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.pieces.aclose()  # stops the generation, also when the events never began
            finally:
                self.release()


async def _event_stream(request: Request, caller: Caller, engine: Engine, target: Target, prompt, sampling: Sampling,
                        body: _SamplingFields, chunk: dict, chunks_of, release: Callable[[], None], param: str,
                        opening: dict | None = None) -> StreamingResponse:
    """Server-sent events: `opening`, then the chunks `chunks_of(piece)` makes of each
    generated piece (each merged into `chunk`, which carries id, object and model), a usage
    chunk when `stream_options.include_usage` asks for one, then `[DONE]`. The answer begins
    with the first generated piece, so a model that cannot write text, a prompt too long for it
    or a server shutting down is a plain HTTP error; the caller's admission slot (`release`) is
    held until the stream ends."""
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    try:
        _check(engine, target)
        pieces = engine.stream(target, prompt, sampling, owner=caller.key_id or caller.project)
        first = await _answer(request, _first_piece(pieces, param))
    except BaseException:
        release()
        raise

    async def events():
        if opening:
            yield _sse(chunk | opening)
        piece = first
        try:
            while True:
                for part in chunks_of(piece):
                    yield _sse(chunk | part)
                if piece.finish_reason:
                    if include_usage:
                        yield _sse(chunk | {"choices": [], "usage": _usage(piece.prompt_tokens, piece.completion_tokens)})
                    break
                piece = await anext(pieces)
        except (TunesmithError, EngineClosed) as exc:  # the server stopped mid-stream
            error = _engine_error(exc, param)
            yield _sse(error_body(error.message, error.type, error.param, error.code))
        yield "data: [DONE]\n\n"

    return _EventStream(events(), pieces, release)


def _check(engine, target) -> None:
    """Refuse a model that cannot write text before an event stream starts, so the client
    gets a plain 400 rather than an error in the middle of the stream."""
    try:
        engine.check(target)
    except TunesmithError as exc:
        raise APIError(400, str(exc), param="model") from None


@router.post("/completions")
async def create_completion(request: Request, sessions: SessionDep, settings: SettingsDep, caller: CallerDep,
                            engine: EngineDep, admission: AdmissionDep, body: CompletionCreate):
    """Continue raw text (no chat template) with a base or fine-tuned model: one prompt or a
    list of up to 64. Limits as for chat completions."""
    target = _target(sessions, settings, caller, body.model)
    sampling = _sampling(settings, body, body.max_tokens)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise APIError(400, "prompt must not be empty.", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise APIError(400, f"'prompt' is a list of {len(prompts)} prompts, more than the {MAX_PROMPTS} one request may "
                       "send; split it into several requests.", param="prompt")
    if len(prompts) * body.n > MAX_CHOICES:
        raise APIError(400, f"{len(prompts)} prompts with n={body.n} ask for {len(prompts) * body.n} choices, more than the "
                       f"{MAX_CHOICES} one request may ask for; lower n or send fewer prompts.", param="n")
    _check_size(sum(len(p) for p in prompts), "prompt")
    if body.stream and len(prompts) > 1:
        raise APIError(400, "Streaming takes one prompt: send a string, not a list.", param="prompt")
    ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    head = {"id": ident, "created": created, "model": body.model, "system_fingerprint": None}
    release = _admit(admission, settings, caller, engine)
    if body.stream:
        def pieces(piece):
            if piece.text or piece.finish_reason:
                yield {"choices": [{"index": 0, "text": piece.text, "finish_reason": piece.finish_reason, "logprobs": None}]}

        return await _event_stream(request, caller, engine, target, prompts[0], sampling, body,
                                   head | {"object": "text_completion"}, pieces, release, "prompt")
    try:
        results = await _answer(request, _complete_all(engine, target, prompts, sampling, caller))
    finally:
        release()
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for result in results:
        prompt_tokens += result.prompt_tokens
        for c in result.choices:
            choices.append({"index": len(choices), "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
            completion_tokens += c.tokens
    return head | {"object": "text_completion", "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}


async def _complete_all(engine: Engine, target: Target, prompts: list[str], sampling: Sampling, caller: Caller) -> list:
    """Every prompt's completion; when one fails or the caller goes, the others are cancelled too."""
    tasks = [asyncio.ensure_future(_complete(engine, target, p, sampling, caller, "prompt")) for p in prompts]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
