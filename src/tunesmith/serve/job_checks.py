"""A fine-tuning job request checked as `POST /v1/fine_tuning/jobs` checks it; the preview
(`POST /v1/tunesmith/fine_tuning/preview`) runs the same checks without creating the job."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tunesmith.config import RunConfig
from tunesmith.domains import audit as trail
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.jobs.spec import (
    Judge,
    Resources,
    build_config,
    check_data_fits,
    server_overrides,
    stage_of,
)
from tunesmith.jobs.store import File, Model
from tunesmith.runs import RunDir
from tunesmith.serve import gate
from tunesmith.serve.deps import APIError, Caller, Settings, base_models, get_file
from tunesmith.serve.schemas import JobCreate


class CheckedJob(NamedTuple):
    method: dict
    training: File
    validation: File | None
    seed: int
    config: RunConfig
    overrides: dict
    """Server-side settings (reward functions, reward models, judges) the method names."""


def job_resources(settings: Settings) -> Resources:
    """The reward functions, reward models and judges the operator registered for jobs."""
    return Resources(dict(settings.reward_functions), dict(settings.reward_models),
                     {name: Judge(**judge) for name, judge in settings.judges.items()})


def own_reward_model(sessions: sessionmaker[Session], caller: Caller) -> Callable[[str], str | None]:
    """`id -> run folder` of the caller's own fine-tuned reward models (None for anything else)."""

    def find(model_id: str) -> str | None:
        with sessions() as s:
            m = s.scalar(select(Model).where(Model.id == model_id, Model.project == caller.project))
        if m is None or not RunDir(m.run_dir).exists:
            return None
        final = RunDir(m.run_dir).final
        return str(final.path) if final.stage == "reward" else None

    return find


def checked_job(sessions: sessionmaker[Session], settings: Settings, caller: Caller, body: JobCreate) -> CheckedJob:
    """The job request with every part checked as creating the job checks it; APIError names
    the first thing wrong. Only allow-listed hyperparameters are taken, and server resources
    only by the names the operator registered."""
    bases = base_models(settings)
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
    training = get_file(sessions, caller, body.training_file, "training_file")
    validation = get_file(sessions, caller, body.validation_file, "validation_file") if body.validation_file else None
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    try:
        stage = stage_of(method)
        overrides = server_overrides(method, job_resources(settings), own_reward_model(sessions, caller))
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
    return CheckedJob(method, training, validation, seed, config, overrides)


# --------------------------------------------------------------------------- domain packs


def audit_of(settings: Settings, caller: Caller) -> trail.Audit:
    """The service's audit trail (in its data folder), naming the caller's project and key."""
    return trail.Audit(trail.service_log(settings.data_dir), trail.api_actor(caller.project, caller.key_id))


def domain_check(app, sessions: sessionmaker[Session], settings: Settings, caller: Caller, f: File, domain: str,
                 param: str = "file_id") -> dict:
    """The data gate's summary of an uploaded file under `domain`'s compliance profile (its
    identifiers are errors), run in the gate process. Kept with the file (`info["domains"]`),
    so a file is checked once per pack; each new check is a `data_check` entry in the
    service's audit trail, whose id the summary names (`audit_entry`)."""
    cached = ((f.info or {}).get("domains") or {}).get(domain)
    if cached:
        return cached
    try:
        info = gate.check_upload_blocking(app, Path(f.path), f.filename, domain)
    except TunesmithError as exc:
        raise APIError(400, str(exc).replace(f.path, f.filename), param=param) from None
    facts = trail.file_facts(f.path, "uploaded") | {"path": f"{f.filename} ({f.id})"}  # never a server path
    entry = trail.record_check(domain, [facts], info.get("summary") or {}, {
        "file": f.id, "rows": info.get("rows"), "quality_score": info.get("quality_score"),
        "errors": len(info.get("errors") or [])}, audit=audit_of(settings, caller))
    info["audit_entry"] = entry["id"]
    with sessions.begin() as s:
        row = s.get(File, f.id)
        row.info = {**(row.info or {}), "domains": {**((row.info or {}).get("domains") or {}), domain: info}}
    return info


def check_domain_data(app, sessions: sessionmaker[Session], settings: Settings, caller: Caller, checked: CheckedJob) -> None:
    """A job under a domain pack trains only on a file that passes the pack's data gate (or with
    hyperparameter force); APIError otherwise, naming the fix that redacts the identifiers."""
    domain = checked.config.domain
    if not domain:
        return
    info = domain_check(app, sessions, settings, caller, checked.training, domain, param="training_file")
    errors = info.get("errors") or []
    if errors and not checked.config.data.force:
        raise APIError(400, f"{checked.training.id} fails the {domain} pack's data gate ({errors[0]}); POST "
                       f"/v1/tunesmith/files/{checked.training.id}/fix?domain={domain} writes a copy with the identifiers "
                       "redacted, or set hyperparameter force=true to train anyway.", param="training_file",
                       code="invalid_training_file")
