"""tunesmith's own routes beside OpenAI's, for the web UI and scripts: who the key is, what
the base models and methods are, safe fixes for an uploaded file, what a job's "auto"
values resolve to before it starts, fine-tuned models with their metrics, and their weights
to download. Under /v1/tunesmith/, with the same keys and errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from sqlalchemy import select

from tunesmith.config import load_config
from tunesmith.data.quality import fix_data
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.evaluate.report import alarms
from tunesmith.export.merge import save_merged
from tunesmith.jobs import store
from tunesmith.jobs.spec import resolved_settings
from tunesmith.jobs.store import File, Model
from tunesmith.models import BUILTIN_MODELS
from tunesmith.runs import ADAPTER_DIR, MODEL_DIR, final_stage_dir, is_run_dir
from tunesmith.serve import gate
from tunesmith.serve.deps import APIError, Caller, CallerDep, authenticate
from tunesmith.serve.openai_api import (
    JobCreate,
    _get_file,
    _get_model,
    _scoped,
    _sessions,
    base_models,
    checked_job,
    file_public,
    resources,
)
from tunesmith.train.auto import hardware
from tunesmith.train.common import PROMPT_LEARNING
from tunesmith.train.stages import preview

platform = APIRouter(prefix="/tunesmith", tags=["tunesmith"])

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


@platform.get("/me")
def me(caller: CallerDep) -> dict:
    """The project the key belongs to, and whether it is an admin key."""
    return {"project": caller.project, "admin": caller.admin}


@platform.get("/base_models")
def base_models_info(request: Request, caller: CallerDep) -> dict:
    """Base models a job can start from, with what is known of each (size, licence)."""
    data = []
    for name, source in base_models(request).items():
        info = BUILTIN_MODELS.get(name)
        data.append({"id": name, "description": info.description if info else f"local model ({name})",
                     "params": info.params if info else None, "licence": info.licence if info else "see the model folder",
                     "builtin": info is not None})
    # Names only: what an RL job may name as reward_functions, reward_model and judge.
    return {"object": "list", "data": data, "methods": METHODS, "adapters": ADAPTERS, "rewards": resources(request).names()}


# --------------------------------------------------------------------------- safe fixes


@platform.post("/files/{file_id}/fix")
def fix_file(request: Request, caller: CallerDep, file_id: str) -> dict:
    """Apply the data gate's safe fixes to an uploaded file (drop exact duplicates and rows
    without an answer, strip control characters and HTML, redact personal data) and store
    the cleaned copy as a new file, checked again; the original stays as it was."""
    f = _get_file(request, caller, file_id)
    if f.purpose != "fine-tune":
        raise APIError(400, f"{file_id} has purpose '{f.purpose}'; only training data (purpose 'fine-tune') can be fixed.",
                       param="file_id")
    new_id = store.new_id("file")
    path = request.app.state.settings.data_dir / "files" / f"{new_id}.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = fix_data(f.path, Path(tmp) / "clean.jsonl")
        except TunesmithError as exc:
            raise APIError(400, str(exc).replace(f.path, f.filename), param="file_id") from None
        if result.dropped + result.redacted + result.changed == 0:
            raise APIError(400, f"{f.filename}: the safe fixes change nothing in this file; what the data card reports "
                           "needs editing by hand.", param="file_id", code="nothing_to_fix")
        if result.rows_out == 0:
            raise APIError(400, f"{f.filename}: the safe fixes would drop every row; fix the file by hand.",
                           param="file_id", code="nothing_left")
        log = [json.loads(line) for line in Path(result.log_path).read_text().splitlines()[:200]]
        shutil.move(result.out_path, path)
    filename = f"{Path(f.filename).stem}.clean.jsonl"
    stored = False
    try:
        try:
            # In the gate's process, with its time limit, as an upload is checked.
            info = gate.check_upload_blocking(request.app, path, filename)
        except TunesmithError as exc:
            raise APIError(400, str(exc).replace(str(path), filename), param="file_id") from None
        info["fixed_from"] = f.id
        info["fixes"] = {"rows_in": result.rows_in, "rows_out": result.rows_out, "dropped": result.dropped,
                         "redacted": result.redacted, "changed": result.changed, "log": log}
        new = File(id=new_id, project=caller.project, filename=filename, purpose="fine-tune",
                   bytes=path.stat().st_size, path=str(path), info=info)
        with _sessions(request).begin() as s:
            s.add(new)
        stored = True
    finally:
        if not stored:  # refused, timed out or failed: no orphan file
            path.unlink(missing_ok=True)
    return file_public(new).model_dump()


# --------------------------------------------------------------------------- preview of a job


@platform.post("/fine_tuning/preview")
def preview_job(request: Request, caller: CallerDep, body: JobCreate) -> dict:
    """What a job request's "auto" values resolve to, and why, without creating the job: the
    request is checked as `POST /v1/fine_tuning/jobs` checks it. Values that depend on the
    hardware are this server's; a worker on other hardware resolves them again."""
    *_, config, _overrides = checked_job(request, caller, body)
    try:
        resolved = preview(config)
    except TunesmithError as exc:
        message = str(exc).replace(config.data.train, body.training_file)
        raise APIError(400, message, param="method" if isinstance(exc, ConfigError) else "training_file") from None
    hw = hardware()
    where = f"{hw['name']}, {hw['memory_gb']:.0f} GB" if hw["device"] == "cuda" else f"CPU, {hw['threads']} thread{'s' * (hw['threads'] != 1)}"
    return {"object": "fine_tuning.preview", "resolved": resolved_settings(resolved), "hardware": where}


# --------------------------------------------------------------------------- fine-tuned models


def _final(model: Model) -> Path:
    run = Path(model.run_dir)
    return final_stage_dir(run) if is_run_dir(run) else run


def _weights(model: Model) -> list[str]:
    """What can be downloaded: `adapter` and `merged` for an adapter run (prompt learning:
    the adapter only), `full` for a full fine-tune."""
    final = _final(model)
    if (final / MODEL_DIR).is_dir():
        return ["full"]
    if not (final / ADAPTER_DIR).is_dir():
        return []
    return ["adapter"] if load_config(final / "config.yaml").method.adapter in PROMPT_LEARNING else ["adapter", "merged"]


def model_details(model: Model) -> dict:
    final = _final(model)
    config = load_config(final / "config.yaml") if (final / "config.yaml").exists() else None
    results_path = Path(model.run_dir) / "eval" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    return {
        "id": model.id, "object": "model", "created": int(model.created_at), "owned_by": model.project,
        "base": model.base, "job": model.job_id,
        "method": config.method.stages[-1] if config else None, "adapter": config.method.adapter if config else None,
        "metrics": results["metrics"] if results else None,
        "test_rows": results["test"]["rows"] if results else None,
        "alarms": alarms(results, model.run_dir) if results else [],
        "weights": _weights(model),
    }


@platform.get("/models")
def list_tuned_models(request: Request, caller: CallerDep) -> dict:
    """The project's fine-tuned models, newest first, each with its before/after metrics, its
    alarms and the weights that can be downloaded."""
    with _sessions(request)() as s:
        rows = list(s.scalars(_scoped(select(Model), Model, caller).order_by(Model.created_at.desc())))
    return {"object": "list", "data": [model_details(m) for m in rows]}


# --------------------------------------------------------------------------- downloads

Weights = Literal["adapter", "merged", "full"]
LINK_SECONDS = 600


def weights_archive(model: Model, weights: str) -> Path:
    """A zip of a model's weights (with its model card as README.md), built on the first
    request and kept in the run folder, so deleting the model deletes it too."""
    available = _weights(model)
    if weights not in available:
        have = ", ".join(available) or "nothing yet"
        raise APIError(400, f"{model.id} has no {weights} weights to download; it has: {have}.", param="weights")
    final = _final(model)
    out = Path(model.run_dir) / "exports" / f"{weights}.zip"
    if out.exists():
        return out
    folder = {"adapter": lambda: final / ADAPTER_DIR, "full": lambda: final / MODEL_DIR, "merged": lambda: save_merged(final)}[weights]()
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(f".tmp-{secrets.token_hex(4)}")
    name = model.id.replace(":", "-")
    card = Path(model.run_dir) / "MODEL_CARD.md"
    with zipfile.ZipFile(tmp, "w") as z:
        for item in sorted(p for p in folder.rglob("*") if p.is_file()):
            if item == folder / "README.md" and card.exists():
                continue  # PEFT's template README: the model card replaces it
            # Weights hardly compress; the small text files do.
            kind = zipfile.ZIP_STORED if item.suffix in (".safetensors", ".bin", ".pt") else zipfile.ZIP_DEFLATED
            z.write(item, f"{name}/{item.relative_to(folder)}", compress_type=kind)
        if card.exists():
            z.write(card, f"{name}/README.md", compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(out)
    return out


def _link_key(request: Request) -> bytes:
    """The secret download links are signed with: made once per data folder, so links work
    on every server sharing it and after a restart."""
    path = request.app.state.settings.data_dir / "download.key"
    if not path.exists():
        tmp = path.with_suffix(f".tmp-{secrets.token_hex(4)}")
        tmp.write_bytes(secrets.token_bytes(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_bytes()


def _signature(request: Request, model: str, weights: str, expires: int) -> str:
    return hmac.new(_link_key(request), f"{model}\n{weights}\n{expires}".encode(), hashlib.sha256).hexdigest()


@platform.post("/models/download_link")
def download_link(request: Request, caller: CallerDep, model: str, weights: Weights = "adapter") -> dict:
    """A link that downloads a model's weights without the API key (a browser cannot send
    one with a plain link), valid for ten minutes; the zip is built now, so the link
    answers at once."""
    m = _get_model(request, caller, model)
    weights_archive(m, weights)
    expires = int(time.time()) + LINK_SECONDS
    query = urlencode({"model": m.id, "weights": weights, "expires": expires,
                       "signature": _signature(request, m.id, weights, expires)})
    return {"url": f"/v1/tunesmith/models/download?{query}", "expires_at": expires}


@platform.get("/models/download")
def download_weights(request: Request, model: str, weights: Weights = "adapter", expires: int | None = None,
                     signature: str | None = None) -> FileResponse:
    """A model's weights as a zip: with the API key, or with a link from `download_link`."""
    if signature is None:
        m = _get_model(request, authenticate(request), model)
    else:
        good = expires is not None and hmac.compare_digest(signature.encode(), _signature(request, model, weights, expires).encode())
        if not good:
            raise APIError(403, "This download link is not valid; ask for a new one.", code="invalid_link")
        if expires < time.time():
            raise APIError(403, "This download link has expired; ask for a new one.", code="link_expired")
        m = _get_model(request, Caller("", admin=True), model)
    return FileResponse(weights_archive(m, weights), filename=f"{m.id.replace(':', '-')}-{weights}.zip",
                        media_type="application/zip")
