"""Classification: a sequence-classification head on the decoder, trained with an adapter
(LoRA by default) plus the head, or fully.

Reads top to bottom: load text+label rows, fix the label set, split, resolve "auto"
settings, tokenize, build the model with a new head, train with the Trainer (accuracy and
macro-F1 on validation, early stopping on the chosen metric), save. `predict` loads a
finished run and labels new text with probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import RunConfig, load_config
from tunesmith.errors import DataError, ModelError
from tunesmith.train.common import (
    ADAPTER_DIR,
    MODEL_DIR,
    begin_run,
    common_args,
    gate_data,
    load_base,
    run_callbacks,
    save_weights,
    split_validation,
    start_run,
    trainable_parameters,
    training_data,
    wrap_model,
    write_summary,
)
from tunesmith.train.distributed import is_main_process

LABELS_FILE = "labels.json"


def load_labelled(path: str, columns: dict | None = None) -> list[dict]:
    """Text+label rows ({"text", "label"}) of a data file."""
    from tunesmith.data.formats import load_data

    data = load_data(path, columns=columns)
    if data.task != "classify":
        raise DataError(
            f"{path}: classification needs text+label rows, but the file holds {data.task} data "
            f"({data.format.value}); give a file with text and label columns, or name them with --columns text=...,label=...."
        )
    return data.records


def metrics(eval_pred) -> dict:
    """Accuracy and macro-F1 (every class counts the same, so rare intents are not ignored)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    predicted = np.argmax(logits, axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def train_classify(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> dict:
    """Train a classifier from `config.data.train` (text+label rows) into `run_dir`.
    Returns a summary dict (also written to `run.json`) with validation accuracy and macro-F1."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from tunesmith.models import load_tokenizer
    from tunesmith.train.auto import resolve

    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    # Data: the label set comes from the training rows; validation labels must be among them.
    config, train_data = training_data(config)
    rows = load_labelled(train_data)
    val_rows = load_labelled(config.data.validation, config.data.columns) if config.data.validation else None
    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer, task="classify")
    config = resolve(config, rows, tokenizer, val_rows is not None, kind="classify")
    if val_rows is None:
        rows, val_rows = split_validation(rows, float(config.data.validation_split), config.train.seed)
    labels = sorted({r["label"] for r in rows})
    if len(labels) < 2:
        raise DataError(f"{config.data.train}: classification needs at least two labels, found {labels}.")
    unseen = sorted({r["label"] for r in val_rows} - set(labels))
    if unseen:
        raise DataError(
            f"{config.data.validation or config.data.train}: validation labels {unseen[:5]} never occur in the training "
            "rows; add training examples for them or remove them."
        )
    label2id = {label: i for i, label in enumerate(labels)}
    max_length = int(config.train.max_length)

    def encode(batch: list[dict]) -> list[dict]:
        enc = tokenizer([r["text"] for r in batch], truncation=True, max_length=max_length)
        return [{"input_ids": ids, "label": label2id[r["label"]]} for ids, r in zip(enc["input_ids"], batch)]

    train_examples, val_examples = encode(rows), encode(val_rows)

    begin_run(config, run_dir, card)
    if is_main_process():
        (run_dir / LABELS_FILE).write_text(json.dumps(labels, indent=1, ensure_ascii=False))

    model = load_base(
        config, head="classify", num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    model = wrap_model(model, config, "SEQ_CLS", run_dir, resume)
    trainable, total = trainable_parameters(model)
    has_eval = bool(val_examples)
    callbacks = run_callbacks(config, run_dir, has_eval, callbacks)
    args = TrainingArguments(
        **common_args(config, run_dir, has_eval),
        include_num_input_tokens_seen="non_padding",
        # Batches of similar length waste little compute on padding.
        train_sampling_strategy="group_by_length",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples) if has_eval else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    # The restored best model's figures (predict, unlike evaluate, adds no line to the log).
    final = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval").metrics if has_eval else {}
    summary = {
        "task": "classify",
        "base_model": config.model.name,
        "method": config.method.adapter,
        "weights": out_dir.name,
        "labels": len(labels),
        "trainable_params": trainable,
        "total_params": total,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_eval_loss": final.get("eval_loss"),
        "eval_accuracy": final.get("eval_accuracy"),
        "eval_macro_f1": final.get("eval_macro_f1"),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_rows": len(train_examples),
        "validation_rows": len(val_examples),
        "truncated_rows": sum(1 for e in train_examples + val_examples if len(e["input_ids"]) >= max_length),
    }
    write_summary(run_dir, summary)
    return summary


# --------------------------------------------------------------------------- predict


@dataclass
class Classifier:
    model: object
    tokenizer: object
    labels: list[str]
    max_length: int


def load_classifier(run: str | Path) -> Classifier:
    """Load a finished classification run (base + adapter with its head, or full weights)."""
    from tunesmith.serve.engine import final_stage_dir, is_run_dir

    path = Path(run).expanduser()
    if not is_run_dir(path):
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    path = final_stage_dir(path)
    config = load_config(path / "config.yaml")
    if config.method.stages[-1] != "classify" or not (path / LABELS_FILE).exists():
        raise ModelError(f"{run} is not a classification run; use `tunesmith generate {run}` for a generative one.")
    labels = json.loads((path / LABELS_FILE).read_text())
    head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}}
    model, tokenizer = load_head_model(path, config, **head)
    return Classifier(model, tokenizer, labels, int(config.train.max_length))


def load_head_model(path: Path, config: RunConfig, **head):
    """(model, tokenizer) of a finished run with a sequence-classification head (a classifier
    or a reward model): full weights, or the base with the adapter and head merged in."""
    from transformers import AutoTokenizer

    from tunesmith.models import load_model

    if (path / MODEL_DIR).is_dir():
        model = load_model(str(path / MODEL_DIR), head="classify")
        weights = path / MODEL_DIR
    elif (path / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_model(config.model.name, head="classify", **head), path / ADAPTER_DIR)
        if not model.peft_config["default"].is_prompt_learning:
            model = model.merge_and_unload()
        weights = path / ADAPTER_DIR
    else:
        raise ModelError(f"{path} has no trained weights yet; finish it with `tunesmith train --resume {path}`.")
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
