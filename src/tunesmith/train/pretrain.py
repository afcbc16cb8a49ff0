"""Continued pretraining (domain adaptation) on raw text: next-token loss on every token.

Reads top to bottom: load the documents, hold out whole documents for validation, resolve
"auto" settings, tokenize and cut the text into blocks of `max_length` tokens (documents
joined with EOS, nothing dropped), mix in general text against forgetting
(`data.replay_ratio`), build the model, train with TRL's SFTTrainer, save.
"""

from __future__ import annotations

import math
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.rows import load_texts, replay_share
from tunesmith.data.splits import split_validation, training_data
from tunesmith.errors import ConfigError, DataError
from tunesmith.models import load_tokenizer
from tunesmith.runs import TrainSummary
from tunesmith.train.auto import resolve
from tunesmith.train.common import (
    PROMPT_LEARNING,
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
from tunesmith.train.trainers import LeanSFTTrainer

GENERAL_TEXT = Path(__file__).resolve().parent.parent / "samples" / "general_text.jsonl"


def to_blocks(texts: list[str], tokenizer, block: int) -> list[list[int]]:
    """Join the documents with EOS between them and cut the token stream into `block`-token
    pieces. Packing this way wastes no compute on padding; the last, shorter block is kept
    so that no text is dropped."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    return [stream[i : i + block] for i in range(0, len(stream), block) if len(stream[i : i + block]) > 1]


def replay_blocks(n_domain: int, ratio: float, general: list[list[int]], seed: int) -> list[list[int]]:
    """General-text blocks so that they make `ratio` of all blocks: ratio / (1 - ratio) per
    domain block, cycling through the general sample (shuffled) when it is too small."""
    return replay_share(n_domain, ratio, general, seed)


def train_pretrain(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> TrainSummary:
    """Continue pretraining `config.model.name` on the raw text in `config.data.train`.
    Returns a summary dict (also written to `run.json`), with validation perplexity."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig


    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    if config.method.adapter in PROMPT_LEARNING:
        raise ConfigError(
            "prompt and prefix tuning only steer a model with a few virtual tokens; they cannot absorb a domain's "
            "text. Use --adapter lora or full for continued pretraining."
        )
    # Data: whole documents are held out, so validation text is text the model never saw.
    config, train_data = training_data(config)
    docs = load_texts(train_data)
    val_docs = load_texts(config.data.validation, config.data.columns) if config.data.validation else None
    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer)
    config = resolve(config, [{"text": t} for t in docs], tokenizer, val_docs is not None, kind="pretrain")
    if val_docs is None:
        docs, val_docs = split_validation(docs, float(config.data.validation_split), config.train.seed)
    block = int(config.train.max_length)
    train_blocks = to_blocks(docs, tokenizer, block)
    val_blocks = to_blocks(val_docs, tokenizer, block)
    if not train_blocks:
        raise DataError(f"{config.data.train}: no text left to train on after the validation split.")
    replay: list[list[int]] = []
    if config.data.replay_ratio > 0:
        general = load_texts(config.data.replay_file or str(GENERAL_TEXT), format="text")
        replay = replay_blocks(len(train_blocks), config.data.replay_ratio, to_blocks(general, tokenizer, block), config.train.seed)

    begin_run(config, run_dir, card)

    model = wrap_model(load_base(config), config, "CAUSAL_LM", run_dir, resume)
    trainable, total = trainable_parameters(model)
    has_eval = bool(val_blocks)
    callbacks = run_callbacks(config, run_dir, has_eval, callbacks)
    # Blocks are already token ids of full length: no template, no packing, loss on every token.
    args = SFTConfig(
        **common_args(config, run_dir, has_eval),
        max_length=block,
        packing=False,
        dataset_num_proc=None,
    )
    trainer = LeanSFTTrainer(  # TRL's SFTTrainer, its metrics read once per log event
        model=model,
        args=args,
        train_dataset=Dataset.from_list([{"input_ids": b} for b in train_blocks + replay]),
        eval_dataset=Dataset.from_list([{"input_ids": b} for b in val_blocks]) if has_eval else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    best = trainer.state.best_metric
    summary = TrainSummary(
        **run_figures(trainer, config),
        task="pretrain",
        base_model=config.model.name,
        method=config.method.adapter,
        weights=out_dir.name,
        trainable_params=trainable,
        total_params=total,
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        best_eval_loss=best,
        best_eval_perplexity=math.exp(best) if best is not None else None,
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_runtime_s=result.metrics.get("train_runtime"),
        tokens_seen=trainer.state.num_input_tokens_seen,
        train_rows=len(docs),
        validation_rows=len(val_docs),
        train_blocks=len(train_blocks),
        replay_blocks=len(replay),
        validation_blocks=len(val_blocks),
        train_tokens=sum(len(b) for b in train_blocks),
    )
    write_summary(run_dir, summary)
    return summary
