"""OpenAI's fine-tuning jobs, with their events and checkpoints, and tunesmith's pause and
resume. A job is created queued; a worker trains it when one is free."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tunesmith.jobs import store
from tunesmith.jobs.spec import hyperparameters_of
from tunesmith.jobs.store import (
    CANCELLED,
    PAUSED,
    QUEUED,
    RUNNING,
    VALIDATING,
    Checkpoint,
    Event,
    Job,
)
from tunesmith.serve.deps import (
    APIError,
    Caller,
    CallerDep,
    SessionDep,
    SettingsDep,
    not_found,
    scoped,
)
from tunesmith.serve.job_checks import check_domain_data, checked_job
from tunesmith.serve.schemas import JobCreate, list_page, rows_after

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])


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


def get_job(sessions: sessionmaker[Session], caller: Caller, job_id: str) -> Job:
    """The caller's job `job_id`; 404 when the project has none."""
    with sessions() as s:
        job = s.scalar(scoped(select(Job).where(Job.id == job_id), Job, caller))
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


@router.post("", response_model=JobPublic)
def create_job(request: Request, sessions: SessionDep, settings: SettingsDep, caller: CallerDep, body: JobCreate) -> JobPublic:
    """Create a fine-tuning job: the files are checked now, and a worker trains it when one is free.
    Under a domain pack (hyperparameters `domain`, `template`) the training file must pass the
    pack's data gate, and the job's check, training and evaluation go to the audit trail."""
    checked = checked_job(sessions, settings, caller, body)
    check_domain_data(request.app, sessions, settings, caller, checked)
    training, validation = checked.training, checked.validation
    job_id = store.new_id("ftjob")
    fine_tuned = ":".join(["ft", body.model.replace(":", "-").replace("/", "-"), caller.project, body.suffix or "", job_id[6:14]])
    job = Job(id=job_id, project=caller.project, model=body.model, source=checked.config.model.name,
              training_file=training.id, validation_file=validation.id if validation else None, suffix=body.suffix,
              seed=checked.seed, method=checked.method, metadata_=body.metadata, status=VALIDATING,
              fine_tuned_model=fine_tuned, overrides=checked.overrides or None, run_dir=str(settings.runs_dir / job_id),
              key_id=caller.key_id or None)
    with sessions.begin() as s:
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


@router.get("")
def list_jobs(sessions: SessionDep, caller: CallerDep, after: str | None = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict:
    """The project's jobs, newest first; `after` is the id of the last job of the previous page."""
    query = scoped(select(Job), Job, caller).order_by(Job.created_at.desc(), Job.id.desc())
    with sessions() as s:
        if after:
            cursor = s.scalar(scoped(select(Job).where(Job.id == after), Job, caller))
            if cursor is None:
                raise not_found("fine-tuning job", after, "after")
            query = query.where(Job.created_at < cursor.created_at)
        rows = list(s.scalars(query.limit(limit + 1)))
    return list_page(rows, limit, job_public)


@router.get("/{job_id}", response_model=JobPublic)
def retrieve_job(sessions: SessionDep, caller: CallerDep, job_id: str) -> JobPublic:
    return job_public(get_job(sessions, caller, job_id))


def change_status(sessions: sessionmaker[Session], caller: Caller, job_id: str, allowed: dict[str, dict], verb: str,
                  message: str) -> JobPublic:
    """Apply `allowed[current status]` to the job if it still has that status (the worker may
    move it meanwhile; then the client gets a 409 and retrieves the job as it now is)."""
    job = get_job(sessions, caller, job_id)
    if job.status not in allowed:
        raise APIError(400, f"Cannot {verb} job {job_id}: it is {job.status}.", code="invalid_job_status")
    values = allowed[job.status]
    with sessions.begin() as s:
        changed = s.execute(update(Job).where(Job.id == job_id, Job.status == job.status).values(**values)).rowcount
        if not changed:
            raise APIError(409, f"Job {job_id} changed status meanwhile; retrieve it and try again.", code="conflict")
        store.add_event(s, job_id, message)
    return job_public(get_job(sessions, caller, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(sessions: SessionDep, caller: CallerDep, job_id: str) -> JobPublic:
    """Cancel a job that has not finished; a running one stops at its next step."""
    cancel = {"status": CANCELLED, "finished_at": time.time(), "control": None}
    allowed = {s: cancel for s in (VALIDATING, QUEUED, RUNNING, PAUSED)}
    return change_status(sessions, caller, job_id, allowed, "cancel", "Job cancelled.")


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(sessions: SessionDep, caller: CallerDep, job_id: str) -> JobPublic:
    """Pause a job: a running job saves a checkpoint and stops (status `paused` once it has)."""
    allowed = {QUEUED: {"status": PAUSED}, VALIDATING: {"status": PAUSED}, RUNNING: {"control": "pause"}}
    return change_status(sessions, caller, job_id, allowed, "pause", "Pause requested.")


@router.post("/{job_id}/resume", response_model=JobPublic)
def resume_job(sessions: SessionDep, caller: CallerDep, job_id: str) -> JobPublic:
    """Resume a paused job: it goes back to the queue and continues from its last checkpoint."""
    allowed = {PAUSED: {"status": QUEUED}, RUNNING: {"control": None}}
    return change_status(sessions, caller, job_id, allowed, "resume", "Job resumed; it continues from its last checkpoint.")


def event_public(e: Event) -> dict:
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{e.seq}", "created_at": int(e.created_at),
            "level": e.level, "message": e.message, "data": e.data or {}, "type": e.type}


@router.get("/{job_id}/events")
def list_events(sessions: SessionDep, caller: CallerDep, job_id: str, after: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict:
    """Status changes, step metrics and warnings, newest first; `after` is an event id."""
    get_job(sessions, caller, job_id)
    query = select(Event).where(Event.job_id == job_id).order_by(Event.seq.desc())
    if after:
        seq = after.removeprefix("ftevent-")
        if not seq.isdigit():
            raise APIError(400, f"Invalid value for 'after': '{after}' is not an event id.", param="after")
        query = query.where(Event.seq < int(seq))
    with sessions() as s:
        rows = list(s.scalars(query.limit(limit + 1)))
    return list_page(rows, limit, event_public)


def checkpoint_public(c: Checkpoint) -> dict:
    m = c.metrics or {}
    metrics = {"step": c.step, "train_loss": m.get("train_loss"), "valid_loss": m.get("valid_loss"),
               "train_mean_token_accuracy": None, "valid_mean_token_accuracy": m.get("valid_accuracy"),
               "full_valid_loss": m.get("valid_loss"), "full_valid_mean_token_accuracy": None}
    return {"object": "fine_tuning.job.checkpoint", "id": c.id, "created_at": int(c.created_at),
            "fine_tuned_model_checkpoint": c.model, "fine_tuning_job_id": c.job_id, "metrics": metrics,
            "step_number": c.step}


@router.get("/{job_id}/checkpoints")
def list_checkpoints(sessions: SessionDep, caller: CallerDep, job_id: str, after: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict:
    """The checkpoints the job saved, with their metrics, newest first."""
    get_job(sessions, caller, job_id)
    with sessions() as s:
        rows = list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                              .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc())))
    return list_page(rows_after(rows, after), limit, checkpoint_public)
