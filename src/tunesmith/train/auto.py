"""Fill "auto" config values from the data, the model and the hardware, and say why.

Each rule is a plain line with its reason; the reasons land in `config.yaml` under
`reasons`, so a user can see (and override) every choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tunesmith.config import PREFERENCE_STAGES, RunConfig
from tunesmith.data.formats import token_lengths
from tunesmith.data.splits import test_split
from tunesmith.errors import ModelError
from tunesmith.models import count_params, resolve_model
from tunesmith.train.speed import (
    attention_choice,
    fused_kernels_choice,
    liger_architectures,
    liger_installed,
    peak_tflops,
)

# Examples per optimizer update: 16 is the usual fine-tuning batch; on a CPU (a 135M model
# trains at roughly 150-190 tokens/s on two cores) it keeps updates frequent in a short run,
# on a GPU a larger batch keeps the device busy and the gradient less noisy.
CPU_EXAMPLES_PER_UPDATE = 16
GPU_EXAMPLES_PER_UPDATE = 64


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {"device": "cuda", "name": torch.cuda.get_device_name(), "memory_gb": total / 2**30,
                "free_gb": free / 2**30}
    return {"device": "cpu", "name": "cpu", "threads": torch.get_num_threads()}


# Each method's published default strength (see `MethodConfig.beta`).
BETA = {
    "dpo": (0.1, "DPO's usual 0.1: pulled toward the reference model, not pinned to it"),
    "orpo": (0.1, "ORPO paper's lambda 0.1 for the odds-ratio term next to the SFT loss"),
    "simpo": (2.0, "SimPO paper's beta 2.0 (length-normalised rewards need a larger scale)"),
    "kto": (0.1, "KTO paper's 0.1"),
    "grpo": (0.04, "KL penalty 0.04 (DeepSeekMath's GRPO): keeps the policy near the reference"),
    "rloo": (0.05, "KL penalty 0.05 (TRL's RLOO default): keeps the policy near the reference"),
}
PAIR_KINDS = ("reward", "preference")


def resolve(
    config: RunConfig, rows: list[dict], tokenizer, has_validation_file: bool, kind: str = "chat"
) -> RunConfig:
    """Return a copy of `config` with every "auto" value filled and a reason for each.
    `kind` is what the rows are: "chat" (sft), "pretrain" (raw text), "classify", "reward" or
    "preference" (prompt/chosen/rejected or KTO rows) or "rl" (prompts with optional answers)."""
    config = config.model_copy(deep=True)
    reasons = dict(config.reasons)
    d, t, m = config.data, config.train, config.method
    hw = hardware()
    on_gpu = hw["device"] == "cuda"
    n = len(rows)
    params = count_params(config.model.name)

    def set_(section, key, value, why):
        setattr(section, key, value)
        reasons[f"{'data' if section is d else 'method' if section is m else 'train'}.{key}"] = why

    if d.validation_split == "auto":
        if has_validation_file:
            set_(d, "validation_split", 0.0, "a validation file was given")
        elif n < 20:
            set_(d, "validation_split", 0.0, f"only {n} rows: too few to hold any out (no early stopping)")
        else:
            frac = min(0.1, 200 / n)
            set_(d, "validation_split", round(frac, 4), f"10% of {n} rows, at most 200: enough for a stable loss")

    if d.test_split == "auto":  # recipes resolve it before splitting; this covers direct callers
        set_(d, "test_split", *test_split(n, bool(d.test)))

    if t.best_metric == "auto":
        metric, why = {
            "classify": ("accuracy", "classification is judged by accuracy"),
            "reward": ("accuracy", "a reward model is judged by how often it ranks the chosen answer first"),
            "rl": ("reward", "reinforcement learning is judged by the reward of its answers"),
        }.get(kind, ("loss", "validation loss"))
        set_(t, "best_metric", metric, why)

    stage = m.stages[-1]
    if m.beta is None and stage in BETA:
        set_(m, "beta", *BETA[stage])

    lengths = token_lengths(rows, _length_task(kind, rows), tokenizer)
    shape = model_shape(config.model.name) if on_gpu else None  # the GPU rules need the architecture
    if m.quantize == "auto":
        set_(m, "quantize", *choose_quantize(shape, params, min(max(lengths), 4096), m.adapter, hw))
    if t.fused_kernels == "auto":
        supported = liger_architectures() if on_gpu else set()
        set_(t, "fused_kernels", *fused_kernels_choice(on_gpu, (shape or {}).get("model_type"), liger_installed(), supported))
    accumulation_auto = t.gradient_accumulation == "auto"
    if kind == "pretrain":
        _resolve_pretrain(t, set_, lengths, on_gpu, hw)
    elif kind == "classify":
        _resolve_classify(t, set_, lengths, on_gpu, hw, n)
    elif kind in PAIR_KINDS:
        _resolve_pairs(t, set_, lengths, on_gpu, hw, n)
    elif kind == "rl":
        _resolve_rl(t, m, set_, lengths, on_gpu, hw, n, rows, tokenizer)
    else:
        gpu = GpuFacts.of(shape, params, hw, m) if on_gpu and shape and params else None
        _resolve_chat(t, set_, lengths, on_gpu, hw, n, gpu)

    procs = config.distributed.num_processes
    if accumulation_auto and procs > 1:
        # Every process adds its own batch to an update, so each accumulates less.
        value = max(1, math.ceil(int(t.gradient_accumulation) / procs))
        why = reasons["train.gradient_accumulation"]
        set_(t, "gradient_accumulation", value, f"{why}, shared by {procs} processes")

    if t.learning_rate == "auto":
        value, why = learning_rate(m.adapter, params, kind)
        set_(t, "learning_rate", value, why)

    if t.epochs == "auto":
        if kind == "pretrain":
            total = sum(lengths)
            value = 2 if total < 1_000_000 else 1
            set_(t, "epochs", value, f"{total} tokens of text: {value} epoch(s); more repeats of raw text overfit")
        elif kind in PAIR_KINDS:
            value = 2 if n < 1000 else 1
            set_(t, "epochs", value, f"{n} pairs: {value} epoch(s); preference training overfits the pairs quickly")
        elif kind == "rl":
            set_(t, "epochs", 1, "one pass over the prompts: every step samples fresh answers anyway")
        else:
            value = 3 if n < 1000 else 2 if n < 10000 else 1
            set_(t, "epochs", value, f"{n} rows: {value} epoch(s); small sets need repeats, large ones do not")

    if t.eval_steps == "auto":
        n_train = n * (1 - float(d.validation_split))
        rows_per_step = int(t.batch_size) * int(t.gradient_accumulation) * procs
        if kind in ("classify", *PAIR_KINDS):
            steps = math.ceil(n_train * float(t.epochs) / rows_per_step)
        elif kind == "rl":
            prompts_per_step = rows_per_step // m.num_generations
            steps = math.ceil(n_train * float(t.epochs) / max(1, prompts_per_step))
        else:
            total_tokens = n_train * float(np.mean(lengths)) * float(t.epochs)
            tokens_per_step = int(t.pack_length) * rows_per_step
            steps = math.ceil(total_tokens / tokens_per_step)
        steps = t.max_steps or max(1, steps)
        value = max(5, steps // 5)
        set_(t, "eval_steps", value, f"about {steps} optimizer steps in all: evaluate (and checkpoint) about 5 times")

    if t.logging_steps == "auto":
        if on_gpu:
            # Each log reads the loss back from the GPU, which waits for every queued kernel:
            # log every 10 steps (still 5 or more lines for a short run, eval steps apart at most).
            value = max(1, min(10, int(t.eval_steps) // 5 if t.eval_steps != "auto" else 10))
            set_(t, "logging_steps", value, f"every {value} steps on a GPU: each log makes the GPU wait for the host")
        else:
            set_(t, "logging_steps", 1, "every step on a CPU: reading the loss back costs nothing there")

    config.reasons = reasons
    return config


def _length_task(kind: str, rows: list[dict]) -> str:
    """The `token_lengths` task of a resolver kind's rows."""
    if kind in PAIR_KINDS:
        return "kto" if rows and "completion" in rows[0] else "preference"
    return {"rl": "prompt", "classify": "classify", "pretrain": "pretrain"}.get(kind, "chat")


def _p95_length(lengths: list[int], on_gpu: bool) -> tuple[int, int, int, int]:
    """(max_length, p95, longest, cap) for rows whose overflow loses its earliest turns
    rather than being cut: the 95th percentile, rounded up, within the hardware cap."""
    p95, longest = int(np.percentile(lengths, 95)), max(lengths)
    cap = 2048 if on_gpu else 512
    return min(cap, max(64, _round_up(p95, 32))), p95, longest, cap


def _resolve_pairs(t, set_, lengths, on_gpu, hw, n) -> None:
    if t.max_length == "auto":
        # Each pair costs two sequences (DPO: through two models), so cover most rows and let
        # the longest lose their earliest turns rather than pay for the outliers.
        value, p95, longest, cap = _p95_length(lengths, on_gpu)
        cut = sum(1 for x in lengths if x > value)
        set_(t, "max_length", value,
             f"95% of rows fit in {p95} tokens (longest {longest}); the {cut} longer ones lose their earliest turns; cap {cap}")
    if t.pack_length == "auto":
        set_(t, "pack_length", int(t.max_length), "pairs are padded per batch, not packed")
    if t.batch_size == "auto":
        value = 8 if on_gpu else 4
        set_(t, "batch_size", value, f"{value} rows per step on {hw['device']}")
    if t.gradient_accumulation == "auto":
        value = 4 if on_gpu else 2
        set_(t, "gradient_accumulation", value, f"{value * int(t.batch_size)} rows per optimizer update on {hw['device']}")


def _resolve_rl(t, m, set_, lengths, on_gpu, hw, n, rows, tokenizer) -> None:
    if t.max_length == "auto":
        value, p95, longest, _ = _p95_length(lengths, on_gpu)
        set_(t, "max_length", value, f"prompt tokens: 95% fit in {p95} (longest {longest}); longer prompts lose their earliest turns")
    if m.max_completion_length is None:
        answers = [r["answer"] for r in rows if r.get("answer")]
        cap = 512 if on_gpu else 128
        if answers:
            p95 = int(np.percentile([len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]], 95))
            value = min(cap, max(16, _round_up(int(p95 * 1.5), 16)))
            why = f"reference answers: 95% within {p95} tokens, plus half again for the model's own wording; cap {cap}"
        else:
            value = cap // 2
            why = f"no reference answers in the data: {value} tokens on {hw['device']}"
        set_(m, "max_completion_length", value, why)
    if t.pack_length == "auto":
        set_(t, "pack_length", int(t.max_length), "prompts are padded per batch, not packed")
    if t.batch_size == "auto":
        prompts = 8 if on_gpu else 2
        value = prompts * m.num_generations
        set_(t, "batch_size", value, f"{prompts} prompts x {m.num_generations} sampled answers per step on {hw['device']}")
    if t.gradient_accumulation == "auto":
        set_(t, "gradient_accumulation", 1, "each step already averages over every sampled answer")


def _resolve_chat(t, set_, lengths, on_gpu, hw, n, gpu: GpuFacts | None = None) -> None:
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
    if gpu is not None and (t.pack_length == "auto" or t.batch_size == "auto"):
        # On a GPU, size the micro-batch from the model, the lengths and the free memory.
        size = size_micro_batch(gpu, mean_length=float(np.mean(lengths)), max_length=max_length,
                                examples_per_update=GPU_EXAMPLES_PER_UPDATE,
                                pack_length=None if t.pack_length == "auto" else int(t.pack_length))
        if t.pack_length == "auto":
            set_(t, "pack_length", size.pack_length, size.reason)
        if t.batch_size == "auto":
            set_(t, "batch_size", size.batch_size, size.reason)
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


def classify_length(longest: int, on_gpu: bool) -> tuple[int, int]:
    """(max_length, cap) of a classifier whose longest text has `longest` tokens: that length
    rounded up to a multiple of 8, 16 to the cap (2048 on a GPU, 512 on a CPU)."""
    cap = 2048 if on_gpu else 512
    return min(cap, max(16, _round_up(longest, 8))), cap


def _resolve_classify(t, set_, lengths, on_gpu, hw, n) -> None:
    if t.max_length == "auto":
        p99, longest = int(np.percentile(lengths, 99)), max(lengths)
        value, cap = classify_length(longest, on_gpu)
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
    if kind == "reward":
        return reward_learning_rate(adapter, params)
    if kind in ("preference", "rl"):
        return alignment_learning_rate(adapter, params)
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


def default_learning_rate(config: RunConfig) -> float:
    """The automatic peak learning rate of a config's last stage (before any data is read)."""
    stage = config.method.stages[-1]
    kinds = {"sft": "chat", "pretrain": "pretrain", "classify": "classify", "reward": "reward"}
    kind = kinds.get(stage) or ("preference" if stage in PREFERENCE_STAGES else "rl")
    return learning_rate(config.method.adapter, count_params(config.model.name), kind)[0]


def reward_learning_rate(adapter: str, params: int | None) -> tuple[float, str]:
    """A reward model is a one-output classifier: a new head, trained with the adapter."""
    if adapter == "full":
        return 1e-5, "full fine-tuning of a reward model: 1e-5, TRL's reward-model rate"
    if adapter in ("prompt", "prefix", "ia3"):
        return 1e-2, f"{adapter} trains few parameters: 1e-2"
    return 5e-4, "reward model with a new scalar head: 5e-4 for the adapter and head"


def alignment_learning_rate(adapter: str, params: int | None) -> tuple[float, str]:
    """Preference and RL updates push on a model that already answers well: steps far smaller
    than SFT's, or the policy collapses onto a few phrasings (the DPO/GRPO recipes use 5e-7 to
    1e-6 full, about 1e-5 to 2e-4 with LoRA)."""
    if adapter == "full":
        return 1e-6, "full-weight preference/RL training: 1e-6 (Zephyr and GRPO recipes use 5e-7 to 1e-6)"
    if adapter in ("prompt", "prefix", "ia3"):
        return 1e-3, f"{adapter} trains few parameters: 1e-3, a tenth of its SFT rate"
    value, why = lora_learning_rate(params)
    return value / 20, f"a twentieth of the SFT LoRA rate ({why.split(':')[0]}): alignment nudges, it does not teach"


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


# --------------------------------------------------------------------------- memory planning

# Bytes per trainable parameter beyond its weight: its gradient (4) and Adam's two moments
# (8), plus an fp32 master copy (4) when the weights are bf16 on a GPU.
OPTIMIZER_BYTES = {"cpu": 12, "cuda": 16}
LORA_TRAINABLE = 0.04  # LoRA r 16 on every linear layer trains about 2-4% of a small model's weights
FULL_MIN_ROWS = 20_000  # below this, full fine-tuning mostly memorises; LoRA generalises as well


@dataclass
class MemoryPlan:
    """What fits: the adapter, 4-bit loading and gradient checkpointing, with the estimate."""

    adapter: str  # "lora" or "full"
    quantize: str  # "none" or "4bit"
    gradient_checkpointing: bool
    tokens: int  # tokens per micro-batch that fit
    needed_gb: float
    available_gb: float
    reason: str


def available_memory_gb(hw: dict) -> float:
    """Memory training can use: the GPU's free memory (what other processes hold is not ours), or
    the RAM the OS reports available."""
    if hw["device"] == "cuda":
        return float(hw.get("free_gb", hw["memory_gb"]))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


CPU_ACTIVATION_FACTOR = 1.5


def estimate_gb(params: int, hidden: int, layers: int, vocab: int, tokens: int, adapter: str, quantize: str,
                device: str, checkpointing: bool, logits: bool = True, heads: int = 0, seq: int = 0) -> float:
    """Training memory in GB: weights, gradients and Adam states of what is trained, and the
    activations of one micro-batch of `tokens` tokens (about 34 x hidden bytes per token and
    layer in 16-bit, after Korthikanti et al. 2022, plus 5 x heads x seq bytes for the
    attention scores of `seq`-token rows when `heads` is given: a CPU materialises them; with
    checkpointing, only each layer's input is kept), plus the logits over the vocabulary
    (`logits=False` where TRL computes the loss in chunks and they never materialise), and
    20% + 0.5 GB for the rest."""
    width = 2 if device == "cuda" else 4  # bf16 on a GPU, fp32 on a CPU
    weights = params * (0.55 if quantize == "4bit" else width)
    trainable = params if adapter == "full" else params * LORA_TRAINABLE
    optimizer = trainable * OPTIMIZER_BYTES[device]
    layer = (34 * hidden + 5 * heads * seq) * width / 2  # bytes per token of one layer's activations
    activations = tokens * (layers * 2 * hidden * width / 2 + layer) if checkpointing else tokens * layers * layer
    if device != "cuda":  # measured peak RSS of classifier runs (Banking77, MedQuAD) was 1.5x the formula on a CPU
        activations *= CPU_ACTIVATION_FACTOR
    logits = tokens * vocab * 4 * 2 if logits else 0  # fp32 logits and their gradient
    return (weights + optimizer + activations + logits) * 1.2 / 2**30 + 0.5


def plan_memory(name: str, params: int, hidden: int, layers: int, vocab: int, tokens: int, min_tokens: int,
                rows: int, device: str, available_gb: float, heads: int = 0) -> MemoryPlan:
    """Choose full fine-tuning or LoRA, then what makes it fit, cheapest first: fewer tokens
    per micro-batch (down to `min_tokens`, one sequence; accumulation keeps the examples per
    update), gradient checkpointing, then 4-bit weights on a GPU. Refuse with what would fit
    when nothing does. `heads` counts the attention scores of `min_tokens`-token rows
    (`estimate_gb`)."""
    def need(adapter, quantize="none", checkpointing=False, n=tokens):
        return estimate_gb(params, hidden, layers, vocab, n, adapter, quantize, device, checkpointing,
                           heads=heads, seq=min_tokens)

    budget = available_gb * 0.9  # leave room for the data loader and fragmentation
    full = need("full")
    if rows >= FULL_MIN_ROWS and full <= budget:
        return MemoryPlan("full", "none", False, tokens, full, available_gb,
                          f"full fine-tuning: {rows} rows are enough to move every weight, and it needs about "
                          f"{full:.1f} of {available_gb:.1f} GB")
    why_not_full = (f"full fine-tuning would need {full:.1f} GB" if full > budget
                    else f"{rows} rows are too few for full fine-tuning (LoRA matches it below {FULL_MIN_ROWS})")
    sizes = [tokens]
    while sizes[-1] // 2 >= min_tokens:
        sizes.append(sizes[-1] // 2)
    for quantize, checkpointing in (("none", False), ("none", True), ("4bit", True)):
        if quantize == "4bit" and device != "cuda":
            continue  # bitsandbytes 4-bit needs a CUDA GPU
        for n in sizes:
            needed = need("lora", quantize, checkpointing, n)
            if needed <= budget:
                how = ("LoRA" + (" with gradient checkpointing" if checkpointing else "")
                       + (" on 4-bit weights (QLoRA)" if quantize == "4bit" else "")
                       + (f", {n} tokens per micro-batch" if n < tokens else ""))
                return MemoryPlan("lora", quantize, checkpointing, n, needed, available_gb,
                                  f"{how}: about {needed:.1f} of {available_gb:.1f} GB; {why_not_full}")
    smallest = need("lora", "4bit" if device == "cuda" else "none", True, sizes[-1])
    raise ModelError(
        f"{name} needs about {smallest:.1f} GB to fine-tune even with LoRA"
        + (" on 4-bit weights" if device == "cuda" else "")
        + f" and one sequence per micro-batch, and this machine has {available_gb:.1f} GB: choose a smaller model"
        + ("" if device == "cuda" else " or a machine with a GPU") + "."
    )


# --------------------------------------------------------------------------- GPU sizing

# Host time per micro-batch and layer: Python and kernel launches for the forward and backward of
# one transformer block with LoRA on its linear layers (a few hundred small launches). The GPU
# idles for this long per micro-batch unless the micro-batch's compute hides it.
HOST_SECONDS_PER_LAYER = 1e-3
# Share of the peak FLOP/s that dense matrix multiplies sustain in a training step.
SUSTAINED_SHARE = 0.4
DEFAULT_PEAK_TFLOPS = 400.0  # a GPU not in speed.PEAK_BF16_TFLOPS: between an A100 and an H100
HEADROOM = 0.85  # of the free memory; the rest for the allocator's fragmentation and the data loader
SDPA_ROW_CAP = 16384  # a block-diagonal mask over a longer flattened row costs more than it saves


@dataclass(frozen=True)
class GpuFacts:
    """What the GPU sizing rules read: the model's shape, the adapter, the device."""

    params: int
    hidden: int
    layers: int
    vocab: int
    free_gb: float
    peak_tflops: float | None
    adapter: str
    quantize: str
    checkpointing: bool
    flash: bool
    name: str = "GPU"

    @classmethod
    def of(cls, shape: dict, params: int, hw: dict, method) -> GpuFacts:
        return cls(params=params, hidden=shape["hidden"], layers=shape["layers"], vocab=shape["vocab"],
                   free_gb=float(hw.get("free_gb", hw["memory_gb"])), peak_tflops=peak_tflops(hw["name"])[0],
                   adapter=method.adapter, quantize=method.quantize, checkpointing=method.checkpointing,
                   flash=attention_choice(True)[0] == "flash_attention_2", name=hw["name"])


@dataclass(frozen=True)
class MicroBatch:
    """A packed micro-batch: `batch_size` rows of `pack_length` tokens (one flattened row under SDPA)."""

    pack_length: int
    batch_size: int
    tokens: int
    fit_tokens: int  # the most tokens per micro-batch the memory estimate allows
    reason: str


def model_shape(name: str) -> dict | None:
    """hidden size, layers, vocabulary and architecture of a model from its config.json (no weights);
    None when it cannot be read (a hub id offline)."""
    try:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(resolve_model(name))
        c = c.get_text_config() if hasattr(c, "get_text_config") else c
        return {"hidden": int(c.hidden_size), "layers": int(c.num_hidden_layers), "vocab": int(c.vocab_size),
                "model_type": c.model_type}
    except Exception:  # noqa: BLE001 - unknown shape: the rules that need it fall back to fixed sizes
        return None


def fit_tokens(gpu: GpuFacts, logits: bool = False) -> int:
    """The most tokens per micro-batch that the memory estimate fits in `HEADROOM` of the free memory
    (the estimate grows linearly with tokens: solve for it)."""
    def need(tokens):
        return estimate_gb(gpu.params, gpu.hidden, gpu.layers, gpu.vocab, tokens, "full" if gpu.adapter == "full" else "lora",
                           "4bit" if gpu.quantize == "4bit" else "none", "cuda", gpu.checkpointing, logits=logits)

    fixed, per_token = need(0), need(1) - need(0)
    return max(0, int((gpu.free_gb * HEADROOM - fixed) / per_token))


def size_micro_batch(gpu: GpuFacts, mean_length: float, max_length: int, examples_per_update: int,
                     pack_length: int | None = None) -> MicroBatch:
    """Tokens per micro-batch on a GPU, and how they are laid out. A pure function of its inputs.

    The GPU waits on the host for about `layers` x `HOST_SECONDS_PER_LAYER` per micro-batch, so a
    micro-batch must carry enough compute (4 x params FLOPs per token) to hide it:
    - with FlashAttention-2 a token costs the same whatever the micro-batch, so take enough tokens
      that the host's share is 10% or less;
    - with SDPA the packed rows are flattened into one, attended through a block-diagonal mask over
      the whole row, so a token also costs 12 x layers x hidden x (row length) FLOPs: tokens/s peaks
      where the host time equals the mask's extra time, at sqrt(host x FLOP/s / (12 x layers x hidden)).
    Then no more than one optimizer update's worth of examples (`examples_per_update` x the mean
    example length: larger updates would take fewer, noisier-free but slower-learning steps), no
    more than the memory estimate fits, and at least one longest example."""
    flops = (gpu.peak_tflops or DEFAULT_PEAK_TFLOPS) * 1e12 * SUSTAINED_SHARE
    host = gpu.layers * HOST_SECONDS_PER_LAYER
    dense = (6.0 if gpu.adapter == "full" else 4.0) * gpu.params
    attention = 12.0 * gpu.layers * gpu.hidden
    if gpu.flash:
        busy = int(10 * host * flops / (dense + attention * mean_length))
        why = f"FlashAttention-2: {busy} tokens keep the host's share of a step under 10%"
    else:
        busy = min(SDPA_ROW_CAP, int(math.sqrt(host * flops / attention)))
        why = f"SDPA over one flattened row: {busy} tokens balance the host's time and the mask's"
    update = int(examples_per_update * mean_length)
    fit = fit_tokens(gpu)
    tokens = min(busy, max(update, max_length), fit)
    limit = "the compute target" if tokens == busy else "one optimizer update's examples" if tokens == update else "memory"
    if tokens < max_length:
        tokens, limit = max_length, "the longest example"
    if gpu.flash:
        row = pack_length or min(_round_within(tokens, 256, fit, max_length), max(8192, max_length))
        rows = max(1, min(round(tokens / row), fit // row))
    else:
        row, rows = pack_length or _round_within(tokens, 64, fit, max_length), 1
    reason = (f"{rows} packed row(s) of {row} tokens per micro-batch on {gpu.name} ({limit} sets it; {why}; "
              f"up to {fit} tokens fit in {HEADROOM:.0%} of {gpu.free_gb:.0f} GB free)")
    if fit < max_length:
        reason += f"; even one {max_length}-token example may not fit: consider --quantize 4bit or gradient checkpointing"
    return MicroBatch(row, rows, row * rows, fit, reason)


def _round_within(tokens: int, k: int, fit: int, floor: int) -> int:
    """`tokens` rounded up to a multiple of `k`, or down where up would not fit; never below `floor`."""
    up = _round_up(tokens, k)
    return max(floor, up if up <= fit else tokens // k * k)


def choose_quantize(shape: dict | None, params: int | None, tokens: int, adapter: str, hw: dict) -> tuple[str, str]:
    """`method.quantize: auto`: 4-bit (QLoRA) when the model in bfloat16 and the activations of one
    `tokens`-token sequence (with gradient checkpointing) would not fit in the GPU's free memory, and
    4-bit would. Needs a GPU, an adapter and the model's shape."""
    if hw["device"] != "cuda":
        return "none", "bitsandbytes quantization needs a CUDA GPU: full-precision weights on this machine"
    if adapter == "full":
        return "none", "full fine-tuning trains every weight: it cannot train a quantized base"
    if not shape or not params:
        return "none", "the model's size is unknown: bfloat16 weights"
    return quantize_decision(params, shape["hidden"], shape["layers"], shape["vocab"], tokens,
                             float(hw.get("free_gb", hw["memory_gb"])))


def quantize_decision(params: int, hidden: int, layers: int, vocab: int, tokens: int, free_gb: float) -> tuple[str, str]:
    """The 4-bit rule of `choose_quantize` on plain numbers (unit-tested with made-up memory sizes)."""
    budget = free_gb * HEADROOM
    bf16 = estimate_gb(params, hidden, layers, vocab, tokens, "lora", "none", "cuda", True, logits=False)
    if bf16 <= budget:
        return "none", f"bfloat16 LoRA needs about {bf16:.1f} GB of {free_gb:.1f} GB free: no quantization needed"
    nf4 = estimate_gb(params, hidden, layers, vocab, tokens, "lora", "4bit", "cuda", True, logits=False)
    fits = "fits" if nf4 <= budget else "still may not fit"
    return "4bit", (f"bfloat16 LoRA would need about {bf16:.1f} GB and {free_gb:.1f} GB are free: 4-bit weights "
                    f"(QLoRA, about {nf4:.1f} GB) {fits}")
