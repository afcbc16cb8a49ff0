"""OpenAI-compatible routes: files, fine-tuning jobs, models, chat and text completions.

Objects and statuses follow OpenAI's API reference, so the official client parses them;
tunesmith's additions are extra fields (`data_card` on files, `tunesmith` on jobs) and extra
`method.type`s. Every query is scoped to the caller's project.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update

from tunesmith.config import RunConfig, load_config
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.jobs import store
from tunesmith.jobs.spec import (
    Judge,
    Resources,
    build_config,
    check_data_fits,
    hyperparameters_of,
    server_overrides,
    stage_of,
)
from tunesmith.jobs.store import (
    CANCELLED,
    FINISHED,
    PAUSED,
    QUEUED,
    RUNNING,
    VALIDATING,
    Checkpoint,
    Event,
    File,
    Job,
    Model,
)
from tunesmith.models import BUILTIN_MODELS
from tunesmith.runs import final_stage_dir
from tunesmith.serve import gate
from tunesmith.serve.deps import APIError, Caller, CallerDep, error_body, not_found
from tunesmith.serve.pool import (
    MAX_N,
    MAX_STOP,
    MAX_STOP_CHARS,
    Engine,
    EngineClosed,
    PromptTooLong,
    Sampling,
    Target,
)

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


def _scoped(query, table, caller: Caller):
    return query if caller.admin else query.where(table.project == caller.project)


def _after(rows: list, after: str | None) -> list:
    """The rows after the one with id `after` (a page cursor); all of them without one."""
    if not after:
        return rows
    ids = [r.id for r in rows]
    return rows[ids.index(after) + 1:] if after in ids else []


def _page(rows: list, limit: int, to_public) -> dict:
    return {"object": "list", "data": [to_public(r) for r in rows[:limit]], "has_more": len(rows) > limit}


def _sessions(request: Request):
    return request.app.state.sessions


# --------------------------------------------------------------------------- files

files = APIRouter(tags=["files"])


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    data_card: dict | None = None
    """tunesmith: the detected format, row count and the data gate's findings."""


def file_public(f: File) -> FilePublic:
    errors = (f.info or {}).get("errors") or []
    details = f"The data gate found {len(errors)} error(s): {errors[0]}" if errors else None
    return FilePublic(id=f.id, bytes=f.bytes, created_at=int(f.created_at), filename=f.filename, purpose=f.purpose,
                      status_details=details, data_card=f.info or None)


def _get_file(request: Request, caller: Caller, file_id: str, param: str | None = None) -> File:
    with _sessions(request)() as s:
        f = s.scalar(_scoped(select(File).where(File.id == file_id), File, caller))
    if f is None:
        raise not_found("file", file_id, param)
    return f


@files.post("/files", response_model=FilePublic)
async def create_file(request: Request, caller: CallerDep, file: UploadFile, purpose: Annotated[str, Form()]) -> FilePublic:
    """Upload a data file for fine-tuning. It is stored under a generated id, parsed, and checked
    by the data gate; a file that cannot be parsed is refused with the line and the problem."""
    settings = request.app.state.settings
    if purpose != "fine-tune":
        raise APIError(400, f"purpose '{purpose}' is not supported: upload training data with purpose 'fine-tune'.",
                       param="purpose", code="invalid_purpose")
    filename = Path(file.filename or "upload.jsonl").name[:255]  # display only; never a path on our side
    suffix = Path(filename).suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise APIError(400, f"{filename}: unsupported file type; upload one of {', '.join(DATA_SUFFIXES)}.", param="file")
    file_id = store.new_id("file")
    path = settings.data_dir / "files" / f"{file_id}{suffix}"
    stored = False
    try:
        # In a thread: copying a large upload to disk on the event loop would stall every other request.
        size = await asyncio.to_thread(_save_upload, file.file, path, int(settings.max_upload_mb * 1024 * 1024))
        if size is None:  # the body limit (serve/limits.py) allows for multipart framing; this is the exact check
            raise APIError(413, f"{filename} is larger than the server's limit of {settings.max_upload_mb:g} MB "
                           "(tunesmith serve --max-upload-mb).", param="file", code="file_too_large")
        try:
            info = await gate.check_upload(request.app, path, filename)
        except TunesmithError as exc:
            code = "file_check_timeout" if isinstance(exc, gate.GateTimeout) else "invalid_file"
            raise APIError(400, str(exc).replace(str(path), filename), param="file", code=code) from None
        f = File(id=file_id, project=caller.project, filename=filename, purpose=purpose, bytes=size, path=str(path),
                 info=info)
        with _sessions(request).begin() as s:
            s.add(f)
        stored = True
    finally:
        if not stored:  # whatever went wrong (refused, timed out, crashed, cancelled): no orphan file
            path.unlink(missing_ok=True)
    return file_public(f)


def _save_upload(source, path: Path, limit: int) -> int | None:
    """Copy an upload to `path` and return its size, or None (and stop reading) once it passes `limit` bytes."""
    size = 0
    with path.open("wb") as out:
        while chunk := source.read(1 << 20):
            size += len(chunk)
            if size > limit:
                return None
            out.write(chunk)
    return size


@files.get("/files")
def list_files(request: Request, caller: CallerDep, purpose: str | None = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               after: str | None = None, order: Literal["asc", "desc"] = "desc") -> dict:
    """The project's files, newest first (`order=asc` for oldest first)."""
    query = _scoped(select(File), File, caller)
    if purpose:
        query = query.where(File.purpose == purpose)
    query = query.order_by(File.created_at.desc() if order == "desc" else File.created_at)
    with _sessions(request)() as s:
        rows = list(s.scalars(query))
    rows = _after(rows, after)
    return _page(rows, limit, file_public)


@files.get("/files/{file_id}", response_model=FilePublic)
def retrieve_file(request: Request, caller: CallerDep, file_id: str) -> FilePublic:
    return file_public(_get_file(request, caller, file_id))


@files.get("/files/{file_id}/content")
def download_file(request: Request, caller: CallerDep, file_id: str) -> FileResponse:
    f = _get_file(request, caller, file_id)
    return FileResponse(f.path, filename=f.filename)


@files.delete("/files/{file_id}")
def delete_file(request: Request, caller: CallerDep, file_id: str) -> dict:
    """Delete a file; refused while an unfinished job trains on it."""
    f = _get_file(request, caller, file_id)
    with _sessions(request).begin() as s:
        busy = s.scalar(select(Job.id).where((Job.training_file == file_id) | (Job.validation_file == file_id),
                                             Job.status.not_in(FINISHED)))
        if busy:
            raise APIError(400, f"{file_id} is used by job {busy}, which has not finished; cancel the job first.",
                           code="file_in_use")
        s.delete(s.get(File, file_id))
    Path(f.path).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}


# --------------------------------------------------------------------------- fine-tuning jobs

jobs = APIRouter(tags=["fine-tuning"])


MAX_JOB_SEED = 2**31 - 1  # the job's seed column is a 32-bit integer on PostgreSQL


class JobCreate(BaseModel):
    model: str = Field(max_length=255)
    """Base model: a built-in name or one the server was started with (GET /v1/models)."""
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: int | None = Field(None, ge=0, le=MAX_JOB_SEED)
    hyperparameters: dict[str, Any] | None = None
    """Deprecated by OpenAI in favour of method; still honoured (for method.type supervised)."""
    method: dict[str, Any] | None = None
    """`{"type": ..., "<type>": {"hyperparameters": {...}}}`; GET /v1/tunesmith/base_models lists the
    reward functions, reward models and judges an RL job may name."""
    metadata: dict[str, str] | None = None
    """Up to 16 pairs, keys up to 64 characters, values up to 512 (as OpenAI)."""
    integrations: list[dict] | None = None

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is not None and (len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())):
            raise ValueError("metadata takes up to 16 pairs, keys up to 64 characters and values up to 512")
        return metadata


class JobPublic(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: dict | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list = []
    metadata: dict | None = None
    method: dict
    user_provided_suffix: str | None = None
    tunesmith: dict = {}
    """tunesmith: the hyperparameters the run resolved ("auto" filled) and the attempt count."""


def job_public(job: Job) -> JobPublic:
    requested = hyperparameters_of(job.method)
    resolved = job.resolved or {}
    shown = {key: resolved.get(key, requested.get(key, "auto")) for key in ("n_epochs", "batch_size")}
    shown["learning_rate_multiplier"] = requested.get("learning_rate_multiplier", "auto")
    return JobPublic(
        id=job.id, created_at=int(job.created_at), error=job.error,
        fine_tuned_model=job.fine_tuned_model if job.status == "succeeded" else None,
        finished_at=int(job.finished_at) if job.finished_at else None, hyperparameters=shown, model=job.model,
        organization_id=job.project, result_files=job.result_files or [], seed=job.seed, status=job.status,
        trained_tokens=job.trained_tokens, training_file=job.training_file, validation_file=job.validation_file,
        metadata=job.metadata_, method=job.method, user_provided_suffix=job.suffix,
        tunesmith={"resolved": resolved, "attempts": job.attempts},
    )


def base_models(request: Request) -> dict[str, str]:
    """Base models a client may name: the built-in ones and those the server was started with."""
    return {name: name for name in BUILTIN_MODELS} | request.app.state.settings.models


@jobs.post("/fine_tuning/jobs", response_model=JobPublic)
def create_job(request: Request, caller: CallerDep, body: JobCreate) -> JobPublic:
    """Create a fine-tuning job: the files are checked now, and a worker trains it when one is free."""
    method, training, validation, seed, config, overrides = checked_job(request, caller, body)
    job_id = store.new_id("ftjob")
    fine_tuned = ":".join(["ft", body.model.replace(":", "-").replace("/", "-"), caller.project, body.suffix or "", job_id[6:14]])
    job = Job(id=job_id, project=caller.project, model=body.model, source=config.model.name,
              training_file=training.id, validation_file=validation.id if validation else None, suffix=body.suffix,
              seed=seed, method=method, metadata_=body.metadata, status=VALIDATING, fine_tuned_model=fine_tuned,
              overrides=overrides or None, run_dir=str(request.app.state.settings.data_dir / "runs" / job_id))
    with _sessions(request).begin() as s:
        s.add(job)
        s.flush()  # the job row first: its events refer to it
        store.add_event(s, job_id, f"Validating training file: {training.id}"
                        + (f" and validation file: {validation.id}" if validation else ""))
        for warning in (training.info.get("warnings") or [])[:10]:
            store.add_event(s, job_id, f"Data gate warning: {warning}", level="warn")
        s.flush()
        store.add_event(s, job_id, "Files validated, moving job to queued state.")
        job.status = QUEUED
    return job_public(job)


def resources(request: Request) -> Resources:
    """The reward functions, reward models and judges the operator registered for jobs."""
    s = request.app.state.settings
    return Resources(dict(s.reward_functions), dict(s.reward_models), {n: Judge(**j) for n, j in s.judges.items()})


def _own_reward_model(request: Request, caller: Caller):
    """`id -> run folder` of the caller's own fine-tuned reward models (None for anything else)."""
    def find(model_id: str) -> str | None:
        with _sessions(request)() as s:
            m = s.scalar(select(Model).where(Model.id == model_id, Model.project == caller.project))
        if m is None or not (Path(m.run_dir) / "config.yaml").exists():
            return None
        final = final_stage_dir(Path(m.run_dir))
        return str(final) if load_config(final / "config.yaml").method.stages[-1] == "reward" else None

    return find


def checked_job(request: Request, caller: Caller, body: JobCreate) -> tuple[dict, File, File | None, int, RunConfig, dict]:
    """(method, training file, validation file, seed, run config, server overrides) of a job
    request, every part checked as creating the job checks it; APIError names the first
    thing wrong. Only allow-listed hyperparameters are taken, and server resources only by
    the names the operator registered."""
    bases = base_models(request)
    if body.model not in bases:
        raise APIError(400, f"Unknown base model '{body.model}': choose one of {', '.join(bases)} (GET /v1/models).",
                       param="model", code="model_not_found")
    if body.integrations:
        raise APIError(400, "integrations are not supported; leave the parameter out.", param="integrations")
    method = dict(body.method or {"type": "supervised"})
    method.setdefault("type", "supervised")
    extra = set(method) - {"type", str(method["type"])}
    if extra:
        raise APIError(400, f"method takes 'type' and '{method['type']}' only, not '{sorted(extra)[0][:64]}'.", param="method")
    if body.hyperparameters:
        if body.method:
            raise APIError(400, "Give hyperparameters inside method, not both at the top level and in method.",
                           param="hyperparameters")
        method["supervised"] = {"hyperparameters": dict(body.hyperparameters)}
    training = _get_file(request, caller, body.training_file, "training_file")
    validation = _get_file(request, caller, body.validation_file, "validation_file") if body.validation_file else None
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    try:
        stage = stage_of(method)
        overrides = server_overrides(method, resources(request), _own_reward_model(request, caller))
        config = build_config(bases[body.model], method, training.path, validation.path if validation else None, seed,
                              overrides=overrides)
        for f, param in ((training, "training_file"), (validation, "validation_file")):
            if f is None:
                continue
            if f.purpose != "fine-tune":
                raise APIError(400, f"{f.id} has purpose '{f.purpose}'; a job trains on files uploaded with purpose "
                               "'fine-tune'.", param=param)
            check_data_fits(stage, f.info.get("task"), f.id)
        errors = training.info.get("errors") or []
        if errors and not config.data.force:
            raise APIError(400, f"{training.id} failed the data gate ({errors[0]}); fix the file, or set "
                           "hyperparameter force=true to train anyway.", param="training_file", code="invalid_training_file")
    except ConfigError as exc:
        raise APIError(400, str(exc), param="method") from None
    return method, training, validation, seed, config, overrides


def _get_job(request: Request, caller: Caller, job_id: str) -> Job:
    with _sessions(request)() as s:
        job = s.scalar(_scoped(select(Job).where(Job.id == job_id), Job, caller))
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


@jobs.get("/fine_tuning/jobs")
def list_jobs(request: Request, caller: CallerDep, after: str | None = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
    """The project's jobs, newest first; `after` is the id of the last job of the previous page."""
    query = _scoped(select(Job), Job, caller).order_by(Job.created_at.desc(), Job.id.desc())
    with _sessions(request)() as s:
        if after:
            cursor = s.scalar(_scoped(select(Job).where(Job.id == after), Job, caller))
            if cursor is None:
                raise not_found("fine-tuning job", after, "after")
            query = query.where(Job.created_at < cursor.created_at)
        rows = list(s.scalars(query.limit(limit + 1)))
    return _page(rows, limit, job_public)


@jobs.get("/fine_tuning/jobs/{job_id}", response_model=JobPublic)
def retrieve_job(request: Request, caller: CallerDep, job_id: str) -> JobPublic:
    return job_public(_get_job(request, caller, job_id))


def _change_status(request: Request, caller: Caller, job_id: str, allowed: dict[str, dict], verb: str, message: str) -> JobPublic:
    """Apply `allowed[current status]` to the job if it still has that status (the worker may
    move it meanwhile; then the client gets the job as it now is and a clear error)."""
    job = _get_job(request, caller, job_id)
    if job.status not in allowed:
        raise APIError(400, f"Cannot {verb} job {job_id}: it is {job.status}.", code="invalid_job_status")
    values = allowed[job.status]
    with _sessions(request).begin() as s:
        changed = s.execute(update(Job).where(Job.id == job_id, Job.status == job.status).values(**values)).rowcount
        if not changed:
            raise APIError(409, f"Job {job_id} changed status meanwhile; retrieve it and try again.", code="conflict")
        store.add_event(s, job_id, message)
    return job_public(_get_job(request, caller, job_id))


@jobs.post("/fine_tuning/jobs/{job_id}/cancel", response_model=JobPublic)
def cancel_job(request: Request, caller: CallerDep, job_id: str) -> JobPublic:
    """Cancel a job that has not finished; a running one stops at its next step."""
    cancel = {"status": CANCELLED, "finished_at": time.time(), "control": None}
    allowed = {s: cancel for s in (VALIDATING, QUEUED, RUNNING, PAUSED)}
    return _change_status(request, caller, job_id, allowed, "cancel", "Job cancelled.")


@jobs.post("/fine_tuning/jobs/{job_id}/pause", response_model=JobPublic)
def pause_job(request: Request, caller: CallerDep, job_id: str) -> JobPublic:
    """Pause a job: a running job saves a checkpoint and stops (status `paused` once it has)."""
    allowed = {QUEUED: {"status": PAUSED}, VALIDATING: {"status": PAUSED}, RUNNING: {"control": "pause"}}
    return _change_status(request, caller, job_id, allowed, "pause", "Pause requested.")


@jobs.post("/fine_tuning/jobs/{job_id}/resume", response_model=JobPublic)
def resume_job(request: Request, caller: CallerDep, job_id: str) -> JobPublic:
    """Resume a paused job: it goes back to the queue and continues from its last checkpoint."""
    allowed = {PAUSED: {"status": QUEUED}, RUNNING: {"control": None}}
    return _change_status(request, caller, job_id, allowed, "resume", "Job resumed; it continues from its last checkpoint.")


def _event_public(e: Event) -> dict:
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{e.seq}", "created_at": int(e.created_at),
            "level": e.level, "message": e.message, "data": e.data or {}, "type": e.type}


@jobs.get("/fine_tuning/jobs/{job_id}/events")
def list_events(request: Request, caller: CallerDep, job_id: str, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict:
    """Status changes, step metrics and warnings, newest first; `after` is an event id."""
    _get_job(request, caller, job_id)
    query = select(Event).where(Event.job_id == job_id).order_by(Event.seq.desc())
    if after:
        seq = after.removeprefix("ftevent-")
        if not seq.isdigit():
            raise APIError(400, f"Invalid value for 'after': '{after}' is not an event id.", param="after")
        query = query.where(Event.seq < int(seq))
    with _sessions(request)() as s:
        rows = list(s.scalars(query.limit(limit + 1)))
    return _page(rows, limit, _event_public)


def _checkpoint_public(c: Checkpoint) -> dict:
    m = c.metrics or {}
    metrics = {"step": c.step, "train_loss": m.get("train_loss"), "valid_loss": m.get("valid_loss"),
               "train_mean_token_accuracy": None, "valid_mean_token_accuracy": m.get("valid_accuracy"),
               "full_valid_loss": m.get("valid_loss"), "full_valid_mean_token_accuracy": None}
    return {"object": "fine_tuning.job.checkpoint", "id": c.id, "created_at": int(c.created_at),
            "fine_tuned_model_checkpoint": c.model, "fine_tuning_job_id": c.job_id, "metrics": metrics,
            "step_number": c.step}


@jobs.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, caller: CallerDep, job_id: str, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict:
    """The checkpoints the job saved, with their metrics, newest first."""
    _get_job(request, caller, job_id)
    with _sessions(request)() as s:
        rows = list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                              .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc())))
    rows = _after(rows, after)
    return _page(rows, limit, _checkpoint_public)


# --------------------------------------------------------------------------- models

models = APIRouter(tags=["models"])
BASE_CREATED = 1730000000  # a fixed date for built-in models, which have no creation time here


def _model_public(model_id: str, created: float, owner: str) -> dict:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": owner}


@models.get("/models")
def list_models(request: Request, caller: CallerDep) -> dict:
    """Base models and the project's fine-tuned models."""
    data = [_model_public(name, BASE_CREATED, "tunesmith") for name in base_models(request)]
    with _sessions(request)() as s:
        data += [_model_public(m.id, m.created_at, m.project)
                 for m in s.scalars(_scoped(select(Model), Model, caller).order_by(Model.created_at))]
    return {"object": "list", "data": data}


def _get_model(request: Request, caller: Caller, model_id: str) -> Model:
    with _sessions(request)() as s:
        model = s.scalar(_scoped(select(Model).where(Model.id == model_id), Model, caller))
    if model is None:
        raise APIError(404, f"The model '{model_id}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    return model


@models.get("/models/{model_id:path}")
def retrieve_model(request: Request, caller: CallerDep, model_id: str) -> dict:
    if model_id in base_models(request):
        return _model_public(model_id, BASE_CREATED, "tunesmith")
    m = _get_model(request, caller, model_id)
    return _model_public(m.id, m.created_at, m.project)


@models.delete("/models/{model_id:path}")
def delete_model(request: Request, caller: CallerDep, model_id: str) -> dict:
    """Delete a fine-tuned model: it is no longer served and its weights are removed."""
    if model_id in base_models(request):
        raise APIError(403, f"'{model_id}' is a base model; only fine-tuned models can be deleted.", param="model")
    m = _get_model(request, caller, model_id)
    with _sessions(request).begin() as s:
        s.delete(s.get(Model, m.id))
    if request.app.state.engine is not None:
        request.app.state.engine.unload(m.id)
    shutil.rmtree(m.run_dir, ignore_errors=True)
    return {"id": m.id, "object": "model", "deleted": True}


# --------------------------------------------------------------------------- inference

inference = APIRouter(tags=["inference"])

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


def _engine(request: Request) -> Engine:
    if request.app.state.engine is None:
        s = request.app.state.settings
        request.app.state.engine = Engine(max_adapters=s.max_adapters, max_batch=s.max_batch)
    return request.app.state.engine


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


def _admit(request: Request, caller: Caller, engine: Engine) -> Callable[[], None]:
    """Admit one generation request for the caller's key (429 past its limits); returns its release."""
    state, s = request.app.state, request.app.state.settings
    admission = getattr(state, "admission", None)
    if admission is None:
        admission = state.admission = Admission()
    return admission.enter(caller.key_id or caller.project, s.max_concurrent_per_key, engine.waiting(), s.max_queue)


def _target(request: Request, caller: Caller, model_id: str) -> Target:
    bases = base_models(request)
    if model_id in bases:
        return Target(key=model_id, base=bases[model_id])
    m = _get_model(request, caller, model_id)
    return Target(key=m.id, base=m.base, run_dir=Path(m.run_dir))


def _sampling(request: Request, body: _SamplingFields, max_tokens: int | None) -> Sampling:
    """The request's sampling settings, max_tokens clamped to the server's limit (the engine
    clamps it further to the context the model has left after the prompt)."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise APIError(400, f"stop takes at most {MAX_STOP} sequences; send fewer.", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise APIError(400, f"Each stop sequence may be at most {MAX_STOP_CHARS} characters long; shorten it.", param="stop")
    if body.stream and body.n > 1:
        raise APIError(400, "Streaming returns one choice: set n to 1 or stream to false.", param="n")
    limit = max(1, min(max_tokens or DEFAULT_MAX_TOKENS, request.app.state.settings.max_tokens))
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


@inference.post("/chat/completions")
async def create_chat_completion(request: Request, caller: CallerDep, body: ChatCompletionCreate):
    """Answer a conversation with a base or fine-tuned model; `stream=true` sends server-sent events.
    max_tokens is clamped to the server's limit and to the context left after the prompt; a key
    with too many requests in flight, or a full queue, gets 429 with Retry-After."""
    target = _target(request, caller, body.model)
    sampling = _sampling(request, body, body.max_completion_tokens or body.max_tokens)
    if len(body.messages) > MAX_MESSAGES:
        raise APIError(400, f"'messages' has {len(body.messages)} entries, more than the {MAX_MESSAGES} one request may "
                       "send; shorten the conversation.", param="messages")
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)} for m in body.messages]
    _check_size(sum(len(m["content"]) for m in messages), "messages")
    engine, ident, created = _engine(request), f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    head = {"id": ident, "created": created, "model": body.model, "system_fingerprint": None}
    release = _admit(request, caller, engine)
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


@inference.post("/completions")
async def create_completion(request: Request, caller: CallerDep, body: CompletionCreate):
    """Continue raw text (no chat template) with a base or fine-tuned model: one prompt or a
    list of up to 64. Limits as for chat completions."""
    target = _target(request, caller, body.model)
    sampling = _sampling(request, body, body.max_tokens)
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
    engine, ident, created = _engine(request), f"cmpl-{secrets.token_hex(12)}", int(time.time())
    head = {"id": ident, "created": created, "model": body.model, "system_fingerprint": None}
    release = _admit(request, caller, engine)
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


routers = [files, jobs, models, inference]
