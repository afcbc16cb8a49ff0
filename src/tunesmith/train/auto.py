"""Fill "auto" config values from the data, the model and the hardware, and say why.

Each rule is a plain line with its reason; the reasons land in `config.yaml` under
`reasons`, so a user can see (and override) every choice.
"""

from __future__ import annotations

import math

import numpy as np

from tunesmith.config import RunConfig
from tunesmith.data.formats import token_lengths
from tunesmith.models import count_params

# Examples per optimizer update: 16 is the usual fine-tuning batch; on a CPU (a 135M model
# trains at roughly 150-190 tokens/s on two cores) it keeps updates frequent in a short run,
# on a GPU a larger batch keeps the device busy and the gradient less noisy.
CPU_EXAMPLES_PER_UPDATE = 16
GPU_EXAMPLES_PER_UPDATE = 64


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        _, total = torch.cuda.mem_get_info()
        return {"device": "cuda", "name": torch.cuda.get_device_name(), "memory_gb": total / 2**30}
    return {"device": "cpu", "name": "cpu", "threads": torch.get_num_threads()}


def resolve(
    config: RunConfig, rows: list[dict], tokenizer, has_validation_file: bool, kind: str = "chat"
) -> RunConfig:
    """Return a copy of `config` with every "auto" value filled and a reason for each.
    `kind` is what the rows are: "chat" (sft), "pretrain" (raw text) or "classify"."""
    config = config.model_copy(deep=True)
    reasons = dict(config.reasons)
    d, t, m = config.data, config.train, config.method
    hw = hardware()
    on_gpu = hw["device"] == "cuda"
    n = len(rows)
    params = count_params(config.model.name)

    def set_(section, key, value, why):
        setattr(section, key, value)
        reasons[f"{'data' if section is d else 'train'}.{key}"] = why

    if d.validation_split == "auto":
        if has_validation_file:
            set_(d, "validation_split", 0.0, "a validation file was given")
        elif n < 20:
            set_(d, "validation_split", 0.0, f"only {n} rows: too few to hold any out (no early stopping)")
        else:
            frac = min(0.1, 200 / n)
            set_(d, "validation_split", round(frac, 4), f"10% of {n} rows, at most 200: enough for a stable loss")

    if t.best_metric == "auto":
        metric = "accuracy" if kind == "classify" else "loss"
        set_(t, "best_metric", metric, "classification is judged by accuracy" if kind == "classify" else "validation loss")

    lengths = token_lengths(rows, "chat" if kind == "chat" else "classify" if kind == "classify" else "pretrain", tokenizer)
    if kind == "pretrain":
        _resolve_pretrain(t, set_, lengths, on_gpu, hw)
    elif kind == "classify":
        _resolve_classify(t, set_, lengths, on_gpu, hw, n)
    else:
        _resolve_chat(t, set_, lengths, on_gpu, hw, n)

    if t.learning_rate == "auto":
        value, why = learning_rate(m.adapter, params, kind)
        set_(t, "learning_rate", value, why)

    if t.epochs == "auto":
        if kind == "pretrain":
            total = sum(lengths)
            value = 2 if total < 1_000_000 else 1
            set_(t, "epochs", value, f"{total} tokens of text: {value} epoch(s); more repeats of raw text overfit")
        else:
            value = 3 if n < 1000 else 2 if n < 10000 else 1
            set_(t, "epochs", value, f"{n} rows: {value} epoch(s); small sets need repeats, large ones do not")

    if t.eval_steps == "auto":
        n_train = n * (1 - float(d.validation_split))
        if kind == "classify":
            steps = math.ceil(n_train * float(t.epochs) / (int(t.batch_size) * int(t.gradient_accumulation)))
        else:
            total_tokens = n_train * float(np.mean(lengths)) * float(t.epochs)
            tokens_per_step = int(t.pack_length) * int(t.batch_size) * int(t.gradient_accumulation)
            steps = math.ceil(total_tokens / tokens_per_step)
        steps = t.max_steps or max(1, steps)
        value = max(5, steps // 5)
        set_(t, "eval_steps", value, f"about {steps} optimizer steps in all: evaluate (and checkpoint) about 5 times")

    config.reasons = reasons
    return config


def _resolve_chat(t, set_, lengths, on_gpu, hw, n) -> None:
    if t.max_length == "auto":
        # Packing makes a long max_length cost nothing for short rows, so cover the longest
        # example and cut only beyond the hardware cap.
        p99, longest = int(np.percentile(lengths, 99)), max(lengths)
        cap = 4096 if on_gpu else 1024
        value = min(cap, max(64, _round_up(longest, 32)))
        cut = sum(1 for x in lengths if x > value)
        set_(t, "max_length", value,
             f"longest example {longest} tokens (p99 {p99}); {cut} of {n} rows over it are cut; cap {cap} on {hw['device']}")

    max_length = int(t.max_length)
    if t.pack_length == "auto":
        value = max(max_length, 4096 if on_gpu else 512)
        set_(t, "pack_length", value, f"short examples are packed {value} tokens to a row, so no compute goes to padding")

    if t.batch_size == "auto":
        value = 1 if not on_gpu else max(1, 16384 // int(t.pack_length))
        set_(t, "batch_size", value, "one packed row per step on CPU" if not on_gpu else f"about 16k tokens per step on {hw['name']}")

    if t.gradient_accumulation == "auto":
        examples = GPU_EXAMPLES_PER_UPDATE if on_gpu else CPU_EXAMPLES_PER_UPDATE
        mean_len = float(np.mean(lengths))
        per_row = max(1.0, int(t.pack_length) / mean_len)  # examples one packed row holds
        value = max(1, math.ceil(examples / (per_row * int(t.batch_size))))
        set_(t, "gradient_accumulation", value,
             f"about {examples} examples per optimizer update on {hw['device']} (mean length {mean_len:.0f} tokens)")


def _resolve_pretrain(t, set_, lengths, on_gpu, hw) -> None:
    if t.max_length == "auto":
        # Text is cut into blocks of this many tokens: long enough for document-level
        # context, short enough that a CPU step stays in seconds.
        value = 2048 if on_gpu else 512
        set_(t, "max_length", value, f"text is packed into {value}-token blocks on {hw['device']}")
    if t.pack_length == "auto":
        set_(t, "pack_length", int(t.max_length), "blocks are already full: pack length = block length")
    if t.batch_size == "auto":
        value = 1 if not on_gpu else max(1, 16384 // int(t.max_length))
        set_(t, "batch_size", value, "one block per step on CPU" if not on_gpu else f"about 16k tokens per step on {hw['name']}")
    if t.gradient_accumulation == "auto":
        # Raw text has no short examples to average over: aim at a token count per update.
        target = 65536 if on_gpu else 4096
        value = max(1, target // (int(t.max_length) * int(t.batch_size)))
        set_(t, "gradient_accumulation", value, f"about {target} tokens per optimizer update on {hw['device']}")


def _resolve_classify(t, set_, lengths, on_gpu, hw, n) -> None:
    if t.max_length == "auto":
        p99, longest = int(np.percentile(lengths, 99)), max(lengths)
        cap = 2048 if on_gpu else 512
        value = min(cap, max(16, _round_up(longest, 8)))
        cut = sum(1 for x in lengths if x > value)
        set_(t, "max_length", value, f"longest text {longest} tokens (p99 {p99}); {cut} of {n} over it are cut; cap {cap}")
    if t.pack_length == "auto":
        set_(t, "pack_length", int(t.max_length), "classification rows are padded per batch, not packed")
    if t.batch_size == "auto":
        value = 64 if on_gpu else 32
        set_(t, "batch_size", value, f"{value} texts per step: short texts batch cheaply, and 77-way labels want large batches")
    if t.gradient_accumulation == "auto":
        set_(t, "gradient_accumulation", 1, "the batch is already large enough for a stable gradient")


def learning_rate(adapter: str, params: int | None, kind: str) -> tuple[float, str]:
    """Peak learning rate by what is trained. Virtual-token and scaling methods move few
    parameters and need larger steps than LoRA; full fine-tuning needs much smaller ones.
    The LoRA variants share LoRA's rate (rsLoRA at a quarter of it scored 14% against
    LoRA's 50% in benchmarks/peft_methods.py: its new head learned too slowly), except OLoRA."""
    if adapter == "full":
        return full_learning_rate(params)
    if adapter == "prompt":
        return 3e-2, "prompt tuning trains only virtual-token embeddings: 3e-2, the usual rate"
    if adapter == "prefix":
        return 1e-2, "prefix tuning trains only per-layer prefixes: 1e-2, the usual rate"
    if adapter == "ia3":
        return 1e-2, "IA3 learns scaling vectors only: 1e-2, several times a LoRA rate"
    value, why = lora_learning_rate(params)
    if kind == "classify" and params is not None and params < 300_000_000:
        # The new head starts from random weights and wants a gentler rate than 4e-3; 1e-3
        # reached 80.7% on Banking77 in 150 steps (benchmarks/classify_vs_generate.py).
        value, why = 1e-3, f"{params / 1e6:.0f}M parameters with a new classification head: 1e-3"
    if adapter == "olora":
        # OLoRA's adapters start as an orthonormal slice of the weights. On Banking77
        # classification (60 steps) it stayed at chance at LoRA's rate (1.2%) and reached
        # 5.8% at a fifth of it: still far behind LoRA, but the safer start.
        value, why = value / 5, why + "; divided by 5 for OLoRA, which stalled at the LoRA rate"
    return value, why


def lora_learning_rate(params: int | None) -> tuple[float, str]:
    """Smaller models tolerate, and need, larger LoRA steps. Measured on the quickstart
    (SmolLM2-135M, one epoch over 1,232 Banking77 rows, test accuracy): 1e-3 -> 23%,
    2e-3 -> 41%, 4e-3 -> 51%."""
    if params is None:
        return 2e-4, "parameter count unknown: 2e-4, the common LoRA rate"
    if params < 300_000_000:
        return 4e-3, f"{params / 1e6:.0f}M parameters: small models learn fastest near 4e-3 with LoRA (measured on SmolLM2-135M)"
    if params < 1_000_000_000:
        return 1e-3, f"{params / 1e6:.0f}M parameters: 1e-3, between the small-model and the 1B+ LoRA rates"
    return 2e-4, f"{params / 1e9:.1f}B parameters: 2e-4, the common LoRA rate for 1B+ models"


def full_learning_rate(params: int | None) -> tuple[float, str]:
    """Full fine-tuning moves every weight, so it needs a rate 10-50x below LoRA's."""
    if params is not None and params < 1_000_000_000:
        return 5e-5, "full fine-tuning under 1B parameters: 5e-5"
    return 1e-5, "full fine-tuning at 1B+ parameters (or unknown size): 1e-5"


def _round_up(x: int, k: int) -> int:
    return int(math.ceil(x / k) * k)
