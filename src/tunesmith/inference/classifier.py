"""A finished classification run as a labeller: load it (base + adapter with its head, or
full weights) and label texts with probabilities; with the confidence threshold its
evaluation calibrated (`RUN/abstention.json`), refer the texts below it to a person.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.domains.packs import REFER
from tunesmith.errors import ModelError
from tunesmith.models import load_model
from tunesmith.runs import RunDir


@dataclass
class Classifier:
    model: object
    tokenizer: object
    labels: list[str]
    max_length: int


def load_classifier(run: str | Path) -> Classifier:
    """Load a finished classification run (base + adapter with its head, or full weights)."""
    top = RunDir(Path(run))
    if not top.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    final = top.final
    labels = final.labels
    if final.stage != "classify" or labels is None:
        raise ModelError(f"{run} is not a classification run; use `tunesmith generate {run}` for a generative one.")
    head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}}
    model, tokenizer = load_head_model(final, **head)
    return Classifier(model, tokenizer, labels, int(final.config.train.max_length))


def load_head_model(run: RunDir, **head):
    """(model, tokenizer) of a finished run with a sequence-classification head (a classifier
    or a reward model): full weights, or the base with the adapter and head merged in."""
    from transformers import AutoTokenizer

    if run.full_weights:
        model = load_model(str(run.full_weights), head="classify")
    elif run.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(run.config.model.name, head="classify", **head), run.adapter)
        if not model.peft_config["default"].is_prompt_learning:
            model = model.merge_and_unload()
    else:
        raise ModelError(f"{run.path} has no trained weights yet; finish it with `tunesmith train --resume {run.path}`.")
    weights = run.weights
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def predict(classifier: Classifier, texts: list[str], batch_size: int = 32, top_k: int = 3, on_batch=None) -> list[dict]:
    """Label each text: `{"label", "probability", "top": [[label, probability], ...]}`."""
    import torch

    c = classifier
    # Texts of similar length are scored together, so batches carry little padding.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[dict | None] = [None] * len(texts)
    for start in range(0, len(texts), batch_size):
        indices = order[start : start + batch_size]
        batch = [texts[i] for i in indices]
        enc = c.tokenizer(batch, truncation=True, max_length=c.max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            probs = torch.softmax(c.model(**enc.to(c.model.device)).logits.float(), dim=-1)
        values, top_ids = probs.topk(min(top_k, len(c.labels)), dim=-1)
        for row, v, ids in zip(indices, values.tolist(), top_ids.tolist()):
            top = [[c.labels[j], round(p, 6)] for j, p in zip(ids, v)]
            out[row] = {"label": top[0][0], "probability": top[0][1], "top": top}
        if on_batch:
            on_batch(len(batch))
    return out


# --------------------------------------------------------------------------- abstention


def load_threshold(run: str | Path) -> float | None:
    """The confidence threshold the run's evaluation calibrated (`RUN/abstention.json`,
    written by `evaluate.abstention`), or None when it has none."""
    path = RunDir(Path(run)).abstention_file
    try:
        threshold = json.loads(path.read_text())["threshold"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(threshold) if isinstance(threshold, (int, float)) else None


def abstain(prediction: dict, threshold: float | None) -> dict:
    """A `predict` result with the threshold applied: `{"label", "predicted", "confidence",
    "threshold", "referred"}`; label is "refer to a person" when the confidence is below the
    threshold (never without one), else the predicted label."""
    confidence = float(prediction["probability"])
    referred = threshold is not None and confidence < threshold
    return {"label": REFER if referred else prediction["label"], "predicted": prediction["label"],
            "confidence": confidence, "threshold": threshold, "referred": referred}
