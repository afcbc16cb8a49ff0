"""Reward model: a one-output sequence-classification head on the decoder, trained on
preference pairs to score the chosen answer above the rejected one (Bradley-Terry loss,
TRL's RewardTrainer), with an adapter plus the head, or fully.

Reads top to bottom: load the pairs, split, resolve "auto" settings, shorten long
conversations from the front and tokenize, build the model, train, save, and measure the
pairwise accuracy on the held-out pairs. `load_reward_model` + `score` serve `tunesmith
score` and the grpo/rloo stages.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.rows import encode_answers, load_pairs
from tunesmith.data.splits import split_validation, training_data
from tunesmith.inference.reward import score_ids
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


def encode_pairs(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """`chosen_ids`/`rejected_ids` of each pair; returns the examples and how many prompts
    were shortened."""
    examples, shortened = [], 0
    for r in rows:
        (chosen, rejected), cut = encode_answers(r["prompt"], [r["chosen"], r["rejected"]], tokenizer, max_length)
        shortened += cut
        examples.append({"chosen_ids": chosen, "rejected_ids": rejected})
    return examples, shortened


def train_reward(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> TrainSummary:
    """Train a reward model on `config.data.train` (preference pairs) into `run_dir`. Returns a
    summary (also in `run.json`) with the pairwise accuracy on the validation pairs."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    config, train_data = training_data(config)
    rows = load_pairs(train_data)
    val_rows = load_pairs(config.data.validation, config.data.columns) if config.data.validation else None
    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer, task="preference")
    config = resolve(config, rows, tokenizer, val_rows is not None, kind="reward")
    if val_rows is None:
        rows, val_rows = split_validation(rows, float(config.data.validation_split), config.train.seed)
    max_length = int(config.train.max_length)
    train_examples, cut_train = encode_pairs(rows, tokenizer, max_length)
    val_examples, cut_val = encode_pairs(val_rows, tokenizer, max_length)

    begin_run(config, run_dir, card)

    model = load_base(config, head="classify", num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    model = wrap_model(model, config, "SEQ_CLS", run_dir, resume)
    trainable, total = trainable_parameters(model)
    has_eval = bool(val_examples)
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(
            **common_args(config, run_dir, has_eval),
            max_length=max_length,
            dataset_num_proc=None,
        ),
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples) if has_eval else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(config, run_dir, has_eval, callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    # Pairwise accuracy of the restored best model, measured the way `tunesmith score` does.
    model = trainer.model.eval()
    chosen = score_ids(model, tokenizer, [e["chosen_ids"] for e in val_examples])
    rejected = score_ids(model, tokenizer, [e["rejected_ids"] for e in val_examples])
    wins = [c > r for c, r in zip(chosen, rejected)]
    summary = TrainSummary(
        **run_figures(trainer, config),
        task="reward",
        base_model=config.model.name,
        method=config.method.adapter,
        weights=out_dir.name,
        trainable_params=trainable,
        total_params=total,
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        best_checkpoint=trainer.state.best_model_checkpoint,
        pairwise_accuracy=sum(wins) / len(wins) if wins else None,
        mean_margin=sum(c - r for c, r in zip(chosen, rejected)) / len(wins) if wins else None,
        train_runtime_s=result.metrics.get("train_runtime"),
        train_rows=len(train_examples),
        validation_rows=len(val_examples),
        truncated_rows=cut_train + cut_val,
    )
    write_summary(run_dir, summary)
    return summary


# --------------------------------------------------------------------------- scoring


