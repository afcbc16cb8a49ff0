"""The project's fine-tuned models as tunesmith shows them (before/after metrics, alarms, the
weights there are), and their weights or exports to download: with the API key, or with a
signed link that a browser can follow without one. Under /v1/tunesmith/models.

An export (gguf, ollama, onnx) is built and verified on the first request for it (see
`export.build`), then kept in the run folder; its zip holds the verification's report.json."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import zipfile
from pathlib import Path
from typing import Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from sqlalchemy import select

from tunesmith.evaluate.card import refresh_card
from tunesmith.evaluate.report import alarms
from tunesmith.export.build import export_run
from tunesmith.export.hf import export_hf
from tunesmith.jobs.store import Model
from tunesmith.runs import RunDir
from tunesmith.serve.deps import (
    APIError,
    Caller,
    CallerDep,
    SessionDep,
    Settings,
    SettingsDep,
    authenticate,
    get_model,
    scoped,
)
from tunesmith.train.common import PROMPT_LEARNING

router = APIRouter(prefix="/tunesmith/models", tags=["tunesmith"])

Weights = Literal["adapter", "merged", "full", "gguf", "ollama", "onnx"]
EXPORTS = ("gguf", "ollama", "onnx")  # built by `export_run`, verified, on the first request
LINK_SECONDS = 600


def final_of(model: Model) -> RunDir:
    """The run folder holding the model's final weights (its last stage's, for a multi-stage run)."""
    run = RunDir(model.run_dir)
    return run.final if run.exists else run


def weights_of(model: Model) -> list[str]:
    """What can be downloaded: `adapter` and `merged` for an adapter run (prompt learning:
    the adapter only), `full` for a full fine-tune; then the exports the model can take: GGUF
    and Ollama for a language model, ONNX for a language model or a classifier."""
    final = final_of(model)
    if final.full_weights:
        weights = ["full"]
    elif not final.adapter:
        return []
    elif final.config.method.adapter in PROMPT_LEARNING:
        return ["adapter"]
    else:
        weights = ["adapter", "merged"]
    stage = final.stage
    return weights + (["onnx"] if stage == "classify" else [] if stage == "reward" else list(EXPORTS))


def model_details(model: Model) -> dict:
    final = final_of(model)
    config = final.config if final.exists else None
    results = RunDir(model.run_dir).results()
    return {
        "id": model.id, "object": "model", "created": int(model.created_at), "owned_by": model.project,
        "base": model.base, "job": model.job_id,
        "method": config.method.stages[-1] if config else None, "adapter": config.method.adapter if config else None,
        "metrics": results.metrics if results else None,
        "test_rows": results.test.rows if results else None,
        "alarms": alarms(results, model.run_dir) if results else [],
        "weights": weights_of(model),
    }


@router.get("")
def list_tuned_models(sessions: SessionDep, caller: CallerDep) -> dict:
    """The project's fine-tuned models, newest first, each with its before/after metrics, its
    alarms and the weights that can be downloaded."""
    with sessions() as s:
        rows = list(s.scalars(scoped(select(Model), Model, caller).order_by(Model.created_at.desc())))
    return {"object": "list", "data": [model_details(m) for m in rows]}


def weights_archive(model: Model, weights: str) -> Path:
    """A zip of a model's weights (with its model card as README.md), built on the first
    request and kept in the run folder, so deleting the model deletes it too."""
    available = weights_of(model)
    if weights not in available:
        have = ", ".join(available) or "nothing yet"
        raise APIError(400, f"{model.id} has no {weights} weights to download; it has: {have}.", param="weights")
    run, final = RunDir(model.run_dir), final_of(model)
    out = run.exports / f"{weights}.zip"
    if out.exists():
        return out
    folder = {"adapter": lambda: final.adapter, "full": lambda: final.full_weights,
              "merged": lambda: export_hf(run.path, run.exports / "hf"),
              **{fmt: lambda fmt=fmt: _export(run.path, fmt) for fmt in EXPORTS}}[weights]()
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(f".tmp-{secrets.token_hex(4)}")
    name = model.id.replace(":", "-")
    card = run.model_card_file
    with zipfile.ZipFile(tmp, "w") as z:
        for item in sorted(p for p in folder.rglob("*") if p.is_file()):
            if item == folder / "README.md" and card.exists():
                continue  # PEFT's template README: the model card replaces it
            # Weights hardly compress; the small text files do.
            kind = zipfile.ZIP_STORED if item.suffix in (".safetensors", ".bin", ".pt", ".gguf", ".onnx") else zipfile.ZIP_DEFLATED
            z.write(item, f"{name}/{item.relative_to(folder)}", compress_type=kind)
        if card.exists():
            z.write(card, f"{name}/README.md", compress_type=zipfile.ZIP_DEFLATED)
    tmp.replace(out)
    return out


def _export(run: Path, fmt: str) -> Path:
    """Export and verify the run in `fmt` (its default type), then write its model card again with
    the new deployment figures. Returns the export's folder."""
    folder = Path(export_run(run, fmt)["folder"])
    refresh_card(run)
    return folder


def link_key(settings: Settings) -> bytes:
    """The secret download links are signed with: made once per data folder, so links work
    on every server sharing it and after a restart."""
    path = settings.data_dir / "download.key"
    if not path.exists():
        tmp = path.with_suffix(f".tmp-{secrets.token_hex(4)}")
        tmp.write_bytes(secrets.token_bytes(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_bytes()


def link_signature(settings: Settings, model: str, weights: str, expires: int) -> str:
    return hmac.new(link_key(settings), f"{model}\n{weights}\n{expires}".encode(), hashlib.sha256).hexdigest()


@router.post("/download_link")
def create_download_link(sessions: SessionDep, settings: SettingsDep, caller: CallerDep, model: str,
                         weights: Weights = "adapter") -> dict:
    """A link that downloads a model's weights without the API key (a browser cannot send
    one with a plain link), valid for ten minutes; the zip is built now, so the link
    answers at once."""
    m = get_model(sessions, caller, model)
    weights_archive(m, weights)
    expires = int(time.time()) + LINK_SECONDS
    query = urlencode({"model": m.id, "weights": weights, "expires": expires,
                       "signature": link_signature(settings, m.id, weights, expires)})
    return {"url": f"/v1/tunesmith/models/download?{query}", "expires_at": expires}


@router.get("/download")
def download_weights(request: Request, sessions: SessionDep, settings: SettingsDep, model: str,
                     weights: Weights = "adapter", expires: int | None = None,
                     signature: str | None = None) -> FileResponse:
    """A model's weights as a zip: with the API key, or with a link from `POST /v1/tunesmith/models/download_link`."""
    if signature is None:
        # No CallerDep: a signed link works without a key, so the key is checked only without one.
        m = get_model(sessions, authenticate(request, sessions), model)
    else:
        good = expires is not None and hmac.compare_digest(
            signature.encode(), link_signature(settings, model, weights, expires).encode())
        if not good:
            raise APIError(403, "This download link is not valid; ask for a new one.", code="invalid_link")
        if expires < time.time():
            raise APIError(403, "This download link has expired; ask for a new one.", code="link_expired")
        m = get_model(sessions, Caller("", admin=True), model)
    return FileResponse(weights_archive(m, weights), filename=f"{m.id.replace(':', '-')}-{weights}.zip",
                        media_type="application/zip")
