"""How fast a run trains, and what makes it fast on a GPU.

Figures on every run (`callbacks.SpeedCallback` measures them): real (non-padding) tokens per second of training
time, peak memory, and on a CUDA GPU the model FLOPs utilisation (MFU). They go into each
`metrics.jsonl` line, the progress bar, `run.json` and the report.

MFU = tokens/s x FLOPs per token / the device's peak dense bf16 FLOP/s, with FLOPs per token
counted as the model's matrix multiplies (attention scores and softmax left out, as in the
issue's 4 x params figure):

    forward            2 x N        (N: parameters in matrix multiplies)
    backward, inputs   2 x N        (gradients flow through every layer, frozen or not)
    backward, weights  2 x T        (T: trainable parameters; frozen weights get no gradient)

so 6 x N for full fine-tuning and about 4 x N for LoRA (4 x N + 2 x the adapter). N leaves
out the input embedding (a lookup, not a multiply) unless it is tied to the output head,
and counts 4-bit weights by their real shape. Recomputation under gradient checkpointing is
not counted: MFU measures useful work.

The GPU side: Liger kernels (`apply_fused_kernels`), the attention implementation, mixed
precision consistent with the quantized base, and a probe step that confirms a micro-batch
fits (`probe_peak_memory`). Every choice is a plain function of its inputs, unit-tested on CPU.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

# Dense (not sparse) bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets; the first
# name found in `torch.cuda.get_device_name()` wins (so "h100 pcie" comes before "h100", "l40s"
# before "l40" before "l4"). A GPU not listed gets no MFU unless TUNESMITH_PEAK_TFLOPS is set.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("gb200", 2500.0),
    ("b200", 2250.0),
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),  # SXM (HBM3)
    ("h200", 989.0),  # also GH200
    ("h800", 989.0),
    ("h20", 148.0),
    ("a100", 312.0),  # SXM and PCIe
    ("a800", 312.0),
    ("l40s", 362.0),
    ("l40", 181.0),
    ("l4", 121.0),
    ("a10g", 70.0),  # AWS's A10G: lower clocks than the A10
    ("a10", 125.0),
    ("a6000", 155.0),
    ("rtx 4090", 165.0),  # with fp32 accumulation, as PyTorch's bf16 matmuls use
    ("rtx 3090", 71.0),
    ("mi300x", 1307.0),
    ("mi250x", 383.0),
)
PEAK_ENV = "TUNESMITH_PEAK_TFLOPS"

# Liger's layer kernels. Its fused linear cross-entropy stays off: TRL's trainers (1.16) already
# compute the loss through their own chunked LM head, so the full logits never materialise, and
# Liger's version would replace the very forward TRL patches.
LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True,
                 "cross_entropy": False, "fused_linear_cross_entropy": False}

GB = 2**30


# --------------------------------------------------------------------------- FLOPs and MFU


def peak_tflops(device_name: str | None) -> tuple[float | None, str]:
    """(peak dense bf16 TFLOP/s, where it comes from) for a device name: $TUNESMITH_PEAK_TFLOPS
    when set, else the table above, else None (no MFU is reported)."""
    override = os.environ.get(PEAK_ENV)
    if override:
        try:
            value = float(override)
            if value > 0:
                return value, f"${PEAK_ENV}"
        except ValueError:
            pass
    name = (device_name or "").lower()
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"datasheet bf16 peak of {key.upper()}"
    return None, f"peak FLOP/s of {device_name or 'this device'} unknown (set ${PEAK_ENV})"


def flops_per_token(matmul_params: int, trainable_params: int) -> float:
    """Training FLOPs per token: 4 x N + 2 x trainable (see the module docstring)."""
    return 4.0 * matmul_params + 2.0 * trainable_params


def mfu(tokens_per_s: float | None, per_token: float | None, peak: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation, 0-1: achieved FLOP/s over `devices` x `peak` TFLOP/s. None when
    any figure is unknown (a CPU run, an unlisted GPU)."""
    if not tokens_per_s or not per_token or not peak:
        return None
    return tokens_per_s * per_token / (peak * 1e12 * max(1, devices))


def parameter_counts(model) -> tuple[int, int, int]:
    """(all parameters, parameters in matrix multiplies, trainable parameters) of a model, 4-bit
    weights counted by their real shape (bitsandbytes packs two into a byte)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding_weight = getattr(embedding, "weight", None)
    tied = embedding_weight is not None and embedding_weight is getattr(output, "weight", None)
    total = matmul = trainable = 0
    for p in model.parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)  # bitsandbytes Params4bit
        n = int(_numel(shape)) if shape is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
        if p is not embedding_weight or tied:
            matmul += n
    return total, matmul, trainable


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# --------------------------------------------------------------------------- memory


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> tuple[float | None, str]:
    """(peak memory in GiB, what it measures): on CUDA the tensors' peak since the last reset
    (`torch.cuda.max_memory_allocated`, what the model, its gradients, optimizer and activations
    needed); on a CPU the process's peak resident memory since it started (`cpu_rss`: every
    library and model it loaded, so an upper bound)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / GB, "cuda"
    try:
        import resource
        import sys
    except ImportError:  # Windows
        return None, "cpu_rss"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (GB if sys.platform == "darwin" else 2**20), "cpu_rss"  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- GPU choices


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_architectures() -> set[str]:
    """Model types the installed Liger has kernels for (empty when it is not installed)."""
    if not liger_installed():
        return set()
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:  # noqa: BLE001 - an incompatible install (no triton, ...) is "not available"
        return set()
    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def fused_kernels_choice(on_gpu: bool, model_type: str | None, installed: bool, supported: set[str]) -> tuple[bool, str]:
    """Whether to apply Liger's kernels, and why (the resolver's rule for `train.fused_kernels`)."""
    if not on_gpu:
        return False, "Liger's fused kernels are Triton GPU kernels: off on a CPU"
    if not installed:
        return False, "liger-kernel is not installed (pip install 'tunesmith[gpu]'): plain PyTorch kernels"
    if model_type not in supported:
        return False, f"the installed Liger has no kernels for the {model_type or 'unknown'} architecture"
    return True, (f"Liger's fused RMSNorm, SwiGLU and RoPE kernels for {model_type}: less memory and time per step "
                  "(the loss is already computed in chunks by TRL, so its logits never materialise)")


def apply_fused_kernels(model) -> str:
    """Patch `model` (before the adapter is added) with Liger's layer kernels; returns what was applied."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, **LIGER_KERNELS)
    return "liger: " + ", ".join(k for k, on in LIGER_KERNELS.items() if on)


def attention_choice(on_gpu: bool, flash_installed: bool | None = None) -> tuple[str, str]:
    """(attn_implementation, why). Packed rows are padding-free: one flattened row per batch. On a
    GPU FlashAttention-2 attends within each example at a cost that grows with its own length;
    PyTorch's SDPA needs a block-diagonal mask over the whole flattened row, whose cost grows
    with the row's length squared, so the batch sizing keeps SDPA rows short."""
    if not on_gpu:
        return "sdpa", "PyTorch SDPA on CPU"
    if flash_installed is None:
        flash_installed = importlib.util.find_spec("flash_attn") is not None
    if flash_installed:
        return "flash_attention_2", "FlashAttention-2 (installed): attention within each packed example only"
    return "sdpa", "PyTorch SDPA (flash-attn is not installed): packed rows attend through a block-diagonal mask"


def cpu_has_bf16() -> bool:
    """Whether CPU training uses bfloat16 autocast: `TUNESMITH_CPU_BF16=0` or `1` decides (the
    tests pin 0, so their figures compare across machines); unset, whether this CPU computes
    bfloat16 in hardware (AVX512-BF16 or AMX tiles)."""
    import os

    import torch

    chosen = os.environ.get("TUNESMITH_CPU_BF16")
    if chosen in ("0", "1"):
        return chosen == "1"
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these checks: assume not
        return False


@dataclass(frozen=True)
class Precision:
    """The dtype the base model is loaded in and the trainer's mixed precision."""

    dtype: str  # "bfloat16", "float16" or "float32"
    bf16: bool
    fp16: bool
    why: str


def precision_choice(on_gpu: bool, bf16_supported: bool, quantize: str) -> Precision:
    """One compute dtype per run, so no layer casts its inputs on every step:
    8-bit: float16 throughout, because bitsandbytes' int8 matmul takes float16 inputs (anything
    else is cast, with a warning, on every layer of every step); 4-bit and plain: bfloat16 where
    the GPU has it (the 4-bit compute dtype is the same); on an older GPU without bfloat16, 4-bit
    computes in float16 and a plain model trains in float32 (float16 weights cannot take float16
    mixed-precision updates). On a CPU the weights stay float32; one that computes bfloat16 in
    hardware (AVX512-BF16 or AMX: `cpu_has_bf16`) trains under bfloat16 autocast, which took a
    SmolLM2 LoRA step on 32 short texts from 2.5 s to 1.85 s on this project's 2-core machine; on
    others bfloat16 is emulated and slower, so they train in float32."""
    if not on_gpu:
        if bf16_supported:
            return Precision("float32", True, False, "float32 weights, bfloat16 autocast (this CPU computes bfloat16)")
        return Precision("float32", False, False, "float32 on CPU")
    if quantize == "8bit":
        return Precision("float16", False, True,
                         "float16 weights and mixed precision: bitsandbytes' int8 matmul computes in float16")
    if bf16_supported:
        return Precision("bfloat16", True, False, "bfloat16 weights and mixed precision")
    if quantize == "4bit":
        return Precision("float16", False, True, "float16 compute (this GPU has no bfloat16)")
    return Precision("float32", False, False, "float32 (this GPU has no bfloat16)")


# --------------------------------------------------------------------------- the probe step


def probe_peak_memory(model, tokens: int, vocab_size: int) -> tuple[float, float]:
    """One forward and backward pass through the model's layers on `tokens` random token ids in
    one padding-free row (what a packed micro-batch of that size costs); returns (GiB allocated
    before it, peak GiB during it). CUDA only. The output head is left out: TRL computes the loss
    through it in chunks, a small share of the peak."""
    import torch

    device = next(p for p in model.parameters()).device
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), base)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device) / GB
    torch.cuda.reset_peak_memory_stats(device)
    was_training = model.training
    model.train()
    ids = torch.randint(0, vocab_size, (1, tokens), device=device)
    try:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point() and not p.requires_grad)
        with torch.autocast("cuda", dtype=dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16):
            hidden = backbone(input_ids=ids, position_ids=torch.arange(tokens, device=device)[None]).last_hidden_state
        hidden.float().square().mean().backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / GB
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.cuda.empty_cache()
    return before, peak


def fit_to_probe(tokens: int, before_gb: float, peak_gb: float, optimizer_gb: float, total_gb: float,
                 headroom: float = 0.85) -> int:
    """The micro-batch size in tokens that the probe says fits: `tokens` when the probe's peak plus
    the optimizer's state stays within `headroom` of the GPU, else scaled down in proportion to the
    activation memory (what grows with tokens). A pure function, unit-tested on CPU."""
    budget = total_gb * headroom - before_gb - optimizer_gb
    activations = peak_gb - before_gb
    if activations <= 0 or activations <= budget:
        return tokens
    return max(1, int(tokens * max(budget, 0.0) / activations))


def shrink_layout(pack_length: int, batch_size: int, max_length: int, tokens: int) -> tuple[int, int]:
    """(pack_length, batch_size) holding at most `tokens` per micro-batch: fewer rows first, then
    shorter rows, never shorter than one longest example (`max_length`)."""
    if pack_length * batch_size <= tokens:
        return pack_length, batch_size
    if batch_size > 1:
        rows = max(1, tokens // pack_length)
        if rows > 1 or pack_length <= tokens:
            return pack_length, rows
    return max(max_length, tokens // 64 * 64), 1
