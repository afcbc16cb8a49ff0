"""Teachers: the models that write synthetic rows, paraphrases and judge scores.

A teacher is either a local model (a built-in name, a model folder or a run directory,
answered in batches by `inference.generate.generate`) or any endpoint that speaks OpenAI's
chat-completions protocol (vLLM, llama.cpp's server, Ollama, OpenAI itself), called with
several requests in flight, a requests-per-minute limit, and retries with backoff on rate
limits, server errors and dropped connections.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tunesmith.errors import TunesmithError
from tunesmith.inference.generate import generate, load_for_inference

# Statuses worth retrying: rate limited, or the server (not the request) failed.
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


class TeacherError(TunesmithError):
    """The teacher cannot answer: a bad URL, key or model name, or an endpoint that stays down."""


@dataclass
class LocalTeacher:
    """A model on this machine. Sampling (temperature > 0) is what makes rows differ; set
    `torch.manual_seed` for repeatable output."""

    target: str  # built-in model name, model folder or run directory
    batch_size: int = 16
    prefill: bool = True  # can continue a partial assistant turn (see engine.generate)
    _loaded: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.target

    def complete(self, conversations: list[list[dict]], temperature: float = 0.8, max_new_tokens: int = 128) -> list[str]:
        """One answer per conversation, in order."""
        if self._loaded is None:
            self._loaded = load_for_inference(self.target)
        return generate(self._loaded, conversations, max_new_tokens, temperature, self.batch_size, top_p=0.95)


class RateLimiter:
    """At most `per_minute` request starts per minute, spaced evenly (thread-safe)."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


@dataclass
class EndpointTeacher:
    """A model behind an OpenAI-compatible `/chat/completions` endpoint."""

    url: str  # base URL, e.g. http://localhost:8000/v1 (a full .../chat/completions URL works too)
    model: str
    key: str | None = None
    concurrency: int = 4  # requests in flight at once
    requests_per_minute: float | None = None  # None: no limit
    max_retries: int = 5
    timeout: float = 120.0
    backoff: float = 1.0  # first retry waits this many seconds, then doubles (capped at 30 s)
    limiter: RateLimiter | None = field(default=None, repr=False)  # made from requests_per_minute; may be shared

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"

    def complete(self, conversations: list[list[dict]], temperature: float = 0.8, max_new_tokens: int = 128) -> list[str]:
        """One answer per conversation, in order; requests run `concurrency` at a time."""
        if self.limiter is None:
            self.limiter = RateLimiter(self.requests_per_minute)
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(lambda c: self._one(c, temperature, max_new_tokens), conversations))

    def _one(self, messages: list[dict], temperature: float, max_new_tokens: int) -> str:
        import requests

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_new_tokens}
        last, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            self.limiter.wait()
            try:
                response = requests.post(self.endpoint, json=body, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                last, retry_after = type(exc).__name__, None
                continue
            if response.status_code == 200:
                return _answer(response, self.endpoint)
            if response.status_code not in RETRY_STATUSES:
                raise TeacherError(_refusal(response, self))
            last, retry_after = f"HTTP {response.status_code}", response.headers.get("Retry-After")
        raise TeacherError(
            f"The teacher endpoint {self.endpoint} failed {self.max_retries + 1} times (last: {last}); "
            "rows already written are kept, so run the same command again once it is back."
        )

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """The server's Retry-After when it sends one, else exponential backoff."""
        if retry_after:
            try:
                return min(60.0, float(retry_after))
            except ValueError:
                pass
        return min(30.0, self.backoff * 2 ** (attempt - 1))


def _answer(response, endpoint: str) -> str:
    try:
        return response.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        raise TeacherError(f"{endpoint} answered, but not in the chat-completions format (choices[0].message.content).") from None


def _refusal(response, teacher: EndpointTeacher) -> str:
    try:
        detail = response.json().get("error", {})
        detail = detail.get("message", "") if isinstance(detail, dict) else str(detail)
    except ValueError:
        detail = response.text[:200]
    detail = f" ({detail})" if detail else ""
    if response.status_code in (401, 403):
        return f"The teacher endpoint refused the key with HTTP {response.status_code}{detail}; check --teacher-key."
    if response.status_code == 404:
        return (f"The teacher endpoint answered 404 for model {teacher.model!r} at {teacher.endpoint}{detail}; "
                "check --teacher-url (it should end in /v1) and --teacher-model.")
    return f"The teacher endpoint rejected the request with HTTP {response.status_code}{detail}."


def make_teacher(
    model: str | None = None,
    url: str | None = None,
    endpoint_model: str | None = None,
    key: str | None = None,
    requests_per_minute: float | None = None,
    concurrency: int = 4,
    what: str = "teacher",
) -> LocalTeacher | EndpointTeacher:
    """A local teacher for `model` (default: the bundled model), or an endpoint teacher when
    `url` is given. `what` names the option family in error messages (teacher, judge)."""
    if url:
        if model:
            raise TeacherError(f"Give either --{what} MODEL or --{what}-url URL, not both.")
        if not endpoint_model:
            raise TeacherError(f"--{what}-url needs --{what}-model NAME: the model the endpoint should run.")
        if not url.startswith(("http://", "https://")):
            raise TeacherError(f"--{what}-url must start with http:// or https://, got {url!r}.")
        return EndpointTeacher(url, endpoint_model, key, concurrency, requests_per_minute)
    return LocalTeacher(model or "smollm2-135m")
