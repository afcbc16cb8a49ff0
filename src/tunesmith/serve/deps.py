"""What the routers share: the server's settings, the database, the caller (API key ->
project), the inference engine, the error answered as OpenAI's error object, and the
project-scoped lookups of files and models.

Routes take these as `Annotated` dependencies (`SettingsDep`, `SessionDep`, `CallerDep`,
`EngineDep`) rather than reading `request.app.state`; `create_app` fills the state once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from tunesmith.jobs import store
from tunesmith.jobs.store import File, Model
from tunesmith.models import BUILTIN_MODELS
from tunesmith.serve.pool import Engine


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

    @property
    def files_dir(self) -> Path:
        """Where uploaded (and fixed) files are stored, each under its id."""
        return Path(self.data_dir) / "files"

    @property
    def runs_dir(self) -> Path:
        """Where each job's run folder goes, named after the job."""
        return Path(self.data_dir) / "runs"


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


# --------------------------------------------------------------------------- dependencies


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_sessions(request: Request) -> sessionmaker[Session]:
    """The database's session factory, made once by `create_app`. A route opens a short session
    per read (`with sessions() as s`) or per transaction (`with sessions.begin() as s`), so no
    session is held across a slow step such as the data gate."""
    return request.app.state.sessions


SessionDep = Annotated[sessionmaker[Session], Depends(get_sessions)]


def authenticate(request: Request, sessions: SessionDep) -> Caller:
    """The caller of a request, from its `Authorization: Bearer <key>` header; 401 without a valid key."""
    header = request.headers.get("authorization", "")
    secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not secret:
        raise APIError(401, "Missing API key: send it as 'Authorization: Bearer <key>' (create one with "
                       "`tunesmith keys create --project NAME`).", code="missing_api_key", type="authentication_error")
    key = store.find_key(sessions, secret)
    if key is None:
        raise APIError(401, "Incorrect API key provided; check the key or create one with `tunesmith keys create`.",
                       code="invalid_api_key", type="authentication_error")
    return Caller(key.project, key.admin, key.id)


CallerDep = Annotated[Caller, Depends(authenticate)]


async def get_engine(request: Request, settings: SettingsDep) -> Engine:
    """The inference engine, started by the first generation request: a server that only
    trains never starts one. Async on purpose: it runs on the event loop, so two first
    requests cannot start two engines (a sync dependency runs in a thread pool, and two
    engines loading the same model at once race in transformers' meta-device loading)."""
    state = request.app.state
    if state.engine is None:
        state.engine = Engine(max_adapters=settings.max_adapters, max_batch=settings.max_batch)
    return state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def loaded_engine(request: Request) -> Engine | None:
    """The inference engine if a generation request has started it, else None (for routes
    that only tell it something, such as a deleted model, and must not start it)."""
    return request.app.state.engine


LoadedEngineDep = Annotated[Engine | None, Depends(loaded_engine)]


# --------------------------------------------------------------------------- project-scoped lookups


def scoped(query: Select, table, caller: Caller) -> Select:
    """`query` limited to the caller's project (an admin key sees every project)."""
    return query if caller.admin else query.where(table.project == caller.project)


def get_file(sessions: sessionmaker[Session], caller: Caller, file_id: str, param: str | None = None) -> File:
    """The caller's file `file_id`; 404 (naming `param`) when the project has none."""
    with sessions() as s:
        f = s.scalar(scoped(select(File).where(File.id == file_id), File, caller))
    if f is None:
        raise not_found("file", file_id, param)
    return f


def get_model(sessions: sessionmaker[Session], caller: Caller, model_id: str) -> Model:
    """The caller's fine-tuned model `model_id`; 404 as OpenAI words it when the project has none."""
    with sessions() as s:
        model = s.scalar(scoped(select(Model).where(Model.id == model_id), Model, caller))
    if model is None:
        raise APIError(404, f"The model '{model_id}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return model


def base_models(settings: Settings) -> dict[str, str]:
    """Base models a client may name, name -> what loads it: the built-in ones and those the
    server was started with."""
    return {name: name for name in BUILTIN_MODELS} | settings.models
