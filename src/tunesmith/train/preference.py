"""Offline preference optimisation: DPO (sigmoid, IPO or robust loss), ORPO, SimPO and KTO,
on TRL's trainers, with any adapter or fully.

Reads top to bottom: load the pairs (or unpaired thumbs-up/down rows for KTO), split,
resolve "auto" settings (beta per method), shorten long conversations from the front,
build the model, build the method's trainer, train, save. With an adapter, DPO and KTO
take their reference from the same weights through the adapter mechanism, never a second
copy of the model; ORPO and SimPO need no reference at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.rows import fit_prompt, load_pairs
from tunesmith.data.splits import split_validation, training_data
from tunesmith.errors import DataError
from tunesmith.models import load_tokenizer
from tunesmith.runs import TrainSummary
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


def shorten(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Rows whose prompt fits with its answers in `max_length` tokens (earliest turns
    dropped), and how many were shortened."""
    out, shortened = [], 0
    for r in rows:
        answers = [r["chosen"], r["rejected"]] if "chosen" in r else [r["completion"]]
        prompt, cut = fit_prompt(r["prompt"], answers, tokenizer, max_length)
        shortened += cut
        out.append({**r, "prompt": prompt})
    return out, shortened


def unpaired(rows: list[dict]) -> list[dict]:
    """KTO rows: each preference pair becomes a good and a bad example; KTO rows stay."""
    out = []
    for r in rows:
        if "chosen" in r:
            out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
            out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
        else:
            out.append(r)
    return out


def kto_weights(rows: list[dict]) -> tuple[float, float, str]:
    """(desirable, undesirable) loss weights so that weighted good:bad lies in [1, 4/3],
    the KTO paper's advice for imbalanced thumbs-up/down data."""
    good = sum(1 for r in rows if r["label"])
    bad = len(rows) - good
    if not good or not bad:
        raise DataError(f"KTO needs both good and bad examples, and the data has {good} good and {bad} bad rows.")
    desirable = bad / good if good < bad else 1.0
    undesirable = good / (bad * 4 / 3) if good / bad > 4 / 3 else 1.0
    return desirable, undesirable, f"{good} good and {bad} bad rows"


def trainer_for(config: RunConfig, run_dir: Path, has_eval: bool, train_rows: list[dict]):
    """(trainer class, its config) for the method of the run's last stage."""
    m, t = config.method, config.train
    args = common_args(config, run_dir, has_eval) | {
        "max_length": int(t.max_length),
        "beta": float(m.beta),
    }
    method = m.stages[-1]
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        noise = m.label_noise if m.dpo_loss == "robust" else 0.0
        return DPOTrainer, DPOConfig(**args, loss_type=[m.dpo_loss], label_smoothing=noise, dataset_num_proc=None)
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        desirable, undesirable, _ = kto_weights(train_rows)
        return KTOTrainer, KTOConfig(
            **args, desirable_weight=desirable, undesirable_weight=undesirable, dataset_num_proc=None
        )
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO/SimPO live in trl.experimental
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig(**args)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    # SimPO = CPO's trainer with the length-normalised SimPO loss and no SFT term; TRL's
    # gamma is the absolute margin, ours a share of beta.
    return CPOTrainer, CPOConfig(**args, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=m.simpo_gamma * float(m.beta))


def train_preference(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> TrainSummary:
    """Align `config.model.name` with the preference data in `config.data.train` by the
    method of the last stage (dpo, orpo, simpo or kto). Returns a summary (also in
    `run.json`) with the validation loss, reward accuracy and margin."""
    from datasets import Dataset
    from transformers import PrinterCallback

    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    method = config.method.stages[-1]
    kto = method == "kto"
    config, train_data = training_data(config)
    rows = load_pairs(train_data, kto=kto)
    val_rows = load_pairs(config.data.validation, config.data.columns, kto=kto) if config.data.validation else None
    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer)
    config = resolve(config, rows, tokenizer, val_rows is not None, kind="preference")
    if val_rows is None:
        rows, val_rows = split_validation(rows, float(config.data.validation_split), config.train.seed)
    max_length = int(config.train.max_length)
    rows, cut_train = shorten(rows, tokenizer, max_length)
    val_rows, cut_val = shorten(val_rows, tokenizer, max_length)
    if kto:
        rows, val_rows = unpaired(rows), unpaired(val_rows)

    begin_run(config, run_dir, card)

    model = wrap_model(load_base(config), config, "CAUSAL_LM", run_dir, resume)
    trainable, total = trainable_parameters(model)
    has_eval = bool(val_rows)
    trainer_class, args = trainer_for(config, run_dir, has_eval, rows)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(val_rows) if has_eval else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(config, run_dir, has_eval, callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    # The restored best model's figures; the trainers add their reward metrics to the log line.
    final = {}
    if has_eval:
        trainer.evaluate()
        final = trainer.state.log_history[-1]
    summary = TrainSummary(
        **run_figures(trainer, config),
        task=method,
        base_model=config.model.name,
        method=config.method.adapter,
        weights=out_dir.name,
        beta=float(config.method.beta),
        trainable_params=trainable,
        total_params=total,
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        best_eval_loss=final.get("eval_loss"),
        # KTO has no pairs, so no pairwise accuracy; its margin compares good and bad rows.
        reward_accuracy=final.get("eval_rewards/accuracies"),
        reward_margin=final.get("eval_rewards/margins"),
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_runtime_s=result.metrics.get("train_runtime"),
        train_rows=len(rows),
        validation_rows=len(val_rows),
        truncated_rows=cut_train + cut_val,
    )
    write_summary(run_dir, summary)
    return summary
