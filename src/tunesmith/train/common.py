"""What every training recipe shares: the data gate, the validation split, the base model
with its adapter (the PEFT family, QLoRA, full fine-tuning with frozen layers), the
trainer settings, saving the weights and finding the resume point.

Each recipe (sft.py, pretrain.py, classify.py) reads top to bottom and calls these.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

from tunesmith.config import (
    RL_STAGES,
    MethodConfig,
    RunConfig,
    save_config,
)
from tunesmith.data.quality import DataCard, check_data, write_card
from tunesmith.domains.packs import get_domain
from tunesmith.errors import ConfigError, DataError, ModelError
from tunesmith.models import load_model
from tunesmith.runs import (
    ADAPTER_DIR,
    CONFIG_FILE,
    INIT_ADAPTER_DIR,
    MODEL_DIR,
    RunDir,
    TrainSummary,
    complete_checkpoints,
)
from tunesmith.train.callbacks import (
    MetricsFileCallback,
    SpeedCallback,
    TrackingCallback,
    speed_figures,
)
from tunesmith.train.distributed import is_main_process, launched
from tunesmith.train.speed import (
    LIGER_KERNELS,
    apply_fused_kernels,
    attention_choice,
    cpu_has_bf16,
    fit_to_probe,
    liger_architectures,
    parameter_counts,
    precision_choice,
    probe_peak_memory,
    shrink_layout,
)

LORA_FAMILY = ("lora", "rslora", "dora", "pissa", "olora")
PROMPT_LEARNING = ("prompt", "prefix")  # virtual tokens: no weights to merge, no packing
# Names of the output projection of a model's MLP, per architecture family, for IA3 (which
# scales feed-forward inputs and attention keys/values).
FEEDFORWARD_OUT = ("down_proj", "fc2", "dense_4h_to_h", "w2", "wo", "fc_out")
ATTENTION_KV = ("k_proj", "v_proj", "key", "value", "query_key_value", "c_attn", "Wqkv")
HEADS = ("lm_head", "score", "classifier", "embed_out", "output")


# --------------------------------------------------------------------------- data


# Data cards this process has computed, by file (path, size, modification time) and settings:
# `auto` trains a probe and then the run on the same file, and the gate under a domain's
# profile reads every row with a named-entity model (minutes on 10k rows); once is enough.
_GATED: dict[tuple, DataCard] = {}


def _file_key(path: str | None) -> tuple:
    if not path or not os.path.exists(path):
        return (path,)
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def gate_data(config: RunConfig, tokenizer, task: str | None = None):
    """Run the data quality gate on the training (and validation) file before anything
    trains. Errors stop the run with the top problems and the way out, unless
    `data.force` is set, which the returned data card records."""
    max_length = config.train.max_length if isinstance(config.train.max_length, int) else None
    # Under a domain pack, its compliance profile's identifiers are errors too.
    profile = {"profile": get_domain(config.domain).profile} if config.domain else {}
    key = (*_file_key(config.data.train), *_file_key(config.data.validation), getattr(tokenizer, "name_or_path", None),
           max_length, json.dumps(config.data.columns, sort_keys=True), task, config.domain)
    if key not in _GATED:
        if len(_GATED) >= 32:  # a long-lived worker gates many files: keep the memory bounded
            _GATED.clear()
        _GATED[key] = check_data(
            config.data.train,
            config.data.validation,
            tokenizer=tokenizer,
            max_length=max_length,
            columns=config.data.columns,
            task=task,
            **profile,
        )
    card = copy.deepcopy(_GATED[key])
    errors = card.errors()
    if errors and not config.data.force:
        top = "; ".join(f.message.rstrip(".") for f in errors[:3])
        domain = f" --domain {config.domain}" if config.domain else ""
        raise DataError(
            f"{config.data.train}: the data gate found {len(errors)} error(s): {top}. Run `tunesmith data check "
            f"{config.data.train}{domain} --fix CLEAN.jsonl` and train on the cleaned file, or pass --force to train anyway."
        )
    card.stats["trained_despite_errors"] = bool(errors)
    return card


# --------------------------------------------------------------------------- model


def load_base(config: RunConfig, head: str = "lm", **kwargs):
    """The base model, quantized for QLoRA when asked, with the bottom layers frozen for a
    partial full fine-tune. `head` is "lm" or "classify" (kwargs go to `from_pretrained`).
    On a GPU: one compute dtype for the whole run (`speed.precision_choice`), FlashAttention-2
    when installed, Liger's kernels when `train.fused_kernels` says so."""
    import torch

    m = config.method
    quantization = quantization_config(m)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": 0}
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        precision = precision_choice(True, torch.cuda.is_bf16_supported(), m.quantize)
        kwargs.setdefault("dtype", getattr(torch, precision.dtype))
        if precision.dtype != "float32":  # FlashAttention computes in 16 bits only
            kwargs.setdefault("attn_implementation", attention_choice(True)[0])
    # A new head (a classifier's, a reward model's) is drawn from the global generator: seed it,
    # so the run does not depend on what this process drew before (a repeat gives the same run).
    torch.manual_seed(config.train.seed)
    model = load_model(config.model.name, head=head, **kwargs)
    if quantization is not None:
        prepare_quantized(model, m.checkpointing)
    if config.train.fused_kernels is True:
        apply_fused_kernels(model)  # before the adapter: PEFT then wraps the patched layers
    if m.freeze_layers:
        freeze_bottom_layers(model, m.freeze_layers)
    return model


def prepare_quantized(model, checkpointing: bool) -> None:
    """What training on a 4- or 8-bit base needs: a frozen base and, with checkpointing,
    non-reentrant gradient checkpointing with gradients flowing from the inputs. Not peft's
    `prepare_model_for_kbit_training`: it casts every weight left unquantized (embeddings, norms,
    the output head) to float32, so the hidden states run in float32 through the whole network
    (twice the activation memory of bfloat16, the opposite of what QLoRA is for), and an 8-bit
    base casts them back to float16 in every layer on every step."""
    for p in model.parameters():
        p.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.config.use_cache = False


def confirm_micro_batch(model, config: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """On a GPU, one probe step through `model` at the micro-batch the resolver sized (packed rows
    x rows) measures the peak memory; when that peak plus the optimizer's state would not fit, the
    micro-batch shrinks (accumulation grows to keep the examples per update) and `config.yaml` says
    why. Only for a fresh single-process run whose sizes were chosen automatically (a resumed run
    keeps its sizes; processes of a launched run must agree on theirs)."""
    import torch

    t = config.train
    sized = {"train.pack_length", "train.batch_size"} & set(config.reasons)
    if resume or not sized or launched() or not torch.cuda.is_available():
        return config
    tokens = int(t.pack_length) * int(t.batch_size)
    if next(model.parameters()).device.type == "cpu":  # the trainer would move it there anyway
        model.to("cuda")
    vocab = model.get_input_embeddings().weight.shape[0]
    before, peak = probe_peak_memory(model, tokens, vocab)
    _, total = torch.cuda.mem_get_info()
    _, _, trainable = parameter_counts(model)
    optimizer_gb = trainable * 12 / 2**30  # a float32 gradient and Adam's two moments per trainable weight
    fitted = fit_to_probe(tokens, before, peak, optimizer_gb, total / 2**30)
    note = f"probe step: {tokens} tokens per micro-batch peaked at {peak:.1f} GB of {total / 2**30:.0f} GB"
    config = config.model_copy(deep=True)
    t = config.train
    if fitted < tokens:
        pack, rows = shrink_layout(int(t.pack_length), int(t.batch_size), int(t.max_length), fitted)
        if "train.gradient_accumulation" in config.reasons:
            t.gradient_accumulation = max(1, math.ceil(int(t.gradient_accumulation) * tokens / (pack * rows)))
        t.pack_length, t.batch_size = pack, rows
        note += f" (with the optimizer's state, over 85%): cut to {rows} row(s) of {pack} tokens"
    for key in sized:
        config.reasons[key] = f"{config.reasons[key]}; {note}"
    if is_main_process():
        save_config(config, run_dir / CONFIG_FILE)
    return config


def check_fused_kernels(config: RunConfig) -> None:
    """`train.fused_kernels: true` set by hand where Liger cannot run is one clear error."""
    if config.train.fused_kernels is not True:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("train.fused_kernels is true but Liger's kernels need a CUDA GPU and none was found; "
                          "leave it at auto or set it to false on this machine.")
    if not liger_architectures():
        raise ConfigError("train.fused_kernels is true but liger-kernel is not installed (or cannot load): "
                          "pip install 'tunesmith[gpu]', or set train.fused_kernels to false.")


def quantization_config(method: MethodConfig):
    """bitsandbytes settings for a 4-bit (NF4, double quantization: QLoRA's recipe) or 8-bit
    base; a clear error where they cannot run."""
    if method.quantize == "none":
        return None
    import torch

    if method.quantize == "auto":  # the resolver decides (needs the data's lengths)
        return None
    if not torch.cuda.is_available():
        raise ConfigError(
            f"quantize {method.quantize} (QLoRA) needs a CUDA GPU and none was found; on this machine use "
            "--quantize none (plain LoRA, same adapter quality, more memory)."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"quantize {method.quantize} needs the bitsandbytes package: pip install bitsandbytes.") from exc
    from transformers import BitsAndBytesConfig

    if method.quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)  # computes in float16: the model loads in float16 (load_base)
    # NF4 weights, double quantization of their scales, bfloat16 compute: QLoRA's recipe. The same
    # dtype as the unquantized layers and the trainer's mixed precision, so nothing is cast per step.
    compute = getattr(torch, precision_choice(True, torch.cuda.is_bf16_supported(), "4bit").dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def decoder_layers(model):
    """The stack of transformer blocks: the ModuleList as long as the model has layers."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ModelError(f"Cannot find the layer stack of {type(model).__name__}; freeze_layers does not support it.")


def freeze_bottom_layers(model, n: int) -> None:
    """Freeze the input embeddings and the first `n` blocks. The bottom of a network holds
    general features; keeping it fixed saves optimizer memory and limits forgetting. (With
    tied embeddings this freezes the output head as well.)"""
    layers = decoder_layers(model)
    if n > len(layers):
        raise ConfigError(f"method.freeze_layers is {n} but the model has only {len(layers)} layers; choose fewer.")
    model.get_input_embeddings().requires_grad_(False)
    for layer in layers[:n]:
        layer.requires_grad_(False)


def linear_module_names(model) -> list[str]:
    """Short names of every linear layer except the output heads: the targets of
    `all-linear`, found in the model itself so any architecture works."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        short = full_name.rsplit(".", 1)[-1]
        if is_linear and short not in HEADS:
            names.add(short)
    return sorted(names)


def peft_config(method: MethodConfig, model, task_type: str):
    """The `peft` config for `method.adapter` (None for full fine-tuning). `task_type` is
    CAUSAL_LM or SEQ_CLS (which also trains the new classification head)."""
    import peft

    a = method.adapter
    if a == "full":
        return None
    targets = method.target_modules
    if targets == "all-linear":
        targets = linear_module_names(model)
    if a in LORA_FAMILY:
        init = {"pissa": "pissa_niter_4", "olora": "olora"}.get(a, True)  # fast randomized SVD for PiSSA
        return peft.LoraConfig(
            r=method.lora_r,
            lora_alpha=method.alpha,
            lora_dropout=method.lora_dropout,
            target_modules=targets,
            use_rslora=a == "rslora",
            use_dora=a == "dora",
            init_lora_weights=init,
            task_type=task_type,
        )
    if a == "loha":
        return peft.LoHaConfig(
            r=method.lora_r, alpha=method.alpha, module_dropout=method.lora_dropout,
            target_modules=targets, task_type=task_type,
        )
    if a == "lokr":
        return peft.LoKrConfig(
            r=method.lora_r, alpha=method.alpha, module_dropout=method.lora_dropout,
            target_modules=targets, task_type=task_type,
        )
    if a == "ia3":
        # IA3 rescales attention keys/values and the MLP output's input; pick those by name.
        names = targets if isinstance(targets, list) else [targets]
        chosen = [n for n in names if n in ATTENTION_KV or n in FEEDFORWARD_OUT]
        feedforward = [n for n in chosen if n in FEEDFORWARD_OUT]
        if not chosen or not feedforward:
            raise ConfigError(
                "IA3 needs the attention key/value and MLP output layers, and none were recognised in "
                f"{names}; set method.target_modules to them."
            )
        return peft.IA3Config(target_modules=chosen, feedforward_modules=feedforward, task_type=task_type)
    if a == "prompt":
        # Initialised from real vocabulary embeddings: trains faster than random vectors.
        return peft.PromptTuningConfig(
            num_virtual_tokens=method.num_virtual_tokens, prompt_tuning_init="SAMPLE_VOCAB", task_type=task_type
        )
    if a == "prefix":
        return peft.PrefixTuningConfig(num_virtual_tokens=method.num_virtual_tokens, task_type=task_type)
    raise ConfigError(f"Unknown adapter {a}.")  # unreachable: the config validates it


def wrap_model(model, config: RunConfig, task_type: str, run_dir: Path, resume: bool):
    """Put the adapter on `model` (a no-op for full fine-tuning). PiSSA and OLoRA change the
    base weights at initialisation, so their initial adapter is saved to convert the trained
    one back into a plain LoRA adapter of the original base."""
    import torch

    m = config.method
    pcfg = peft_config(m, model, task_type)
    if pcfg is None:
        if m.checkpointing:
            model.config.use_cache = False
        return model
    from peft import get_peft_model

    if m.checkpointing and m.quantize == "none":
        model.enable_input_require_grads()
    torch.manual_seed(config.train.seed)  # PiSSA's randomized SVD must be the same on resume
    if m.adapter == "prefix" and task_type == "SEQ_CLS":
        _check_prefix_support(model)
    model = get_peft_model(model, pcfg)
    if m.adapter in ("pissa", "olora") and not resume and is_main_process():
        model.peft_config["default"].init_lora_weights = True  # saved as a plain LoRA start
        model.save_pretrained(str(run_dir / INIT_ADAPTER_DIR))
        model.peft_config["default"].init_lora_weights = pcfg.init_lora_weights
    return model


def _check_prefix_support(model) -> None:
    """Prefix tuning feeds its prefixes to a classifier's backbone as a key/value cache; some
    model classes (Llama's under transformers 5.24) no longer take one. Say so before training."""
    import inspect

    backbone = getattr(model, model.base_model_prefix, model)
    if "past_key_values" not in inspect.signature(backbone.forward).parameters:
        raise ConfigError(
            f"prefix tuning needs a model that accepts past key values, and {type(backbone).__name__} in this "
            "transformers version does not; use --adapter prompt or lora for this classifier."
        )


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, all) parameters; 4-bit weights counted by their real shape."""
    total, _, trainable = parameter_counts(model)
    return trainable, total


def run_figures(trainer, config: RunConfig) -> dict:
    """The speed figures of a finished run for `TrainSummary` (tokens/s, peak memory, MFU, ...),
    with the attention implementation and fused kernels it ran with."""
    figures = speed_figures(trainer)
    attention = getattr(getattr(trainer.model, "config", None), "_attn_implementation", None)
    if attention:
        figures["attention"] = attention
    if config.train.fused_kernels is True:  # load_base applied them
        figures["fused_kernels"] = "liger: " + ", ".join(k for k, on in LIGER_KERNELS.items() if on)
    return figures


def save_weights(trainer, tokenizer, config: RunConfig, run_dir: Path) -> Path:
    """Save the trained adapter (or full weights) and the tokenizer; returns the folder."""
    is_adapter = config.method.adapter != "full"
    out = run_dir / (ADAPTER_DIR if is_adapter else MODEL_DIR)
    if config.method.adapter in ("pissa", "olora"):
        if trainer.args.should_save:
            _save_as_plain_lora(trainer.model, out, run_dir / INIT_ADAPTER_DIR)
    else:
        trainer.save_model(str(out))  # every process: FSDP and ZeRO-3 gather the shards here
    if trainer.args.should_save:
        tokenizer.save_pretrained(str(out))
    return out


def begin_run(config: RunConfig, run_dir: Path, card=None) -> None:
    """Create the run directory with its resolved config and data card (in a launched run,
    from the main process only)."""
    if not is_main_process():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / CONFIG_FILE)
    if card is not None:
        write_card(card, run_dir)


def write_summary(run_dir: Path, summary: TrainSummary) -> None:
    """The run's `run.json` (in a launched run, from the main process only)."""
    if is_main_process():
        RunDir(run_dir).summary_file.write_text(json.dumps(summary.to_json(), indent=2))


def _save_as_plain_lora(model, out: Path, init_dir: Path) -> None:
    """Save a PiSSA/OLoRA adapter as plain LoRA (rank 2r) of the original base. peft's
    conversion keeps only the LoRA matrices, so the other trained modules (a
    classification head) are added back to the saved file."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(out), path_initial_model_for_weight_conversion=str(init_dir))
    extra = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items() if "lora_" not in k}
    if extra:
        path = out / "adapter_model.safetensors"
        save_file(load_file(path) | extra, path, metadata={"format": "pt"})


# --------------------------------------------------------------------------- trainer


def best_metric_name(config: RunConfig) -> tuple[str, bool]:
    """(metric key, greater is better) for early stopping and the best checkpoint."""
    metric, stage = config.train.best_metric, config.method.stages[-1]
    if metric in ("accuracy", "macro_f1") and stage == "classify":  # only classifiers have them
        return f"eval_{metric}", True
    if metric == "accuracy" and stage == "reward":  # pairwise: chosen scored above rejected
        return "eval_accuracy", True
    if metric == "reward" and stage in RL_STAGES:
        return "eval_reward", True
    return "eval_loss", False


def common_args(config: RunConfig, run_dir: Path, has_eval: bool) -> dict:
    """TrainingArguments every recipe shares: cosine schedule after a warm-up, evaluation and
    a checkpoint every `eval_steps`, the best checkpoint restored at the end."""
    import torch

    t, m = config.train, config.method
    on_gpu = torch.cuda.is_available()
    precision = precision_choice(on_gpu, torch.cuda.is_bf16_supported() if on_gpu else cpu_has_bf16(), m.quantize)
    metric, greater = best_metric_name(config)
    return dict(
        output_dir=str(RunDir(run_dir).checkpoints),
        learning_rate=float(t.learning_rate),
        num_train_epochs=float(t.epochs),
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=int(t.batch_size),
        per_device_eval_batch_size=int(t.batch_size),
        gradient_accumulation_steps=int(t.gradient_accumulation),
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of all steps
        lr_scheduler_type="cosine",
        eval_strategy="steps" if has_eval else "no",
        eval_steps=int(t.eval_steps),
        save_strategy="steps",
        save_steps=int(t.eval_steps),
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric,
        greater_is_better=greater,
        logging_steps=t.logging_steps if t.logging_steps != "auto" else 1,
        # SpeedCallback counts tokens without the trainer's per-micro-batch device-to-host copy.
        include_num_input_tokens_seen="no",
        # The trainer's NaN filter reads the loss back from the GPU after every micro-batch.
        logging_nan_inf_filter=not on_gpu,
        seed=t.seed,
        data_seed=t.seed,
        gradient_checkpointing=m.checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if m.checkpointing else None,
        neftune_noise_alpha=m.neftune_alpha or None,
        label_smoothing_factor=m.label_smoothing,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.bf16 and not on_gpu,  # bfloat16 autocast on a CPU that computes it (the trainer's CPU AMP)
        report_to="none",
        disable_tqdm=True,  # the CLI draws its own rich progress bar
        # On a GPU, two worker processes collate the next batches into pinned memory while the
        # GPU computes; on a CPU they would only compete with training for the same cores.
        dataloader_num_workers=2 if on_gpu else 0,
        dataloader_pin_memory=on_gpu,
        save_only_model=False,  # optimizer + RNG state are needed to resume exactly
        # Adapters and heads are all used in every forward pass; the search for unused
        # parameters would cost a walk of the autograd graph per step under DDP.
        ddp_find_unused_parameters=False,
    )


def run_callbacks(config: RunConfig, run_dir: Path, has_eval: bool, extra: list | None) -> list:
    """`metrics.jsonl` logging, the caller's callbacks, and early stopping when there is a
    validation set."""
    from transformers import EarlyStoppingCallback

    # SpeedCallback first: it adds tokens/s, peak memory and MFU to the log events the others read.
    callbacks = [SpeedCallback(), MetricsFileCallback(RunDir(run_dir).metrics_file), *(extra or [])]
    if config.train.report_to:
        # A stage of a multi-stage run (RUN/<stage>) logs into the run's trackers, its steps
        # under the stage's name; the evaluation of RUN adds to the same tracker runs.
        top = Path(run_dir).parent if RunDir(Path(run_dir).parent).exists else Path(run_dir)
        stage = Path(run_dir).name if top != Path(run_dir) else None
        callbacks.append(TrackingCallback(config.train.report_to, top, config.model_dump(mode="json", exclude={"reasons", "sources"}), stage))
    if has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping_patience))
    return callbacks


def resume_point(run_dir: Path) -> tuple[RunConfig, str]:
    run = RunDir(run_dir)
    if not run.exists:
        raise ModelError(f"{run_dir} is not a tunesmith run directory (no config.yaml); check the path.")
    config = run.config
    if "auto" in (config.train.fused_kernels, config.train.logging_steps):
        # Settings a config saved by hand (or before they existed) may leave open; neither changes what
        # is learned: fill them as the resolver would (a run saved before Liger support trained without).
        import torch

        config = config.model_copy(deep=True)
        if config.train.fused_kernels == "auto":
            config.train.fused_kernels = False
        if config.train.logging_steps == "auto":
            config.train.logging_steps = 10 if torch.cuda.is_available() else 1
    if config.unresolved():
        raise ConfigError(f"{run_dir}/config.yaml still has 'auto' values; it was not written by tunesmith train.")
    checkpoints = complete_checkpoints(run_dir)
    if not checkpoints:
        raise ModelError(f"{run_dir} has no checkpoint yet; start the run again without --resume.")
    return config, str(checkpoints[-1])


def start_run(config: RunConfig, run_dir: Path, resume: bool) -> tuple[RunConfig, str | None]:
    """The config and checkpoint to start from: a fresh run refuses a used directory, a
    resumed one reads its saved config."""
    if resume:
        return resume_point(run_dir)
    if RunDir(run_dir).exists and not launched():  # the launcher checked before the main process wrote it
        raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --output.")
    if not config.data.train:
        raise ConfigError("No training data given: pass --data FILE or set data.train in the config.")
    quantization_config(config.method)  # a GPU-only setting fails before anything is written
    check_fused_kernels(config)
    return config, None
