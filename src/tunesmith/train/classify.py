"""Classification: a sequence-classification head on the decoder, trained with an adapter
(LoRA by default) plus the head, or fully.

Reads top to bottom: load text+label rows, fix the label set, split, resolve "auto"
settings, tokenize, build the model with a new head, train with the Trainer (accuracy and
macro-F1 on validation, early stopping on the chosen metric), save. `predict` loads a
finished run and labels new text with probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.rows import load_labelled
from tunesmith.data.splits import split_validation, training_data
from tunesmith.errors import ConfigError, DataError
from tunesmith.models import load_tokenizer
from tunesmith.runs import LABELS_FILE, TrainSummary
from tunesmith.train.auto import resolve
from tunesmith.train.common import (
    begin_run,
    common_args,
    gate_data,
    load_base,
    run_callbacks,
    run_figures,
    save_weights,
    start_run,
    trainable_parameters,
    wrap_model,
    write_summary,
)
from tunesmith.train.distributed import is_main_process

REPLAY_REFUSED = (
    "A classification head learns labels and cannot learn from general chat rows, so data.replay_ratio must be 0 "
    "for a classify stage (--replay-ratio works with sft and pretrain)."
)


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


def train_classify(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> TrainSummary:
    """Train a classifier from `config.data.train` (text+label rows) into `run_dir`.
    Returns a summary dict (also written to `run.json`) with validation accuracy and macro-F1."""
    from datasets import Dataset
    from transformers import (
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    if config.data.replay_ratio > 0:
        raise ConfigError(REPLAY_REFUSED)
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
    # The head's forward takes **kwargs, so the trainer assumes it normalises its loss over the
    # accumulated micro-batches (num_items_in_batch); it returns each micro-batch's mean instead,
    # and the logged loss and the gradient came out gradient_accumulation times too large.
    trainer.model_accepts_loss_kwargs = False
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    # The restored best model's figures (predict, unlike evaluate, adds no line to the log).
    final = trainer.predict(trainer.eval_dataset, metric_key_prefix="eval").metrics if has_eval else {}
    summary = TrainSummary(
        **run_figures(trainer, config),
        task="classify",
        base_model=config.model.name,
        method=config.method.adapter,
        weights=out_dir.name,
        labels=len(labels),
        trainable_params=trainable,
        total_params=total,
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        best_eval_loss=final.get("eval_loss"),
        eval_accuracy=final.get("eval_accuracy"),
        eval_macro_f1=final.get("eval_macro_f1"),
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_runtime_s=result.metrics.get("train_runtime"),
        tokens_seen=trainer.state.num_input_tokens_seen,
        train_rows=len(train_examples),
        validation_rows=len(val_examples),
        truncated_rows=sum(1 for e in train_examples + val_examples if len(e["input_ids"]) >= max_length),
    )
    write_summary(run_dir, summary)
    return summary


# --------------------------------------------------------------------------- predict


