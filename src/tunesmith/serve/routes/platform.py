"""tunesmith's own routes beside OpenAI's, for the web UI and scripts: who the key is, what
the base models and methods are, safe fixes for an uploaded file, and what a job's "auto"
values resolve to before it starts. Under /v1/tunesmith/, with the same keys and errors;
fine-tuned models and their downloads are in tuned_models.py."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from tunesmith.data.quality import fix_data
from tunesmith.domains import audit as trail
from tunesmith.domains.catalog import catalog
from tunesmith.domains.packs import get_domain
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.jobs import store
from tunesmith.jobs.spec import resolved_settings
from tunesmith.jobs.store import File
from tunesmith.models import BUILTIN_MODELS
from tunesmith.serve import gate
from tunesmith.serve.deps import (
    APIError,
    CallerDep,
    SessionDep,
    SettingsDep,
    base_models,
    get_file,
)
from tunesmith.serve.job_checks import (
    audit_of,
    check_domain_data,
    checked_job,
    domain_check,
    job_resources,
)
from tunesmith.serve.schemas import JobCreate, file_public
from tunesmith.train.auto import hardware
from tunesmith.train.stages import preview

router = APIRouter(prefix="/tunesmith", tags=["tunesmith"])

# One line per method, for people choosing one (the web UI shows them).
METHODS = {
    "supervised": "Learn to answer like your examples (chat or instruction data); LoRA adapter by default.",
    "classify": "Add a classification head: text in, one of your labels out. Best for text+label data.",
    "pretrain": "Continued pretraining on raw domain text, so the model learns your vocabulary.",
    "dpo": "Prefer the chosen answer over the rejected one (preference pairs), without a reward model.",
    "orpo": "Supervised learning and preference in one pass (preference pairs), no reference model.",
    "simpo": "A lighter DPO that needs no reference model (preference pairs).",
    "kto": "Learn from thumbs-up/down answers that need not come in pairs.",
    "reward": "Train a reward model that scores answers (preference pairs), for RL later.",
}
ADAPTERS = {
    "lora": "Small low-rank adapters on every linear layer: fast, light, the default.",
    "dora": "LoRA with a learned magnitude per output: sometimes better at the same size.",
    "full": "Train every weight: most capacity, most memory, most forgetting.",
    "ia3": "Learned scaling vectors only: the smallest adapter.",
    "prompt": "Learned virtual tokens at the input: tiny, weaker.",
}


@router.get("/me")
def read_me(caller: CallerDep) -> dict:
    """The project the key belongs to, and whether it is an admin key."""
    return {"project": caller.project, "admin": caller.admin}


@router.get("/base_models")
def list_base_models(settings: SettingsDep, caller: CallerDep) -> dict:
    """Base models a job can start from, with what is known of each (size, licence)."""
    data = []
    for name in base_models(settings):
        info = BUILTIN_MODELS.get(name)
        data.append({"id": name, "description": info.description if info else f"local model ({name})",
                     "params": info.params if info else None, "licence": info.licence if info else "see the model folder",
                     "builtin": info is not None})
    # Names only: what an RL job may name as reward_functions, reward_model and judge.
    return {"object": "list", "data": data, "methods": METHODS, "adapters": ADAPTERS,
            "rewards": job_resources(settings).names()}


Domain = Literal["legal", "medical", "finance", "support"]


@router.get("/domains")
def list_domains(caller: CallerDep) -> dict:
    """The domain packs a job can name (hyperparameters `domain` and `template`): each one's
    compliance profile (regulation, identifier kinds), task templates (task, system prompt,
    label set), safety probes, bias swaps and the model card's regulated-use text."""
    return {"object": "list", "data": catalog(commands=False)}


class DomainCheck(BaseModel):
    domain: Domain
    """The pack whose compliance profile the data gate applies (`GET /v1/tunesmith/domains`)."""


@router.post("/files/{file_id}/check")
def check_file(request: Request, sessions: SessionDep, settings: SettingsDep, caller: CallerDep, file_id: str,
               body: DomainCheck) -> dict:
    """Run the data gate on an uploaded file under a domain pack's compliance profile: the
    identifiers it names are errors. The result is kept with the file (a job under the pack
    reuses it) and written to the service's audit trail with your project and key."""
    f = get_file(sessions, caller, file_id)
    if f.purpose != "fine-tune":
        raise APIError(400, f"{file_id} has purpose '{f.purpose}'; only training data (purpose 'fine-tune') is checked.",
                       param="file_id")
    info = domain_check(request.app, sessions, settings, caller, f, body.domain)
    return {"object": "tunesmith.data_check", "file": f.id} | info


@router.post("/files/{file_id}/fix")
def fix_file(request: Request, sessions: SessionDep, settings: SettingsDep, caller: CallerDep, file_id: str,
             domain: Domain | None = None) -> dict:
    """Apply the data gate's safe fixes to an uploaded file (drop exact duplicates and rows
    without an answer, strip control characters and HTML, redact personal data) and store
    the cleaned copy as a new file, checked again; the original stays as it was. With
    `domain`, the identifiers of the pack's compliance profile are redacted too, the copy is
    checked under the pack, and the fix is written to the audit trail."""
    f = get_file(sessions, caller, file_id)
    if f.purpose != "fine-tune":
        raise APIError(400, f"{file_id} has purpose '{f.purpose}'; only training data (purpose 'fine-tune') can be fixed.",
                       param="file_id")
    new_id = store.new_id("file")
    path = settings.files_dir / f"{new_id}.jsonl"
    profile = {"profile": get_domain(domain).profile} if domain else {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = fix_data(f.path, Path(tmp) / "clean.jsonl", **profile)
        except TunesmithError as exc:
            raise APIError(400, str(exc).replace(f.path, f.filename), param="file_id") from None
        if result.dropped + result.redacted + result.changed == 0:
            raise APIError(400, f"{f.filename}: the safe fixes change nothing in this file; what the data card reports "
                           "needs editing by hand.", param="file_id", code="nothing_to_fix")
        if result.rows_out == 0:
            raise APIError(400, f"{f.filename}: the safe fixes would drop every row; fix the file by hand.",
                           param="file_id", code="nothing_left")
        log = [json.loads(line) for line in Path(result.log_path).read_text().splitlines()[:200]]
        redactions = trail.redactions_from_log(result.log_path)
        shutil.move(result.out_path, path)
    filename = f"{Path(f.filename).stem}.clean.jsonl"
    stored = False
    try:
        try:
            # In the gate's process, with its time limit, as an upload is checked (the gate keeps
            # its process on the app's state, so it takes the app).
            info = gate.check_upload_blocking(request.app, path, filename, domain)
        except TunesmithError as exc:
            raise APIError(400, str(exc).replace(str(path), filename), param="file_id") from None
        info["fixed_from"] = f.id
        info["fixes"] = {"rows_in": result.rows_in, "rows_out": result.rows_out, "dropped": result.dropped,
                         "redacted": result.redacted, "changed": result.changed, "log": log}
        if domain:
            # The copy is checked under the pack already: a job on it reuses that check.
            entry = trail.record_check(domain, [
                trail.file_facts(f.path, "uploaded") | {"path": f"{f.filename} ({f.id})"},
                trail.file_facts(path, "fixed") | {"path": f"{filename} ({new_id})"},
            ], info.get("summary") or {}, {"file": new_id, "fixed_from": f.id, "rows": info.get("rows"),
                                           "errors": len(info.get("errors") or []),
                                           "fixes": {k: v for k, v in info["fixes"].items() if k != "log"}},
                audit=audit_of(settings, caller), redactions=redactions)
            entry_info = {k: v for k, v in info.items() if k not in ("fixed_from", "fixes")}
            info["domains"] = {domain: entry_info | {"audit_entry": entry["id"]}}
            info["fixes"]["redactions"] = redactions
        new = File(id=new_id, project=caller.project, filename=filename, purpose="fine-tune",
                   bytes=path.stat().st_size, path=str(path), info=info)
        with sessions.begin() as s:
            s.add(new)
        stored = True
    finally:
        if not stored:  # refused, timed out or failed: no orphan file
            path.unlink(missing_ok=True)
    return file_public(new).model_dump()


@router.post("/fine_tuning/preview")
def preview_job(request: Request, sessions: SessionDep, settings: SettingsDep, caller: CallerDep, body: JobCreate) -> dict:
    """What a job request's "auto" values resolve to, and why, without creating the job: the
    request is checked as `POST /v1/fine_tuning/jobs` checks it. Values that depend on the
    hardware are this server's; a worker on other hardware resolves them again."""
    checked = checked_job(sessions, settings, caller, body)
    check_domain_data(request.app, sessions, settings, caller, checked)
    config = checked.config
    try:
        resolved = preview(config)
    except TunesmithError as exc:
        message = str(exc).replace(config.data.train, body.training_file)
        raise APIError(400, message, param="method" if isinstance(exc, ConfigError) else "training_file") from None
    hw = hardware()
    where = f"{hw['name']}, {hw['memory_gb']:.0f} GB" if hw["device"] == "cuda" else f"CPU, {hw['threads']} thread{'s' * (hw['threads'] != 1)}"
    return {"object": "fine_tuning.preview", "resolved": resolved_settings(resolved), "hardware": where}
