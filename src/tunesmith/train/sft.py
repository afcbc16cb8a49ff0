"""Supervised fine-tuning (chat / instruction data), LoRA by default or full.

Reads top to bottom: load data, resolve "auto" settings, tokenize with loss on assistant
tokens only, build model, build TRL's SFTTrainer (packed, padding-free), train, save.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import RunConfig, load_config, save_config
from tunesmith.data.quality import write_card
from tunesmith.errors import ConfigError, DataError, ModelError

ADAPTER_DIR = "adapter"  # LoRA weights of a finished run
MODEL_DIR = "model"  # full weights of a finished full fine-tune
RUN_INFO = "run.json"


@dataclass
class TokenizedChats:
    """Chat rows as token ids, with a mask of the tokens the loss is computed on."""

    examples: list[dict] = field(default_factory=list)
    truncated: int = 0  # rows cut at max_length
    skipped: int = 0  # rows with no assistant token left after cutting


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation with the chat template and return the text and the character
    spans of each assistant reply, end-of-turn token included (so the model learns to stop)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    eos = tokenizer.eos_token or ""
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
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
    # stop; append EOS to the final reply so generation ends where answers end.
    if spans and eos and not text[: spans[-1][1]].endswith(eos):
        last_start, last_end = spans[-1]
        text = text[:last_end] + eos + text[last_end:]
        spans[-1] = (last_start, last_end + len(eos))
    return text, spans


def tokenize_chats(rows: list[dict], tokenizer, max_length: int) -> TokenizedChats:
    """Tokenize chat rows into `input_ids` + `assistant_masks` (1 = token is learned)."""
    out = TokenizedChats()
    for row in rows:
        text, spans = assistant_spans(row["messages"], tokenizer)
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


def split_validation(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded random `fraction` of rows (same split on every resume)."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * fraction))
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val


def load_chat_rows(path: str, config: RunConfig) -> list[dict]:
    from tunesmith.data.formats import load_data, to_chat

    data = load_data(path, columns=config.data.columns)
    return to_chat(data, system_prompt=config.data.system_prompt)


def prepare(config: RunConfig, tokenizer) -> tuple[RunConfig, list[dict], list[dict], dict]:
    """Load and split the data, resolve "auto" values, tokenize. Returns the resolved
    config, train and validation examples, and data statistics for the run summary."""
    from tunesmith.train.auto import resolve

    rows = load_chat_rows(config.data.train, config)
    val_rows = load_chat_rows(config.data.validation, config) if config.data.validation else None
    config = resolve(config, rows, tokenizer, has_validation_file=val_rows is not None)
    if val_rows is None:
        rows, val_rows = split_validation(rows, float(config.data.validation_split), config.train.seed)
    max_length = int(config.train.max_length)
    train = tokenize_chats(rows, tokenizer, max_length)
    val = tokenize_chats(val_rows, tokenizer, max_length)
    if not train.examples:
        raise DataError(f"{config.data.train}: no example keeps an assistant answer within max_length {max_length}.")
    stats = {
        "train_rows": len(train.examples),
        "validation_rows": len(val.examples),
        "truncated_rows": train.truncated + val.truncated,
        "skipped_rows": train.skipped + val.skipped,
        "train_tokens": sum(len(e["input_ids"]) for e in train.examples),
        "train_loss_tokens": sum(sum(e["assistant_masks"]) for e in train.examples),
    }
    return config, train.examples, val.examples, stats


def gate_data(config: RunConfig, tokenizer):
    """Run the data quality gate on the training (and validation) file before anything
    trains. Errors stop the run with the top problems and the way out, unless
    `data.force` is set, which the returned data card records."""
    from tunesmith.data.quality import check_data

    max_length = config.train.max_length if isinstance(config.train.max_length, int) else None
    card = check_data(
        config.data.train, config.data.validation, tokenizer=tokenizer, max_length=max_length, columns=config.data.columns
    )
    errors = card.errors()
    if errors and not config.data.force:
        top = "; ".join(f.message.rstrip(".") for f in errors[:3])
        raise DataError(
            f"{config.data.train}: the data gate found {len(errors)} error(s): {top}. Run `tunesmith data check "
            f"{config.data.train} --fix CLEAN.jsonl` and train on the cleaned file, or pass --force to train anyway."
        )
    card.stats["trained_despite_errors"] = bool(errors)
    return card


def build_model(config: RunConfig):
    from tunesmith.models import load_model

    model = load_model(config.model.name)
    if config.method.method == "full":
        return model, None
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=config.method.lora_r,
        lora_alpha=config.method.lora_alpha,
        lora_dropout=config.method.lora_dropout,
        target_modules=config.method.target_modules,
        task_type="CAUSAL_LM",
    )
    return model, peft_config


def trainer_args(config: RunConfig, run_dir: Path, has_eval: bool):
    """TRL SFTConfig from our resolved config: packed and padding-free, eval + save every
    `eval_steps`, best checkpoint (lowest validation loss) restored at the end."""
    import torch
    from trl import SFTConfig

    t = config.train
    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        learning_rate=float(t.learning_rate),
        num_train_epochs=float(t.epochs),
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=int(t.batch_size),
        per_device_eval_batch_size=int(t.batch_size),
        gradient_accumulation_steps=int(t.gradient_accumulation),
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of all steps
        lr_scheduler_type="cosine",
        max_length=int(t.pack_length),
        packing=True,
        packing_strategy="bfd",  # keeps examples whole; implies padding-free batches
        eval_strategy="steps" if has_eval else "no",
        eval_steps=int(t.eval_steps),
        save_strategy="steps",
        save_steps=int(t.eval_steps),
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=t.logging_steps,
        include_num_input_tokens_seen="all",  # padding-free: every token is a real one
        seed=t.seed,
        data_seed=t.seed,
        # TRL turns checkpointing on by default; on a small model it only costs time.
        gradient_checkpointing=config.method.gradient_checkpointing,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        report_to="none",
        disable_tqdm=True,  # the CLI draws its own rich progress bar
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        dataset_num_proc=None,
        save_only_model=False,  # optimizer + RNG state are needed to resume exactly
    )


def train_sft(config: RunConfig, run_dir: str | Path, callbacks: list | None = None, resume: bool = False) -> dict:
    """Fine-tune `config.model.name` on `config.data.train` into `run_dir`.

    With `resume=True`, `run_dir` must hold an interrupted run: its saved config is used and
    training continues from the last checkpoint. Returns a summary dict (also written to
    `run.json`)."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTTrainer

    from tunesmith.models import load_tokenizer
    from tunesmith.train.callbacks import MetricsFileCallback

    run_dir = Path(run_dir)
    checkpoint = None
    if resume:
        config, checkpoint = _resume_point(run_dir)
    elif (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --output.")
    if not config.data.train:
        raise ConfigError("No training data given: pass --data FILE or set data.train in the config.")

    tokenizer = load_tokenizer(config.model.name)
    card = None if resume else gate_data(config, tokenizer)
    config, train_examples, val_examples, stats = prepare(config, tokenizer)
    # Created only now, so a bad model name or data file leaves no empty run behind.
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    if card is not None:
        write_card(card, run_dir)

    model, peft_config = build_model(config)
    has_eval = bool(val_examples)
    callbacks = [MetricsFileCallback(run_dir / "metrics.jsonl"), *(callbacks or [])]
    if has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping_patience))
    trainer = SFTTrainer(
        model=model,
        args=trainer_args(config, run_dir, has_eval),
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; our callbacks report instead
    result = trainer.train(resume_from_checkpoint=checkpoint)

    out_dir = run_dir / (ADAPTER_DIR if peft_config is not None else MODEL_DIR)
    trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    summary = {
        "task": "sft",
        "base_model": config.model.name,
        "method": config.method.method,
        "weights": out_dir.name,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_runtime_s": result.metrics.get("train_runtime"),
        **stats,
    }
    (run_dir / RUN_INFO).write_text(json.dumps(summary, indent=2))
    return summary


def _resume_point(run_dir: Path) -> tuple[RunConfig, str]:
    if not (run_dir / "config.yaml").exists():
        raise ModelError(f"{run_dir} is not a tunesmith run directory (no config.yaml); check the path.")
    config = load_config(run_dir / "config.yaml")
    if config.unresolved():
        raise ConfigError(f"{run_dir}/config.yaml still has 'auto' values; it was not written by tunesmith train.")
    checkpoints = sorted(
        (run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
    )
    if not checkpoints:
        raise ModelError(f"{run_dir} has no checkpoint yet; start the run again without --resume.")
    return config, str(checkpoints[-1])
