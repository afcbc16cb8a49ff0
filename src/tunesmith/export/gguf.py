"""The GGUF export: a run's merged weights written as one GGUF file for llama.cpp, Ollama and LM
Studio, in Python with the `gguf` library (no llama.cpp checkout), then loaded back and checked.

What llama.cpp's `convert_hf_to_gguf.py` does for the Llama family, done here for one model folder:
- Architectures: Llama, Mistral and SmolLM (`llama`, whose Q and K projections are permuted from
  Hugging Face's rotary layout back to llama.cpp's interleaved one), Qwen2 and Qwen3 (`qwen2`,
  `qwen3`, whose rotary layout llama.cpp reads as it is). Others are refused with one sentence.
- Tensors: names from gguf's own name map; norms, biases and other 1-D tensors stay float32 (llama.cpp
  reads them so); matrices take the file's type. A 4- or 5-bit file keeps the embedding and output
  matrices at 8 bits, as llama.cpp's quantiser keeps them at 6 (gguf's numpy quantisers have no 6-bit type).
- Tokenizer: byte-level BPE (GPT-2 style: Llama 3, Qwen, SmolLM, Mistral's Tekken) with its tokens,
  token types, merges, pre-tokenizer, bos/eos/pad ids, end-of-turn token, whether a bos is added,
  and the chat template, so a runtime formats prompts as training did and stops where the model ends
  its turn. SentencePiece-style tokenizers are refused (their scores are not in tokenizer.json).

`export_gguf` writes the file and verifies it (see `verify_gguf`): through transformers' GGUF loader
always, and through llama.cpp itself when llama-cpp-python is installed.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import tempfile
import time
from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.export.hf import adds_bos, stop_token_ids
from tunesmith.export.merge import save_merged
from tunesmith.export.verify import (
    Answers,
    answer_budget,
    answer_figures,
    check_figures,
    greedy_answers,
    reference,
    token_agreement,
    verification_rows,
)
from tunesmith.inference.generate import with_system
from tunesmith.models import resolve_model
from tunesmith.runs import RunDir

# Hugging Face architecture -> (GGUF architecture, whether Q/K are permuted to llama.cpp's rotary layout).
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
}
# The file types written here: gguf's numpy quantisers cover these (the K-quants only dequantise).
TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
# Types only llama.cpp's own quantiser writes (from an f16 file), where llama-cpp-python is installed.
LLAMA_CPP_TYPES = ("q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_m", "q2_k")
# Pre-tokenizer regexes of tokenizer.json -> llama.cpp's name for the same split (src/llama-vocab.cpp).
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_PRE_TOKENIZERS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+": "tekken",
}
GGUF_FILE = "model.gguf"


def _gguf_types(quant: str):
    import gguf

    q = gguf.GGMLQuantizationType
    matrix = {"f32": q.F32, "f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0, "q5_1": q.Q5_1, "q5_0": q.Q5_0, "q4_1": q.Q4_1,
              "q4_0": q.Q4_0}[quant]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
                 "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    # Embedding and output matrices carry every token's logits: a 4/5-bit file keeps them at 8 bits.
    edge = q.Q8_0 if quant.startswith(("q4", "q5")) else matrix
    return matrix, edge, file_type


def gguf_architecture(config: dict) -> tuple[str, bool]:
    """(GGUF architecture name, whether Q/K need llama's permutation) of a model's config.json,
    or ModelError naming the architectures that can be written."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"GGUF export writes Llama-family models ({', '.join(sorted(ARCHITECTURES))}), and this model is {arch}; "
            "export it with --format hf or --format onnx instead."
        )
    return ARCHITECTURES[arch]


def _permute(weights, n_head: int):
    """Hugging Face's rotary layout (two halves per head) back to llama.cpp's (interleaved pairs),
    as convert_hf_to_gguf.py's LlamaModel.permute."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _pre_tokenizer(spec: dict | None) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizer.json `pre_tokenizer`, or None when it is not one
    llama.cpp implements (then the file would split text differently from training)."""
    if not spec:
        return None
    steps = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # digits one by one, then GPT-2's split
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {})
        regex = pattern.get("Regex") or pattern.get("String")
        if regex == _GPT2_REGEX:
            return "gpt-2"
        return _PRE_TOKENIZERS.get(regex)
    return None


def _tokenizer_metadata(writer, tokenizer, vocab_size: int) -> None:
    """Tokens, types, merges, special ids and chat template of a byte-level BPE tokenizer."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or not any(
        s.get("type") == "ByteLevel" for s in [spec.get("decoder") or {}, *(spec.get("decoder") or {}).get("decoders", [])]
    ):
        raise ModelError(
            "GGUF export writes byte-level BPE tokenizers (Llama 3, Qwen, SmolLM), and this model's tokenizer is "
            f"{model.get('type', 'unknown')}-based (SentencePiece style); export --format hf and convert it with llama.cpp's "
            "convert_hf_to_gguf.py."
        )
    pre = _pre_tokenizer(spec.get("pre_tokenizer"))
    if pre is None:
        raise ModelError(
            "This model's tokenizer splits text in a way llama.cpp does not implement, so a GGUF file would tokenize "
            "differently from training; export --format hf or --format onnx instead."
        )
    vocab = tokenizer.get_vocab()
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:  # an embedding row past the tokenizer (vocabularies padded to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    merges = model.get("merges") or []
    if merges and not isinstance(merges[0], str):  # tokenizers >= 0.20 writes pairs; GGUF wants "a b"
        # A space inside a pair is written as U+0120+, as llama.cpp's converter does.
        merges = [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair) for pair in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    # The token that ends an assistant turn, so llama.cpp stops there even where it is not eos.
    writer.add_eot_token_id(stop_token_ids(tokenizer)[0])
    # What the tokenizer adds around a text, as it runs, so llama.cpp adds the same.
    writer.add_add_bos_token(adds_bos(tokenizer))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_eos_token(len(probe) > 1 and probe[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def _hparams(writer, config) -> None:
    """Model shape and rotary settings, as convert_hf_to_gguf.py's TextModel and LlamaModel write them."""
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind == "llama3":  # written as a rope_freqs tensor (see _llama3_rope_factors)
        pass
    elif kind != "default":
        raise ModelError(f"This model uses {kind} rotary scaling, which the GGUF export does not write; export --format hf instead.")


def _llama3_rope_factors(config):
    """Llama 3.1's frequency-dependent rotary scaling, as the `rope_freqs` tensor llama.cpp reads
    (convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors)."""
    import numpy as np

    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if (rope.get("rope_type") or rope.get("type")) != "llama3":
        return None
    base = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(model_dir: Path, path: Path, quant: str = "q8_0", name: str | None = None) -> Path:
    """Write the model folder `model_dir` (a causal LM in safetensors with its tokenizer) as a GGUF
    file of type `quant` (one of TYPES) at `path`. Returns `path`."""
    import gguf
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    if quant in LLAMA_CPP_TYPES:
        return _llama_cpp_quantize(model_dir, Path(path), quant, name)
    if quant not in TYPES:
        raise ModelError(f"GGUF type {quant!r} is not one this export writes; choose one of {', '.join(TYPES + LLAMA_CPP_TYPES)}.")
    model_dir = Path(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    arch, permute = gguf_architecture(raw)
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    matrix_type, edge_type, file_type = _gguf_types(quant)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its place and renamed at the end, so no reader ever sees half a file.
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    _hparams(writer, config)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer_metadata(writer, tokenizer, config.vocab_size)

    if (factors := _llama3_rope_factors(config)) is not None:
        writer.add_tensor("rope_freqs.weight", factors)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir} holds no .safetensors weights; export the run's merged folder.")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys = f.keys()
            for key in keys:
                if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                    continue  # recomputed by llama.cpp / the same matrix as the embedding
                new = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise ModelError(f"{model_dir}: tensor {key} has no GGUF name for {arch}; export --format hf instead.")
                data = f.get_tensor(key).to(torch.float32)
                if permute and key.endswith(("q_proj.weight", "q_proj.bias")):
                    data = _permute(data, n_head)
                elif permute and key.endswith(("k_proj.weight", "k_proj.bias")):
                    data = _permute(data, n_kv)
                array = data.numpy()
                if array.ndim <= 1 or new.endswith("_norm.weight") or not new.endswith(".weight"):
                    kind = gguf.GGMLQuantizationType.F32  # norms, biases: llama.cpp reads them as float32
                elif new in ("token_embd.weight", "output.weight"):
                    kind = edge_type
                else:
                    kind = matrix_type
                try:
                    packed = gguf.quants.quantize(array, kind)
                except gguf.QuantError:  # rows not a multiple of the block size: 16-bit, as llama.cpp falls back
                    kind = gguf.GGMLQuantizationType.F16
                    packed = gguf.quants.quantize(array, kind)
                writer.add_tensor(new, packed, raw_dtype=kind)
                del data, array
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _llama_cpp_quantize(model_dir: Path, path: Path, quant: str, name: str | None) -> Path:
    """A K-quant file: an f16 file written here, then quantised by llama.cpp (llama-cpp-python's
    `llama_model_quantize`, the library behind `llama-quantize`)."""
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(
            f"GGUF type {quant} is written by llama.cpp's quantiser, which needs llama-cpp-python (pip install "
            "llama-cpp-python, which builds llama.cpp); or choose q4_0, q8_0 or f16, written without it."
        ) from None
    f16 = write_gguf(model_dir, path.with_name(path.name + ".f16.tmp"), "f16", name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = os.cpu_count() or 1
    # llama.cpp writes a line per tensor to the process's stderr (file descriptor 2, for the few
    # seconds this takes): kept in a file, shown on failure.
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            failed = llama_cpp.llama_model_quantize(str(f16).encode(), str(path).encode(), ctypes.byref(params)) != 0
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f16.unlink(missing_ok=True)
        log.seek(0)
        lines = log.read().decode(errors="replace").strip().splitlines()
    if failed:
        raise ModelError(
            f"llama.cpp could not quantise {model_dir} to {quant} ({lines[-1] if lines else 'no message'}); choose q4_0 or "
            "q8_0, written without it."
        )
    return path


def write_gguf_lora(run: Path, path: Path, quant: str = "f16") -> Path:
    """The run's LoRA adapter alone as a GGUF LoRA file (`llama-cli -m BASE.gguf --lora FILE`), as
    llama.cpp's convert_lora_to_gguf.py writes it: `general.type` adapter, `adapter.type` lora,
    `adapter.lora.alpha`, and `<tensor>.lora_a` / `.lora_b` pairs named after the base tensors they
    change (B permuted like its base matrix for Q and K). `quant` is f32, f16, bf16 or q8_0. Returns `path`."""
    import gguf
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = RunDir(Path(run))
    if not folder.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    _refuse_head(folder)
    final = folder.final
    if final.adapter is None or not (final.adapter / "adapter_model.safetensors").exists():
        raise ModelError(f"{run} has no LoRA adapter (it trained full weights or has not finished); export the whole model instead.")
    if quant not in ("f32", "f16", "bf16", "q8_0"):
        raise ModelError(f"A GGUF LoRA adapter is written as f32, f16, bf16 or q8_0, not {quant}; choose one of those.")
    lora = json.loads((final.adapter / "adapter_config.json").read_text())
    if lora.get("peft_type") != "LORA" or lora.get("use_dora") or lora.get("alpha_pattern") or lora.get("modules_to_save"):
        raise ModelError(
            f"{run}'s adapter ({lora.get('peft_type')}{', DoRA' if lora.get('use_dora') else ''}"
            f"{', with fully trained modules' if lora.get('modules_to_save') else ''}) is not a plain LoRA that llama.cpp "
            "applies; export the merged model (--format gguf without --adapter) instead."
        )
    base = resolve_model(final.config.model.name)
    raw = json.loads((Path(base) / "config.json").read_text())
    arch, permute = gguf_architecture(raw)
    config = AutoConfig.from_pretrained(base)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    # llama.cpp scales each pair by alpha / rank; rank-stabilised LoRA scales by alpha / sqrt(rank).
    alpha = float(lora["lora_alpha"]) * (math.sqrt(lora["r"]) if lora.get("use_rslora") else 1.0)
    kind = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[quant]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(folder.path.name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    with safe_open(str(final.adapter / "adapter_model.safetensors"), framework="pt") as f:
        keys = sorted(f.keys())
        for key in keys:
            if ".lora_B." in key:
                continue  # written with its A
            if ".lora_A." not in key:
                raise ModelError(f"{run}'s adapter holds {key}, which is not a LoRA matrix; export the merged model instead.")
            module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            target = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if target is None or target.startswith(("token_embd", "output.")):
                raise ModelError(f"{run}'s adapter changes {module}, which a GGUF LoRA cannot carry; export the merged model instead.")
            a = f.get_tensor(key).to(torch.float32)
            b = f.get_tensor(key.replace(".lora_A.", ".lora_B.")).to(torch.float32)
            if permute and module.endswith("q_proj"):
                b = _permute(b, n_head)
            elif permute and module.endswith("k_proj"):
                b = _permute(b, n_kv)
            for suffix, tensor in ((".lora_a", a), (".lora_b", b)):
                try:
                    packed, written = gguf.quants.quantize(tensor.numpy(), kind), kind
                except gguf.QuantError:  # a rank below the block size: 16-bit
                    written = gguf.GGMLQuantizationType.F16
                    packed = gguf.quants.quantize(tensor.numpy(), written)
                writer.add_tensor(target + suffix, packed, raw_dtype=written)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def export_gguf_lora(run: Path, out: Path, quant: str = "f16", base_quant: str = "q8_0", verify: bool = True,
                     limit: int = 16, max_new_tokens: int | None = None) -> dict:
    """`out/adapter.gguf` (the run's LoRA adapter, see `write_gguf_lora`) and `out/base.gguf` (the base
    model it applies to, as `base_quant`), then, where llama-cpp-python is installed, the base with the
    adapter checked against PyTorch's merged model as `verify_gguf` does. Returns the figures."""
    folder = RunDir(Path(run))
    out = Path(out)
    adapter = write_gguf_lora(folder.path, out / "adapter.gguf", quant)
    base = write_gguf(Path(resolve_model(folder.final.config.model.name)), out / "base.gguf", base_quant, name="base")
    figures: dict = {
        "format": "gguf-lora",
        "file": str(adapter),
        "base_file": str(base),
        "quant": quant,
        "base_quant": base_quant,
        "bytes": adapter.stat().st_size,
        "base_bytes": base.stat().st_size,
    }
    if not verify:
        return figures
    try:
        import llama_cpp  # noqa: F401  (only llama.cpp applies a GGUF LoRA; transformers cannot load one)
    except ImportError:
        figures["verification"] = {"skipped": {"llama.cpp": "llama-cpp-python is not installed (pip install llama-cpp-python builds it)"}}
        return figures
    from transformers import AutoTokenizer

    prompts, references, source = verification_rows(folder.path, limit)
    system = folder.final.config.data.system_prompt
    budget = max_new_tokens or answer_budget(references, AutoTokenizer.from_pretrained(save_merged(folder.final.path)))
    torch_answers = reference(folder.path, prompts, budget)
    start = time.perf_counter()
    answers, load_s, tokens = _llama_cpp_answers(base, prompts, budget, system, torch_answers, lora=adapter)
    cpp = {"load_s": round(load_s, 2), "token_agreement": tokens} | answer_figures(answers, torch_answers, references)
    cpp["seconds"] = round(time.perf_counter() - start, 2)
    figures["verification"] = {"prompts": len(prompts), "source": source, "max_new_tokens": budget,
                               "pytorch": answer_figures(torch_answers, None, references), "runtimes": {"llama.cpp": cpp}}
    # The base is quantised as `base_quant`: its tolerance is the one that applies.
    check_figures(f"The {base_quant} base with the {quant} LoRA adapter in llama.cpp", base_quant,
                  cpp | {"prompts": len(prompts), "max_new_tokens": budget}, figures["verification"]["pytorch"])
    return figures


def gguf_metadata(path: Path) -> dict:
    """The metadata of a GGUF file as plain values (token lists summarised by their length)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        values = field.contents()
        out[key] = {"items": len(values)} if isinstance(values, list) and len(values) > 8 else values
    out["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return out


def _refuse_head(run: RunDir) -> None:
    stage = run.final.stage
    if stage in ("classify", "reward"):
        kind = "a classifier" if stage == "classify" else "a reward model"
        raise ModelError(
            f"{run.path} is {kind} (a scoring head on the model), which llama.cpp cannot run; export it with --format onnx "
            "or --format hf."
        )


def export_gguf(run: Path, path: Path, quant: str = "q8_0", verify: bool = True, limit: int = 16,
                max_new_tokens: int | None = None, check: bool = True) -> dict:
    """Write the run's merged model as a GGUF file of type `quant` at `path`, then (unless
    `verify` is False) check it against PyTorch on up to `limit` test prompts. Returns the figures:
    file, type, bytes, seconds to write, and `verification` (see `verify_gguf`). Raises ModelError
    for a run that cannot become GGUF, and for a file whose answers do not stop or do not agree."""
    folder = RunDir(Path(run))
    if not folder.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    _refuse_head(folder)
    merged = save_merged(folder.final.path)
    start = time.perf_counter()
    write_gguf(merged, path, quant, name=folder.path.name)
    figures = {
        "format": "gguf",
        "file": str(path),
        "quant": quant,
        "bytes": Path(path).stat().st_size,
        "write_s": round(time.perf_counter() - start, 2),
    }
    if verify:
        figures["verification"] = verify_gguf(folder.path, Path(path), quant, limit, max_new_tokens, check)
    return figures


def verify_gguf(run: Path, path: Path, quant: str, limit: int = 16, max_new_tokens: int | None = None,
                check: bool = True) -> dict:
    """Answer the run's test prompts greedily with PyTorch (the merged float32 model) and with the
    GGUF file in each runtime at hand: transformers' GGUF loader (always; it dequantises, so it checks
    the weights, tokenizer and chat template as written) and llama.cpp (when llama-cpp-python is
    installed; the real runtime, quantised arithmetic included). Returns the figures per runtime:
    load seconds, tokens/s, token agreement (teacher-forced, see `verify.token_agreement`), agreement
    and prefix agreement of whole answers, share of answers that stop, exact match with the test
    answers, the first differing answers. Raises ModelError when a runtime's answers never stop, or
    it keeps less than its type should (`verify.check_figures`), unless `check` is False (to measure
    a file whatever it does)."""
    from transformers import AutoTokenizer

    prompts, references, source = verification_rows(run, limit)
    system = RunDir(Path(run)).final.config.data.system_prompt
    merged = RunDir(Path(run)).final.merged
    budget = max_new_tokens or answer_budget(references, AutoTokenizer.from_pretrained(merged))
    torch_answers = reference(run, prompts, budget)
    result: dict = {
        "prompts": len(prompts),
        "source": source,
        "max_new_tokens": budget,
        "pytorch": answer_figures(torch_answers, None, references),
        "runtimes": {},
    }
    runtimes = {"transformers": _transformers_answers}
    try:
        import llama_cpp  # noqa: F401  (optional: it builds from source; see the README)

        runtimes["llama.cpp"] = _llama_cpp_answers
    except ImportError:
        result["skipped"] = {"llama.cpp": "llama-cpp-python is not installed (pip install llama-cpp-python builds it)"}
    for name, answer in runtimes.items():
        start = time.perf_counter()
        answers, load_s, tokens = answer(path, prompts, budget, system, torch_answers)
        figures = {"load_s": round(load_s, 2), "token_agreement": tokens} | answer_figures(answers, torch_answers, references)
        result["runtimes"][name] = figures | {"seconds": round(time.perf_counter() - start, 2)}
    for name, figures in result["runtimes"].items() if check else ():
        check_figures(f"The {quant} GGUF file in {name}", quant, figures | {"prompts": len(prompts), "max_new_tokens": budget},
                      result["pytorch"])
    return result


def _transformers_answers(path: Path, prompts, max_new_tokens: int, system: str | None,
                          torch_answers: Answers) -> tuple[Answers, float, float]:
    """(greedy answers, load seconds, token agreement) of the GGUF file loaded (and dequantised) by
    transformers, with its tokenizer and chat template read from the file too."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model.eval()
    load_s = time.perf_counter() - start

    def next_tokens(ids: list[int]) -> list[int]:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()

    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, system)
    return answers, load_s, token_agreement(torch_answers, next_tokens)


def _llama_cpp_answers(path: Path, prompts, max_new_tokens: int, system: str | None, torch_answers: Answers,
                       lora: Path | None = None) -> tuple[Answers, float, float]:
    """(greedy answers, load seconds, token agreement) of the GGUF file (with a GGUF LoRA adapter
    applied, if given) in llama.cpp (llama-cpp-python), formatted by the chat template in the file
    and stopped by the end-of-turn tokens in it, as a llama.cpp user gets them."""
    import numpy as np
    from llama_cpp import Llama

    settings = {"model_path": str(path), "lora_path": str(lora) if lora else None, "verbose": False, "seed": 0,
                "n_threads": max(1, os.cpu_count() or 1)}
    start = time.perf_counter()
    llm = Llama(n_ctx=4096, **settings)
    load_s = time.perf_counter() - start
    answers = Answers([], [], 0, 0.0)
    for messages in prompts:
        begin = time.perf_counter()
        out = llm.create_chat_completion(messages=with_system(messages, system), temperature=0.0, top_k=1,
                                         max_tokens=max_new_tokens, seed=0)
        answers.seconds += time.perf_counter() - begin
        choice = out["choices"][0]
        answers.texts.append((choice["message"]["content"] or "").strip())
        answers.stopped.append(choice["finish_reason"] == "stop")
        answers.tokens += out["usage"]["completion_tokens"]
    llm.close()
    # Teacher forcing needs every position's logits: a second instance, sized to the longest text,
    # so the timed one above runs as a user's would.
    longest = max((len(p) + len(a) for p, a in zip(torch_answers.prompt_ids, torch_answers.answer_ids)), default=1)
    scorer = Llama(n_ctx=longest + 8, logits_all=True, **settings)

    def next_tokens(ids: list[int]) -> list[int]:
        scorer.reset()
        scorer.eval(ids)
        return np.asarray(scorer.scores[: len(ids)]).argmax(-1).tolist()

    tokens = token_agreement(torch_answers, next_tokens)
    scorer.close()
    return answers, load_s, tokens
