"""OpenAI's models: the base models this server offers and the project's fine-tuned ones, as
OpenAI lists them (tunesmith's richer view is `/v1/tunesmith/models`)."""

from __future__ import annotations

import shutil

from fastapi import APIRouter
from sqlalchemy import select

from tunesmith.jobs.store import Model
from tunesmith.serve.deps import (
    APIError,
    CallerDep,
    LoadedEngineDep,
    SessionDep,
    SettingsDep,
    base_models,
    get_model,
    scoped,
)

router = APIRouter(prefix="/models", tags=["models"])

BASE_CREATED = 1730000000  # a fixed date for built-in models, which have no creation time here


def model_public(model_id: str, created: float, owner: str) -> dict:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": owner}


@router.get("")
def list_models(sessions: SessionDep, settings: SettingsDep, caller: CallerDep) -> dict:
    """Base models and the project's fine-tuned models."""
    data = [model_public(name, BASE_CREATED, "tunesmith") for name in base_models(settings)]
    with sessions() as s:
        data += [model_public(m.id, m.created_at, m.project)
                 for m in s.scalars(scoped(select(Model), Model, caller).order_by(Model.created_at))]
    return {"object": "list", "data": data}


@router.get("/{model_id:path}")
def retrieve_model(sessions: SessionDep, settings: SettingsDep, caller: CallerDep, model_id: str) -> dict:
    if model_id in base_models(settings):
        return model_public(model_id, BASE_CREATED, "tunesmith")
    m = get_model(sessions, caller, model_id)
    return model_public(m.id, m.created_at, m.project)


@router.delete("/{model_id:path}")
def delete_model(sessions: SessionDep, settings: SettingsDep, caller: CallerDep, engine: LoadedEngineDep,
                 model_id: str) -> dict:
    """Delete a fine-tuned model: it is no longer served and its weights are removed."""
    if model_id in base_models(settings):
        raise APIError(403, f"'{model_id}' is a base model; only fine-tuned models can be deleted.", param="model")
    m = get_model(sessions, caller, model_id)
    with sessions.begin() as s:
        s.delete(s.get(Model, m.id))
    if engine is not None:
        engine.unload(m.id)
    shutil.rmtree(m.run_dir, ignore_errors=True)
    return {"id": m.id, "object": "model", "deleted": True}
