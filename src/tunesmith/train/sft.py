"""Supervised fine-tuning (chat / instruction data) with any adapter of the PEFT family,
or full fine-tuning.

Reads top to bottom: load data, resolve "auto" settings, tokenize with loss on assistant
tokens only, mix in general chats against forgetting (`data.replay_ratio`), build model,
build TRL's SFTTrainer (packed, padding-free), train, save.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.data.formats import template_inputs
from tunesmith.data.rows import load_chat_rows, replay_chats
from tunesmith.data.splits import split_validation, training_data
from tunesmith.errors import DataError
from tunesmith.models import load_tokenizer
from tunesmith.runs import TrainSummary
from tunesmith.train.auto import resolve
from tunesmith.train.common import (
    PROMPT_LEARNING,
    begin_run,
    common_args,
    confirm_micro_batch,
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


@dataclass
class TokenizedChats:
    """Chat rows as token ids, with a mask of the tokens the loss is computed on."""

    examples: list[dict] = field(default_factory=list)
    truncated: int = 0  # rows cut at max_length
    skipped: int = 0  # rows with no assistant token left after cutting


def assistant_spans(
    messages: list[dict], tokenizer, tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation with the chat template and return the text and the character
    spans of each learned assistant reply, end-of-turn token included (so the model learns
    to stop).

    An assistant turn with OpenAI's ``weight`` 0 is context, not learned: it has no span.
    Tool definitions and tool calls are rendered as ``formats.template_inputs`` says
    (through the template when it renders them, else as JSON text); the span of an assistant
    turn covers its tool calls, so the model learns to make them. Tool results are context.
    """
    messages, tools = template_inputs(messages, tools, tokenizer)
    learned = [m["role"] == "assistant" and m.get("weight", 1) != 0 for m in messages]
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception as e:
        if not any(m["role"] == "tool" for m in messages):
            raise
        raise DataError(
            f"The model's chat template cannot render a conversation with tool turns ({e}); train a model whose "
            "template supports tools, or remove the tool-calling rows."
        ) from None
    eos = tokenizer.eos_token or ""
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        if not learned[i]:
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False)
        if text.startswith(upto) and upto.startswith(prefix) and len(prefix) >= cursor:
            start, end = len(prefix), len(upto.rstrip())
        else:
            # Templates that rewrite earlier turns (e.g. strip reasoning) break the prefix
            # property; fall back to finding the reply text itself.
            start = text.find(message["content"], cursor)
            if start < 0:
                raise DataError("The chat template drops assistant text; train with a different template.")
            end = start + len(message["content"])
            if eos and text.startswith(eos, end):
                end += len(eos)
        spans.append((start, end))
        cursor = end
    # Templates that do not close the assistant turn with EOS would teach the model never to
    # stop; append EOS to the final reply (when it is learned) so generation ends where answers end.
    last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if spans and eos and learned[last_reply] and not text[: spans[-1][1]].endswith(eos):
        last_start, last_end = spans[-1]
        text = text[:last_end] + eos + text[last_end:]
        spans[-1] = (last_start, last_end + len(eos))
    return text, spans


def tokenize_chats(rows: list[dict], tokenizer, max_length: int) -> TokenizedChats:
    """Tokenize chat rows into `input_ids` + `assistant_masks` (1 = token is learned).

    Only assistant turns whose ``weight`` is not 0 are learned; a row's ``tools`` go to the
    chat template (see ``assistant_spans``)."""
    out = TokenizedChats()
    for row in rows:
        text, spans = assistant_spans(row["messages"], tokenizer, row.get("tools"))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        # A token is learned when it overlaps a reply, not only when it starts inside one:
        # byte-level BPE glues the space after "Assistant:" to the reply's first word, and
        # that first token is the one the model most needs to learn to produce.
        mask = [int(any(a < e and b > s for s, e in spans)) for a, b in offsets]
        if len(ids) > max_length:
            out.truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask):
            out.skipped += 1
            continue
        out.examples.append({"input_ids": ids, "assistant_masks": mask})
    return out


def prepare(config: RunConfig, tokenizer) -> tuple[RunConfig, list[dict], list[dict], dict]:
    """Load and split the data, resolve "auto" values, tokenize, mix in general chats
    (`data.replay_ratio`). Returns the resolved config, train and validation examples, and
    data statistics for the run summary (`train_rows` the task's, `replay_rows` the general ones)."""
    config, train_data = training_data(config)
    rows = load_chat_rows(train_data, config)
    val_rows = load_chat_rows(config.data.validation, config) if config.data.validation else None
    config = resolve(config, rows, tokenizer, has_validation_file=val_rows is not None, kind="chat")
    if val_rows is None:
        rows, val_rows = split_validation(rows, float(config.data.validation_split), config.train.seed)
    max_length = int(config.train.max_length)
    train = tokenize_chats(rows, tokenizer, max_length)
    val = tokenize_chats(val_rows, tokenizer, max_length)
    if not train.examples:
        raise DataError(f"{config.data.train}: no example keeps an assistant answer within max_length {max_length}.")
    # General chats against forgetting (data.replay_ratio), after the gate and the splits:
    # validation and test stay the task's own rows.
    replay = tokenize_chats(replay_chats(len(train.examples), config), tokenizer, max_length)
    stats = {
        "train_rows": len(train.examples),
        "replay_rows": len(replay.examples),
        "validation_rows": len(val.examples),
        "truncated_rows": train.truncated + val.truncated,
        "skipped_rows": train.skipped + val.skipped,
        "train_tokens": sum(len(e["input_ids"]) for e in train.examples + replay.examples),
        "train_loss_tokens": sum(sum(e["assistant_masks"]) for e in train.examples + replay.examples),
    }
    return config, train.examples + replay.examples, val.examples, stats


def trainer_args(config: RunConfig, run_dir: Path, has_eval: bool):
    """TRL SFTConfig from our resolved config: packed and padding-free (prompt and prefix
    tuning excepted: their virtual tokens belong to each example, so those are padded)."""
    from trl import SFTConfig

    pack = config.method.adapter not in PROMPT_LEARNING
    return SFTConfig(
        **common_args(config, run_dir, has_eval),
        max_length=int(config.train.pack_length if pack else config.train.max_length),
        packing=pack,
        packing_strategy="bfd",  # keeps examples whole; implies padding-free batches
        dataset_num_proc=None,
    )


def train_sft(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> TrainSummary:
    """Fine-tune `config.model.name` on `config.data.train` into `run_dir`.

    With `resume=True`, `run_dir` must hold an interrupted run: its saved config is used and
    training continues from the last checkpoint. Returns a summary dict (also written to
    `run.json`)."""
    from datasets import Dataset
    from transformers import PrinterCallback


    run_dir = Path(run_dir)
    config, checkpoint = start_run(config, run_dir, resume)
    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer)
    config, train_examples, val_examples, stats = prepare(config, tokenizer)
    # Created only now, so a bad model name or data file leaves no empty run behind.
    begin_run(config, run_dir, card)

    model = wrap_model(load_base(config), config, "CAUSAL_LM", run_dir, resume)
    config = confirm_micro_batch(model, config, run_dir, resume)  # a GPU's probe step; nothing on a CPU
    trainable, total = trainable_parameters(model)
    has_eval = bool(val_examples)
    callbacks = run_callbacks(config, run_dir, has_eval, callbacks)
    trainer = LeanSFTTrainer(  # TRL's SFTTrainer, its metrics read once per log event
        model=model,
        args=trainer_args(config, run_dir, has_eval),
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples) if has_eval else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; our callbacks report instead
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = save_weights(trainer, tokenizer, config, run_dir)
    summary = TrainSummary(
        **run_figures(trainer, config),
        task="sft",
        base_model=config.model.name,
        method=config.method.adapter,
        weights=out_dir.name,
        trainable_params=trainable,
        total_params=total,
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        best_eval_loss=trainer.state.best_metric,
        best_checkpoint=trainer.state.best_model_checkpoint,
        train_runtime_s=result.metrics.get("train_runtime"),
        tokens_seen=trainer.state.num_input_tokens_seen,
        **stats,
    )
    write_summary(run_dir, summary)
    return summary
