"""Benchmark: tunesmith SFT (packed, padding-free) against a plain TRL `SFTTrainer` (padded).

Run from the repository root, in the project's virtualenv:

    python benchmarks/sft_vs_trl.py                      # defaults: 320 rows, one epoch, batch 16
    python benchmarks/sft_vs_trl.py --rows 64 --steps 2  # a quick check that it works
    python benchmarks/sft_vs_trl.py --json results.json  # also write the figures as JSON

Both trainers run in this one process, one after the other (TRL first, then tunesmith), on
the same model, the same Banking77 slice turned into chat rows (system prompt, the customer's
message, the intent as the answer), the same LoRA settings (r 16, alpha 32, dropout 0.05,
all-linear), learning rate, schedule, weight decay, max length, seed and number of optimizer
steps, with loss on the answer tokens only and gradient checkpointing off. The only intended
difference is batching:

  * TRL:       `--batch-size` examples per step, padded to the longest in the batch;
  * tunesmith: one packed row per step (no padding), `pack_length` chosen so that a row holds
               about `--batch-size` examples (see `choose_pack_length`).

By default both train one full epoch over the same rows, so both see exactly the same
examples once (with about the same number of examples per step) and their validation losses
can be compared; `--steps N` stops both after N optimizer steps instead. Measured for each:

  * wall time of training only (first step begins -> last optimizer step ends; model loading,
    data preparation and checkpoint saving are left out),
  * real (non-padding) tokens processed and padded positions, counted on the batches the
    model actually received, and real tokens per second,
  * the validation loss on the same held-out rows, computed after training by one function
    (`answer_loss`) for both models: mean cross-entropy over the answer tokens, end-of-turn
    token included.

It prints a table, the ratio `tunesmith tokens/s / TRL tokens/s` and the ideal speed-up
1 / (1 - padding fraction of the TRL batches). Figures taken on a shared CPU are indicative.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "banking77" / "train.csv"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="tunesmith model name, local folder or hub id")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Banking77-style CSV with text,category columns")
    p.add_argument("--rows", type=int, default=320, help="rows sampled from the CSV; 10%% are held out for validation")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps for each trainer (default: one full epoch over the same rows for both)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step (TRL batch size)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=128, help="longest example in tokens")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    return p.parse_args()


# --------------------------------------------------------------------------- data


def load_rows(path: str, n: int, seed: int) -> list[dict]:
    """A seeded random sample of `n` CSV rows as chat conversations (the file is sorted by
    intent, so its first rows would all share one answer)."""
    from tunesmith.workflows.quickstart import SYSTEM_PROMPT

    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    sample = random.Random(seed).sample(records, min(n, len(records)))
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": r["text"]},
                {"role": "assistant", "content": r["category"]},
            ]
        }
        for r in sample
    ]


def choose_pack_length(train_examples: list[dict], batch_size: int, max_length: int) -> int:
    """Packed row length that holds about `batch_size` examples: batch_size x mean example
    length (at least max_length, so every example fits in a row). With one packed row per
    optimizer step, tunesmith then sees about as many examples per step as TRL's padded batch
    of `batch_size`, and over the same number of steps about the same data; the table prints
    the measured examples per step of both."""
    mean_len = sum(len(e["input_ids"]) for e in train_examples) / len(train_examples)
    return max(max_length, round(batch_size * mean_len))


# --------------------------------------------------------------------------- measuring


class BatchMeter:
    """A TrainerCallback that times training and counts what the model is fed.

    At `on_train_begin` it puts a forward pre-hook on the model, so it counts the batches
    the model really gets (not those a dataloader prefetches): examples, real tokens
    (attention_mask == 1, or every token of a padding-free batch), padded positions and
    answer (loss) tokens. Training time runs from `on_train_begin` to the last
    `on_step_end`, so a checkpoint saved after the last step is not timed."""

    def __init__(self):
        from transformers import TrainerCallback

        # Subclass lazily so importing this file does not import transformers.
        self.callback = type("BatchMeterCallback", (TrainerCallback,), {
            "on_train_begin": lambda _, args, state, control, **kw: self._begin(kw["model"]),
            "on_step_end": lambda _, args, state, control, **kw: self._step_end(state),
            "on_train_end": lambda _, args, state, control, **kw: self._hook.remove(),
        })()
        self.examples = self.real_tokens = self.positions = self.loss_tokens = 0
        self.steps = 0
        self.start = self.end = self.cpu_start = self.cpu_end = None
        self._hook = None

    def _begin(self, model):
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def _count(self, module, args, batch):
        ids = batch["input_ids"]
        self.positions += ids.numel()
        if batch.get("labels") is not None:
            self.loss_tokens += int((batch["labels"] != -100).sum())
        if batch.get("attention_mask") is not None:  # padded batch: one row per example
            self.examples += ids.shape[0]
            self.real_tokens += int(batch["attention_mask"].sum())
        else:  # padding-free: examples concatenated, each starting at position 0
            self.examples += int((batch["position_ids"] == 0).sum())
            self.real_tokens += ids.numel()

    def _step_end(self, state):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end, self.cpu_end = time.perf_counter(), time.process_time()
        self.steps = state.global_step

    def results(self) -> dict:
        seconds = self.end - self.start
        return {
            "optimizer_steps": self.steps,
            "train_seconds": seconds,
            "train_cpu_seconds": self.cpu_end - self.cpu_start,
            "examples": self.examples,
            "examples_per_step": self.examples / max(1, self.steps),
            "real_tokens": self.real_tokens,
            "padded_positions": self.positions,
            "padding_fraction": 1 - self.real_tokens / self.positions,
            "loss_tokens": self.loss_tokens,
            "real_tokens_per_s": self.real_tokens / seconds,
        }


def answer_loss(model, examples: list[dict], pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy over answer tokens (assistant_masks == 1) of tokenized chat rows;
    the one loss definition both trained models are scored with."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for row, e in enumerate(chunk):
                n = len(e["input_ids"])
                ids[row, :n] = torch.tensor(e["input_ids"])
                attention[row, :n] = 1
                mask = torch.tensor(e["assistant_masks"], dtype=torch.bool)
                labels[row, :n] = torch.where(mask, ids[row, :n], -100)
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            targets = labels[:, 1:].to(device)
            total += F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((targets != -100).sum())
    return total / count


def device_of_choice() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def warm_up(model_name: str, examples: list[dict], pad_id: int) -> None:
    """Two forward/backward passes before anything is timed, so neither trainer pays for
    first-use costs (thread pools, allocator, kernel selection)."""
    import torch

    from tunesmith.models import load_model

    model = load_model(model_name).to(device_of_choice())
    model.train()
    ids = [e["input_ids"] for e in examples[:8]]
    width = max(map(len, ids))
    batch = torch.tensor([x + [pad_id] * (width - len(x)) for x in ids], device=model.device)
    for _ in range(2):
        model(input_ids=batch, labels=batch).loss.backward()
    del model


# --------------------------------------------------------------------------- the two runs


def run_trl(args, train_rows: list[dict], workdir: Path):
    """Plain TRL: SFTTrainer + peft LoraConfig, padded batches, loss on the answer only."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template

    from tunesmith.models import default_dtype, resolve_model

    source = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=default_dtype())

    # assistant_only_loss needs a template with {% generation %} markers; TRL 1.16 patches a
    # few known templates and raises for the others (SmolLM2's included). Then the same mask
    # comes from the conversational prompt/completion format: prompt = system + user turns,
    # completion = the assistant turn (TRL also puts the "\n" after <|im_end|> in the loss,
    # one token per example that tunesmith leaves out).
    try:
        get_training_chat_template(tokenizer)
        loss_mode = "assistant_only_loss"
        dataset = Dataset.from_list(train_rows)
    except ValueError:
        loss_mode = "completion_only_loss"
        dataset = Dataset.from_list(
            [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train_rows]
        )

    on_gpu = torch.cuda.is_available()
    config = SFTConfig(
        output_dir=str(workdir / "trl"),
        learning_rate=args.learning_rate,
        num_train_epochs=1,
        max_steps=args.steps or -1,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        weight_decay=0.01,  # tunesmith's TrainConfig defaults, set explicitly
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        max_length=args.max_length,
        packing=False,
        padding_free=False,
        assistant_only_loss=loss_mode == "assistant_only_loss",
        completion_only_loss=loss_mode == "completion_only_loss",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        seed=args.seed,
        data_seed=args.seed,
        gradient_checkpointing=False,  # TRL turns it on by default; tunesmith does not
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    meter = BatchMeter()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[meter.callback],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.model, meter.results() | {"loss_mode": loss_mode, "batching": f"padded, {args.batch_size} examples"}


def run_tunesmith(args, train_rows: list[dict], pack_length: int, workdir: Path):
    """tunesmith's own train_sft with every setting that must match given explicitly."""
    from peft import PeftModel

    from tunesmith.config import RunConfig
    from tunesmith.models import load_model
    from tunesmith.runs import ADAPTER_DIR
    from tunesmith.train.sft import train_sft

    train_file = workdir / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    config = RunConfig.model_validate(
        {
            "model": {"name": args.model},
            # The held-out rows are ours: no split, so no evaluation during training.
            "data": {"train": str(train_file), "validation_split": 0.0, "test_split": 0.0},
            "method": {
                "adapter": "lora",
                "lora_r": 16,
                "lora_alpha": 32,
                "lora_dropout": 0.05,
                "target_modules": "all-linear",
                "gradient_checkpointing": False,
            },
            "train": {
                "learning_rate": args.learning_rate,
                "epochs": 1,
                "max_steps": args.steps,  # None: one epoch
                "batch_size": 1,  # one packed row per optimizer step ...
                "gradient_accumulation": 1,
                "pack_length": pack_length,  # ... holding about --batch-size examples
                "max_length": args.max_length,
                "weight_decay": 0.01,
                "warmup_ratio": 0.05,
                # also the save interval: at most one checkpoint, at the end (not timed)
                "eval_steps": args.steps or 10**6,
                "save_total_limit": 1,
                "seed": args.seed,
                "logging_steps": 1,
            },
        }
    )
    meter = BatchMeter()
    run_dir = workdir / "tunesmith"
    train_sft(config, run_dir, callbacks=[meter.callback])
    model = PeftModel.from_pretrained(load_model(args.model), str(run_dir / ADAPTER_DIR))
    return model.to(device_of_choice()), meter.results() | {
        "loss_mode": "assistant_masks",
        "batching": f"packed, 1 row of {pack_length} tokens",
    }


# --------------------------------------------------------------------------- report


def print_report(settings: dict, trl: dict, ts: dict, base_loss: float, ratio: float, ideal: float) -> None:
    print()
    rows = [
        ("batching", ts["batching"], trl["batching"], "{}"),
        ("optimizer steps", ts["optimizer_steps"], trl["optimizer_steps"], "{}"),
        ("examples seen", ts["examples"], trl["examples"], "{}"),
        ("examples per step", ts["examples_per_step"], trl["examples_per_step"], "{:.1f}"),
        ("real tokens", ts["real_tokens"], trl["real_tokens"], "{:,}"),
        ("padded positions", ts["padded_positions"], trl["padded_positions"], "{:,}"),
        ("padding fraction", ts["padding_fraction"], trl["padding_fraction"], "{:.1%}"),
        ("answer (loss) tokens", ts["loss_tokens"], trl["loss_tokens"], "{:,}"),
        ("train time (s)", ts["train_seconds"], trl["train_seconds"], "{:.1f}"),
        ("process CPU time (s)", ts["train_cpu_seconds"], trl["train_cpu_seconds"], "{:.1f}"),
        ("real tokens / s", ts["real_tokens_per_s"], trl["real_tokens_per_s"], "{:,.0f}"),
        ("validation loss", ts["validation_loss"], trl["validation_loss"], "{:.4f}"),
    ]
    width = max(len(r[0]) for r in rows)
    cells = [(name, fmt.format(a), fmt.format(b)) for name, a, b, fmt in rows]
    col = max(len(c) for _, a, b in cells for c in (a, b, "tunesmith", "TRL")) + 2
    print(f"{'':<{width}}  {'tunesmith':>{col}}  {'TRL SFTTrainer':>{col}}")
    for name, a, b in cells:
        print(f"{name:<{width}}  {a:>{col}}  {b:>{col}}")
    print()
    print(f"Speed-up, real tokens/s, tunesmith / TRL: {ratio:.2f}x "
          f"(ideal from TRL's padding: 1 / (1 - {trl['padding_fraction']:.3f}) = {ideal:.2f}x)")
    diff = ts["validation_loss"] - trl["validation_loss"]
    print(f"Validation loss on answer tokens: tunesmith {ts['validation_loss']:.4f}, TRL {trl['validation_loss']:.4f}, "
          f"difference {diff:+.4f} (untrained base model: {base_loss:.4f})")


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.train.sft import tokenize_chats

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    rows = load_rows(args.data, args.rows, args.seed)
    n_val = max(1, len(rows) // 10)
    train_rows, val_rows = rows[n_val:], rows[:n_val]

    tokenizer = load_tokenizer(args.model)
    train_examples = tokenize_chats(train_rows, tokenizer, args.max_length).examples
    val_examples = tokenize_chats(val_rows, tokenizer, args.max_length).examples
    pack_length = choose_pack_length(train_examples, args.batch_size, args.max_length)
    settings = {
        "model": args.model,
        "train rows": len(train_rows),
        "validation rows": len(val_examples),
        "steps": args.steps,
        "examples/step": args.batch_size,
        "pack length": pack_length,
        "lr": args.learning_rate,
        "max length": args.max_length,
        "LoRA": "r16 a32 d0.05 all-linear",
        "device": device_of_choice(),
    }
    print("Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()))

    warm_up(args.model, train_examples, tokenizer.pad_token_id)
    base_model = load_model(args.model).to(device_of_choice())
    base_loss = answer_loss(base_model, val_examples, tokenizer.pad_token_id)
    del base_model

    with tempfile.TemporaryDirectory(prefix="sft-vs-trl-") as tmp:
        workdir = Path(tmp)
        print("Training with TRL SFTTrainer (padded) ...", flush=True)
        model, trl = run_trl(args, train_rows, workdir)
        trl["validation_loss"] = answer_loss(model, val_examples, tokenizer.pad_token_id)
        del model
        print("Training with tunesmith (packed) ...", flush=True)
        model, ts = run_tunesmith(args, train_rows, pack_length, workdir)
        ts["validation_loss"] = answer_loss(model, val_examples, tokenizer.pad_token_id)
        del model

    ratio = ts["real_tokens_per_s"] / trl["real_tokens_per_s"]
    ideal = 1 / (1 - trl["padding_fraction"])
    print_report(settings, trl, ts, base_loss, ratio, ideal)
    if args.json:
        result = {
            "settings": settings,
            "tunesmith": ts,
            "trl": trl,
            "base_validation_loss": base_loss,
            "speedup_real_tokens_per_s": ratio,
            "ideal_speedup_from_padding": ideal,
            "validation_loss_difference": ts["validation_loss"] - trl["validation_loss"],
        }
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
