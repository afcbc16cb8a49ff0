"""Benchmark: GPU throughput of tunesmith SFT against TRL's SFTTrainer, by default and at its best.

Run from the repository root, in the project's virtualenv, on a machine with a CUDA GPU:

    python benchmarks/gpu_throughput.py                       # 1.7B shape, short and long data, 30 steps
    python benchmarks/gpu_throughput.py --shape 8b --steps 20 --out results.json
    python benchmarks/gpu_throughput.py --allow-cpu --shape tiny --steps 2   # the CI smoke run (figures mean nothing)

The model is built from a config with random weights (no download): `135m` is SmolLM2-135M's shape,
`1.7b` SmolLM2-1.7B's, `8b` Llama-3-8B's, `tiny` a 2-layer toy for the smoke test; the tokenizer is
the bundled SmolLM2's (`--tokenizer`). Each of two workloads is trained by three arms in this one
process, one after the other, with the same pre-tokenized examples (loss on the assistant tokens),
the same LoRA (r 16, alpha 32, dropout 0.05, all linear layers), learning rate, schedule and number
of optimizer steps:

  * short: Banking77 queries as chats (system prompt, the customer's message, the intent);
  * long:  multi-turn chats, consecutive HH-RLHF (harmless) conversations joined into one chat of
           about `--long-tokens` tokens.

  * tunesmith:   `train_sft` with its automatic settings for everything but the learning rate and
                 the steps (packed rows, micro-batch and accumulation sized by the resolver, fused
                 kernels, attention, logging interval);
  * TRL default: `SFTTrainer` with its defaults (padded batches of 8, gradient checkpointing on),
                 accumulating to the same examples per optimizer step;
  * TRL best:    `SFTTrainer` with packing (padding-free, best-fit decreasing) at tunesmith's packed
                 row length, micro-batch and accumulation, Liger kernels when installed, no
                 gradient checkpointing, the same attention implementation as tunesmith.

Measured for each (train/speed.py's `SpeedCallback`, the figures tunesmith writes to run.json):
real tokens per second of training time, peak GPU memory (`torch.cuda.max_memory_allocated`),
model FLOPs utilisation (4 x params FLOPs per token for LoRA, against the GPU's bf16 peak), and the
mean training loss over the last logged steps. It prints a table per workload and the ratios
tunesmith / TRL default and tunesmith / TRL best. Without a CUDA GPU it says so and exits 0,
unless `--allow-cpu`.
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import json
import math
import os
import random
import re
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SHORT_DATA = DATA / "banking77" / "train.csv"
LONG_DATA = DATA / "hh-rlhf-harmless" / "test.jsonl.gz"

# Model shapes from the published configs (random weights; the vocabulary is at least the tokenizer's).
SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": True},
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "tie_word_embeddings": True, "vocab_size": 49152},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "tie_word_embeddings": True, "vocab_size": 49152},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": False, "vocab_size": 128256},
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
SYSTEM_PROMPT = "Classify the customer's banking query: answer with its intent label only."


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default=None,
                   help="model shape (default 1.7b on a GPU, 135m with --allow-cpu)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default 30 on a GPU, 3 on CPU)")
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--workloads", default="short,long", help="comma-separated: short, long")
    p.add_argument("--arms", default="tunesmith,trl-best,trl-default", help="comma-separated: tunesmith, trl-best, trl-default")
    p.add_argument("--tokenizer", default="smollm2-135m", help="tunesmith model name or folder whose tokenizer to use")
    p.add_argument("--short-data", default=str(SHORT_DATA), help="Banking77-style CSV (text,category)")
    p.add_argument("--long-data", default=str(LONG_DATA), help="HH-RLHF JSONL (.gz) with 'chosen' transcripts")
    p.add_argument("--rows", type=int, default=None, help="rows per workload (default 4000 on a GPU, 64 on CPU)")
    p.add_argument("--long-tokens", type=int, default=None, help="tokens per long chat (default 2048; 256 on CPU)")
    p.add_argument("--last", type=int, default=5, help="mean loss over this many last logged steps")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", metavar="PATH", help="write the results to this JSON file")
    p.add_argument("--allow-cpu", action="store_true", help="run without a CUDA GPU (a smoke test: the figures mean nothing)")
    return p.parse_args()


# --------------------------------------------------------------------------- data


def short_rows(path: str, n: int, seed: int) -> list[dict]:
    """A seeded sample of Banking77 rows as chats (the file is sorted by intent)."""
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    sample = random.Random(seed).sample(records, min(n, len(records)))
    return [{"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": r["text"]},
                          {"role": "assistant", "content": r["category"]}]} for r in sample]


SPEAKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def hh_conversations(path: str) -> list[list[dict]]:
    """The 'chosen' transcripts of an HH-RLHF file as message lists (user/assistant turns)."""
    opener = gzip.open if path.endswith(".gz") else open
    out = []
    with opener(path, "rt") as f:
        for line in f:
            parts = SPEAKER.split(json.loads(line)["chosen"])
            turns = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                     for who, text in zip(parts[1::2], parts[2::2]) if text.strip()]
            while turns and turns[-1]["role"] != "assistant":
                turns.pop()
            if turns and turns[0]["role"] == "user" and all(
                    t["role"] == ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(turns)):
                out.append(turns)
    return out


def long_rows(path: str, n: int, tokens: int, tokenizer, seed: int) -> list[dict]:
    """`n` multi-turn chats of about `tokens` tokens each: consecutive conversations joined into one
    session (a conversation is used again once all are used)."""
    conversations = hh_conversations(path)
    random.Random(seed).shuffle(conversations)
    lengths = [sum(len(tokenizer(t["content"], add_special_tokens=False)["input_ids"]) + 4 for t in c)
               for c in conversations]
    rows, i = [], 0
    while len(rows) < n:
        messages, size = [], 0
        while size < tokens:
            messages += conversations[i % len(conversations)]
            size += lengths[i % len(conversations)]
            i += 1
        rows.append({"messages": messages})
    return rows


# --------------------------------------------------------------------------- model


def build_model(shape: str, tokenizer, folder: Path) -> Path:
    """A Llama of the named shape with random weights, saved with `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    values = dict(SHAPES[shape])
    values["vocab_size"] = max(values.get("vocab_size", 0), len(tokenizer))
    config = LlamaConfig(**values, max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise on the GPU: an 8B model in seconds, not minutes
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


# --------------------------------------------------------------------------- the arms


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def last_mean(losses: list[float], k: int) -> float | None:
    tail = [x for x in losses if x is not None][-k:]
    return sum(tail) / len(tail) if tail else None


def run_tunesmith(model_dir: Path, rows: list[dict], args, logging_steps: int, work: Path) -> dict:
    from tunesmith.config import RunConfig, load_config
    from tunesmith.runs import RunDir
    from tunesmith.train.sft import train_sft

    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RunConfig.model_validate({
        "model": {"name": str(model_dir)},
        "data": {"train": str(train_file), "validation_split": 0.0, "test_split": 0.0, "force": True},
        "method": {"adapter": "lora", "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"]},
        "train": {"learning_rate": args.learning_rate, "max_steps": args.steps, "epochs": 100,
                  "eval_steps": 10**6, "save_total_limit": 1, "seed": args.seed, "logging_steps": logging_steps},
    })
    run = RunDir(work / "run")
    train_sft(config, run.path)
    info = json.loads(run.summary_file.read_text())
    resolved = load_config(run.path / "config.yaml").train
    losses = [json.loads(line).get("train_loss") for line in run.metrics_file.read_text().splitlines()]
    return {
        "tokens_per_s": info.get("tokens_per_s"), "peak_memory_gb": info.get("peak_memory_gb"), "mfu": info.get("mfu"),
        "loss_last": last_mean(losses, args.last), "steps": info.get("global_step"), "tokens": info.get("tokens_seen"),
        "layout": f"packed {resolved.batch_size} x {resolved.pack_length} tokens, accumulation {resolved.gradient_accumulation}",
        "pack_length": int(resolved.pack_length), "batch_size": int(resolved.batch_size),
        "gradient_accumulation": int(resolved.gradient_accumulation), "max_length": int(resolved.max_length),
        "fused_kernels": info.get("fused_kernels"), "attention": info.get("attention"),
    }


def run_trl(model_dir: Path, examples: list[dict], args, best: bool, plan: dict, logging_steps: int, work: Path) -> dict:
    """TRL's SFTTrainer on the same tokenized examples (input_ids + assistant_masks)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from tunesmith.models import default_dtype, load_tokenizer
    from tunesmith.train.callbacks import SpeedCallback
    from tunesmith.train.speed import attention_choice, liger_architectures

    on_gpu = torch.cuda.is_available()
    tokenizer = load_tokenizer(str(model_dir))
    kwargs = {"attn_implementation": attention_choice(on_gpu)[0]} if best else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=default_dtype(), **kwargs)
    liger = best and on_gpu and bool(liger_architectures())
    examples_per_update = plan["examples_per_update"]
    if best:  # tunesmith's packed layout
        layout = {"per_device_train_batch_size": plan["batch_size"],
                  "gradient_accumulation_steps": plan["gradient_accumulation"], "max_length": plan["pack_length"],
                  "packing": True, "gradient_checkpointing": False, "use_liger_kernel": liger}
    else:  # TRL's defaults: padded batches of 8, gradient checkpointing on
        layout = {"per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": max(1, math.ceil(examples_per_update / 8)),
                  "max_length": plan["max_length"], "packing": False}
    config = SFTConfig(
        output_dir=str(work / ("trl-best" if best else "trl-default")), learning_rate=args.learning_rate,
        max_steps=args.steps, num_train_epochs=100, weight_decay=0.01, warmup_steps=0.05, lr_scheduler_type="cosine",
        logging_steps=logging_steps, save_strategy="no", report_to="none", disable_tqdm=True, seed=args.seed,
        data_seed=args.seed, bf16=on_gpu and torch.cuda.is_bf16_supported(), dataset_num_proc=None, **layout)
    callback = SpeedCallback()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # use_liger_kernel is deprecated in favour of Hub kernels
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                             peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                                    target_modules="all-linear", task_type="CAUSAL_LM"),
                             callbacks=[callback])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    figures = callback.summary()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if best:
        described = f"packed {plan['batch_size']} x {plan['pack_length']} tokens, accumulation {plan['gradient_accumulation']}"
    else:
        described = f"padded 8 rows, accumulation {layout['gradient_accumulation_steps']}, checkpointing"
    del trainer, model
    return {"tokens_per_s": figures.get("tokens_per_s"), "peak_memory_gb": figures.get("peak_memory_gb"),
            "mfu": figures.get("mfu"), "loss_last": last_mean(losses, args.last), "steps": args.steps,
            "tokens": callback.tokens, "layout": described + (", Liger" if liger else ""),
            "fused_kernels": "liger" if liger else None, "attention": kwargs.get("attn_implementation", "sdpa")}


# --------------------------------------------------------------------------- report


def ratio(a, b):
    return a / b if a and b else None


def print_table(name: str, results: dict) -> None:
    print(f"\n{name}")
    print(f"  {'arm':<12} {'tokens/s':>10} {'peak GB':>8} {'MFU':>6} {'loss (last)':>11}  layout")
    for arm, r in results.items():
        if "error" in r:
            print(f"  {arm:<12} {r['error']}")
            continue
        tps = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-"
        mem = f"{r['peak_memory_gb']:.1f}" if r.get("peak_memory_gb") is not None else "-"
        mfu = f"{r['mfu']:.0%}" if r.get("mfu") is not None else "-"
        loss = f"{r['loss_last']:.4f}" if r.get("loss_last") is not None else "-"
        print(f"  {arm:<12} {tps:>10} {mem:>8} {mfu:>6} {loss:>11}  {r.get('layout', '')}")
    ts = results.get("tunesmith", {})
    for other in ("trl-default", "trl-best"):
        value = ratio(ts.get("tokens_per_s"), results.get(other, {}).get("tokens_per_s"))
        if value:
            print(f"  tunesmith / {other}: {value:.2f}x tokens/s")


def main() -> None:
    args = parse_args()
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print("No CUDA GPU here: this benchmark measures GPU throughput (pass --allow-cpu for a smoke run).")
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    from tunesmith.models import load_tokenizer
    from tunesmith.train.auto import CPU_EXAMPLES_PER_UPDATE, GPU_EXAMPLES_PER_UPDATE
    from tunesmith.train.sft import tokenize_chats

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    args.shape = args.shape or ("1.7b" if on_gpu else "135m")
    args.steps = args.steps or (30 if on_gpu else 3)
    rows_n = args.rows or (4000 if on_gpu else 64)
    long_tokens = args.long_tokens or (2048 if on_gpu else 256)
    logging_steps = max(1, args.steps // 10)
    tokenizer = load_tokenizer(args.tokenizer)
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    print(f"Shape {args.shape}, {args.steps} steps, lr {args.learning_rate}, LoRA r{LORA['r']} all-linear, on {device}")

    results = {"shape": args.shape, "steps": args.steps, "learning_rate": args.learning_rate, "device": device, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        work = Path(tmp)
        model_dir = build_model(args.shape, tokenizer, work / "model")
        for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
            if workload == "short":
                rows = short_rows(args.short_data, rows_n, args.seed)
            else:
                rows = long_rows(args.long_data, rows_n, long_tokens, tokenizer, args.seed)
            examples = tokenize_chats(rows, tokenizer, 8192).examples
            mean_tokens = sum(len(e["input_ids"]) for e in examples) / len(examples)
            print(f"\n{workload}: {len(examples)} chats, {mean_tokens:.0f} tokens on average")
            arms: dict[str, dict] = {}
            plan = None
            for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
                print(f"  training {arm} ...", flush=True)
                folder = work / workload / arm
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    if arm == "tunesmith":
                        arms[arm] = run_tunesmith(model_dir, rows, args, logging_steps, folder)
                        plan = arms[arm]
                    else:
                        if plan is None:  # TRL runs alone: the layout tunesmith's CPU/GPU rules would give
                            plan = {"pack_length": 4096 if on_gpu else 512, "batch_size": 1, "gradient_accumulation": 1,
                                    "max_length": max(len(e["input_ids"]) for e in examples)}
                        examples_per_step = GPU_EXAMPLES_PER_UPDATE if on_gpu else CPU_EXAMPLES_PER_UPDATE
                        layout = dict(plan, examples_per_update=examples_per_step)
                        max_length = min(layout["max_length"], 8192)
                        data = [{k: v[:max_length] for k, v in e.items()} for e in examples]
                        arms[arm] = run_trl(model_dir, data, args, arm == "trl-best", layout, logging_steps, folder)
                except torch.cuda.OutOfMemoryError as exc:
                    arms[arm] = {"error": f"out of GPU memory ({str(exc).splitlines()[0][:80]})"}
                release()
            results["workloads"][workload] = {"chats": len(examples), "mean_tokens": mean_tokens, "arms": arms}
            print_table(workload, arms)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
