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
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select, update

from tunesmith.config import RunConfig
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
from tunesmith.jobs.store import CANCELLED, FINISHED, PAUSED, QUEUED, RUNNING, VALIDATING, Checkpoint, Event, File, Job, Model
from tunesmith.serve.app import APIError, Caller, CallerDep, error_body, not_found

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
    limit = int(settings.max_upload_mb * 1024 * 1024)
    size = 0
    with path.open("wb") as out:
        while chunk := await file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                out.close()
                path.unlink()
                raise APIError(413, f"{filename} is larger than the server's limit of {settings.max_upload_mb:g} MB "
                               "(tunesmith serve --max-upload-mb).", param="file", code="file_too_large")
            out.write(chunk)
    try:
        info = _check_file(path, filename)
    except TunesmithError as exc:
        path.unlink()
        raise APIError(400, str(exc).replace(str(path), filename), param="file", code="invalid_file") from None
    f = File(id=file_id, project=caller.project, filename=filename, purpose=purpose, bytes=size, path=str(path), info=info)
    with _sessions(request).begin() as s:
        s.add(f)
    return file_public(f)


def _check_file(path: Path, filename: str) -> dict:
    """Parse the file and run the data gate's quick checks (the embedding-based label check
    runs when a job trains on it)."""
    from tunesmith.data.quality import check_data

    card = check_data(path, label_check=False)
    name = lambda text: text.replace(str(path), filename)  # noqa: E731 - never show our storage path
    findings = sorted(card.findings, key=lambda f: f.severity != "error")
    return {
        "format": card.format,
        "task": card.task,
        "rows": card.rows,
        "quality_score": card.score(),
        "errors": [name(f.message) for f in card.errors()],
        "warnings": [name(f.message) for f in card.warnings()],
        # Each finding with a few of its rows, for people deciding what to fix.
        "findings": [{"check": f.check, "severity": f.severity, "message": name(f.message), "rows": f.count,
                      "examples": [{"row": e["row"], "text": str(e.get("text", ""))[:300]} for e in f.examples[:3]]}
                     for f in findings],
    }


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
    from tunesmith.models import BUILTIN_MODELS

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
    from tunesmith.config import load_config
    from tunesmith.serve.engine import final_stage_dir

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


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())  # clients send fields we do not use
    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None


class ChatCompletionCreate(_SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionCreate(_SamplingFields):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions


def _engine(request: Request):
    if request.app.state.engine is None:
        from tunesmith.serve.pool import Engine

        s = request.app.state.settings
        request.app.state.engine = Engine(max_adapters=s.max_adapters, max_batch=s.max_batch)
    return request.app.state.engine


def _target(request: Request, caller: Caller, model_id: str):
    from tunesmith.serve.pool import Target

    bases = base_models(request)
    if model_id in bases:
        return Target(key=model_id, base=bases[model_id])
    m = _get_model(request, caller, model_id)
    return Target(key=m.id, base=m.base, run_dir=Path(m.run_dir))


def _sampling(body: _SamplingFields, max_tokens: int | None):
    from tunesmith.serve.pool import Sampling

    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise APIError(400, "stop takes at most 4 sequences.", param="stop")
    if body.stream and body.n > 1:
        raise APIError(400, "Streaming returns one choice: set n to 1 or stream to false.", param="n")
    return Sampling(max_tokens=max_tokens or 256, temperature=body.temperature, top_p=body.top_p,
                    stop=tuple(s for s in stop if s), n=body.n, seed=body.seed)


def _text(content) -> str:
    if isinstance(content, list):  # content parts: only text parts are understood
        if any(part.get("type") != "text" for part in content):
            raise APIError(400, "Only text content parts are supported.", param="messages")
        return "".join(part.get("text", "") for part in content)
    return content or ""


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@inference.post("/chat/completions")
async def create_chat_completion(request: Request, caller: CallerDep, body: ChatCompletionCreate):
    """Answer a conversation with a base or fine-tuned model; `stream=true` sends server-sent events."""
    target = _target(request, caller, body.model)
    sampling = _sampling(body, body.max_completion_tokens or body.max_tokens)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)} for m in body.messages]
    engine, ident, created = _engine(request), f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    head = {"id": ident, "created": created, "model": body.model, "system_fingerprint": None}
    if body.stream:
        def deltas(piece):
            if piece.text:
                yield {"choices": [{"index": 0, "delta": {"content": piece.text}, "finish_reason": None}]}
            if piece.finish_reason:
                yield {"choices": [{"index": 0, "delta": {}, "finish_reason": piece.finish_reason}]}

        opening = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        return _event_stream(engine, target, messages, sampling, body, head | {"object": "chat.completion.chunk"},
                             deltas, opening)
    result = await _complete(engine, target, messages, sampling)
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                "logprobs": None} for i, c in enumerate(result.choices)]
    return head | {"object": "chat.completion", "choices": choices,
                   "usage": _usage(result.prompt_tokens, sum(c.tokens for c in result.choices))}


async def _complete(engine, target, prompt, sampling):
    try:
        return await engine.complete(target, prompt, sampling)
    except TunesmithError as exc:
        raise APIError(400, str(exc), param="model") from None


def _event_stream(engine, target, prompt, sampling, body: _SamplingFields, chunk: dict, chunks_of, opening=None):
    """Server-sent events: `opening`, then the chunks `chunks_of(piece)` makes of each
    generated piece (each merged into `chunk`, which carries id, object and model), a usage
    chunk when `stream_options.include_usage` asks for one, then `[DONE]`."""
    _check(engine, target)
    include_usage = bool((body.stream_options or {}).get("include_usage"))

    async def events():
        if opening:
            yield _sse(chunk | opening)
        try:
            async for piece in engine.stream(target, prompt, sampling):
                for part in chunks_of(piece):
                    yield _sse(chunk | part)
                if piece.finish_reason and include_usage:
                    yield _sse(chunk | {"choices": [], "usage": _usage(piece.prompt_tokens, piece.completion_tokens)})
        except TunesmithError as exc:  # a model that failed to load after the stream began
            yield _sse(error_body(str(exc), param="model"))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _check(engine, target) -> None:
    """Refuse a model that cannot write text before an event stream starts, so the client
    gets a plain 400 rather than an error in the middle of the stream."""
    try:
        engine.check(target)
    except TunesmithError as exc:
        raise APIError(400, str(exc), param="model") from None


@inference.post("/completions")
async def create_completion(request: Request, caller: CallerDep, body: CompletionCreate):
    """Continue raw text (no chat template) with a base or fine-tuned model."""
    target = _target(request, caller, body.model)
    sampling = _sampling(body, body.max_tokens)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise APIError(400, "prompt must not be empty.", param="prompt")
    engine, ident, created = _engine(request), f"cmpl-{secrets.token_hex(12)}", int(time.time())
    head = {"id": ident, "created": created, "model": body.model, "system_fingerprint": None}
    if body.stream:
        if len(prompts) > 1:
            raise APIError(400, "Streaming takes one prompt: send a string, not a list.", param="prompt")

        def pieces(piece):
            if piece.text or piece.finish_reason:
                yield {"choices": [{"index": 0, "text": piece.text, "finish_reason": piece.finish_reason, "logprobs": None}]}

        return _event_stream(engine, target, prompts[0], sampling, body, head | {"object": "text_completion"}, pieces)
    results = await asyncio.gather(*(_complete(engine, target, p, sampling) for p in prompts))
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for result in results:
        prompt_tokens += result.prompt_tokens
        for c in result.choices:
            choices.append({"index": len(choices), "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
            completion_tokens += c.tokens
    return head | {"object": "text_completion", "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}


routers = [files, jobs, models, inference]
