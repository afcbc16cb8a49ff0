"""What every router shares: the server's settings, the caller (API key -> project), the
error type answered as OpenAI's error object, and the database session dependency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from tunesmith.jobs import store


@dataclass
class Settings:
    """How the server runs; `tunesmith serve` fills it from its options."""

    data_dir: Path
    """Where uploaded files, runs and (by default) the database live."""
    database_url: str | None = None
    """SQLAlchemy URL of the job database; default SQLite in `data_dir`."""
    max_upload_mb: float = 512.0
    """Largest file `POST /v1/files` accepts."""
    models: dict[str, str] = field(default_factory=dict)
    """Base models beyond the built-in ones, name -> local folder; clients name models, never paths."""
    max_adapters: int = 8
    """Fine-tuned adapters kept loaded next to their base model (least recently used ones are dropped)."""
    max_batch: int = 16
    """Most prompts generated together in one batch."""
    max_tokens: int = 2048
    """Most tokens one completion may generate; a request asking more (or more than its model's
    context leaves after the prompt) is clamped."""
    max_concurrent_per_key: int = 4
    """Generation requests one API key may have in flight; more get 429 with Retry-After."""
    max_queue: int = 64
    """Generation requests waiting for the model at most, over all keys; more get 429 with Retry-After."""
    max_body_mb: float = 4.0
    """Largest JSON request body (file uploads have `max_upload_mb`)."""
    gate_timeout_s: float = 300.0
    """Longest the data gate may spend on one uploaded file before the upload is refused."""
    shutdown_s: float = 5.0
    """On shutdown, in-flight requests get this long to finish before they are cancelled."""
    reward_functions: dict[str, str] = field(default_factory=dict)
    """Reward functions jobs may name, name -> `FILE.py` or `FILE.py:FUNCTION` on this server
    (the built-in exact_match, contains_answer and length are always offered)."""
    reward_models: dict[str, str] = field(default_factory=dict)
    """Reward models jobs may name, name -> a reward-model run folder on this server."""
    judges: dict[str, dict] = field(default_factory=dict)
    """LLM judges jobs may name, name -> {url, model, key_env}: the key is read from the
    environment variable `key_env` and is only ever sent to `url`."""

    @property
    def url(self) -> str:
        return self.database_url or store.default_database_url(self.data_dir)


class APIError(Exception):
    """An error the client caused (or a server error), answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers  # e.g. Retry-After on a 429


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    # The same answer whether the id does not exist or belongs to another project.
    return APIError(404, f"No {kind} with id '{ident}' in this project.", param=param, code=f"{kind.replace(' ', '_')}_not_found")


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's project, and whether it may see every project."""

    project: str
    admin: bool = False
    key_id: str = ""  # the API key's id: generation limits count per key


def authenticate(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not secret:
        raise APIError(401, "Missing API key: send it as 'Authorization: Bearer <key>' (create one with "
                       "`tunesmith keys create --project NAME`).", code="missing_api_key", type="authentication_error")
    key = store.find_key(request.app.state.sessions, secret)
    if key is None:
        raise APIError(401, "Incorrect API key provided; check the key or create one with `tunesmith keys create`.",
                       code="invalid_api_key", type="authentication_error")
    return Caller(key.project, key.admin, key.id)


CallerDep = Annotated[Caller, Depends(authenticate)]
