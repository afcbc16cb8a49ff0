"""What every training recipe shares: the data gate, the validation split, the base model
with its adapter (the PEFT family, QLoRA, full fine-tuning with frozen layers), the
trainer settings, saving the weights and finding the resume point.

Each recipe (sft.py, pretrain.py, classify.py) reads top to bottom and calls these.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config import (
    RL_STAGES,
    MethodConfig,
    RunConfig,
    save_config,
)
from tunesmith.data.quality import check_data, write_card
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
from tunesmith.train.callbacks import MetricsFileCallback
from tunesmith.train.distributed import is_main_process, launched

LORA_FAMILY = ("lora", "rslora", "dora", "pissa", "olora")
PROMPT_LEARNING = ("prompt", "prefix")  # virtual tokens: no weights to merge, no packing
# Names of the output projection of a model's MLP, per architecture family, for IA3 (which
# scales feed-forward inputs and attention keys/values).
FEEDFORWARD_OUT = ("down_proj", "fc2", "dense_4h_to_h", "w2", "wo", "fc_out")
ATTENTION_KV = ("k_proj", "v_proj", "key", "value", "query_key_value", "c_attn", "Wqkv")
HEADS = ("lm_head", "score", "classifier", "embed_out", "output")


# --------------------------------------------------------------------------- data


def gate_data(config: RunConfig, tokenizer, task: str | None = None):
    """Run the data quality gate on the training (and validation) file before anything
    trains. Errors stop the run with the top problems and the way out, unless
    `data.force` is set, which the returned data card records."""
    max_length = config.train.max_length if isinstance(config.train.max_length, int) else None
    card = check_data(
        config.data.train,
        config.data.validation,
        tokenizer=tokenizer,
        max_length=max_length,
        columns=config.data.columns,
        task=task,
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


# --------------------------------------------------------------------------- model


def load_base(config: RunConfig, head: str = "lm", **kwargs):
    """The base model, quantized for QLoRA when asked, with the bottom layers frozen for a
    partial full fine-tune. `head` is "lm" or "classify" (kwargs go to `from_pretrained`)."""
    m = config.method
    quantization = quantization_config(m)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": 0}
    import torch

    # A new head (a classifier's, a reward model's) is drawn from the global generator: seed it,
    # so the run does not depend on what this process drew before (a repeat gives the same run).
    torch.manual_seed(config.train.seed)
    model = load_model(config.model.name, head=head, **kwargs)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # Casts norms to float32 and enables input gradients, as QLoRA training needs.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=m.gradient_checkpointing)
    if m.freeze_layers:
        freeze_bottom_layers(model, m.freeze_layers)
    return model


def quantization_config(method: MethodConfig):
    """bitsandbytes settings for a 4-bit (NF4, double quantization: QLoRA's recipe) or 8-bit
    base; a clear error where they cannot run."""
    if method.quantize == "none":
        return None
    import torch

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
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
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
        if m.gradient_checkpointing:
            model.config.use_cache = False
        return model
    from peft import get_peft_model

    if m.gradient_checkpointing and m.quantize == "none":
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
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


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
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        gradient_checkpointing=m.gradient_checkpointing,
        neftune_noise_alpha=m.neftune_alpha or None,
        label_smoothing_factor=m.label_smoothing,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        report_to="none",
        disable_tqdm=True,  # the CLI draws its own rich progress bar
        dataloader_num_workers=0,
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

    callbacks = [MetricsFileCallback(RunDir(run_dir).metrics_file), *(extra or [])]
    if has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping_patience))
    return callbacks


def resume_point(run_dir: Path) -> tuple[RunConfig, str]:
    run = RunDir(run_dir)
    if not run.exists:
        raise ModelError(f"{run_dir} is not a tunesmith run directory (no config.yaml); check the path.")
    config = run.config
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
    return config, None
