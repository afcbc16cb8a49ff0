"""tunesmith's own routes beside OpenAI's, for the web UI and scripts: who the key is, and
what the base models and methods are. Under /v1/tunesmith/, with the same keys and errors."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunesmith.serve.app import CallerDep

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
    from tunesmith.models import BUILTIN_MODELS
    from tunesmith.serve.openai_api import base_models

    data = []
    for name, source in base_models(request).items():
        info = BUILTIN_MODELS.get(name)
        data.append({"id": name, "description": info.description if info else f"local model ({name})",
                     "params": info.params if info else None, "licence": info.licence if info else "see the model folder",
                     "builtin": info is not None})
    return {"object": "list", "data": data, "methods": METHODS, "adapters": ADAPTERS}
