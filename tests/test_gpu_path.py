"""The GPU path (issue 24): speed figures on every run, the MFU formula, the GPU sizing and
4-bit rules, fused kernels and precision choices, and the trainer that reads its metrics once
per log event. Everything here runs on a CPU; the checks that need a CUDA GPU are at the end and
skip cleanly without one."""

import dataclasses
import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import write_chat_file

from tunesmith.config import MethodConfig, RunConfig
from tunesmith.train import speed
from tunesmith.train.auto import (
    GpuFacts,
    choose_quantize,
    quantize_decision,
    size_micro_batch,
)
from tunesmith.train.callbacks import SpeedCallback
from tunesmith.train.common import common_args

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")


# --------------------------------------------------------------------------- figures on every run


def test_tiny_run_writes_speed_figures(tiny_run):
    run_dir, _summary = tiny_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train_loss" in r]
    assert train_rows and all(r["tokens_per_s"] > 0 and r["peak_memory_gb"] > 0 for r in train_rows)
    assert not any("mfu" in r for r in rows)  # no MFU on a CPU
    info = json.loads((run_dir / "run.json").read_text())
    assert info["device"] == "cpu" and info["peak_memory_kind"] == "cpu_rss" and info["peak_memory_gb"] > 0
    assert info["tokens_per_s"] > 0 and 0 < info["training_seconds"] <= info["train_runtime_s"]
    assert info["tokens_seen"] > 0 and info["flops_per_token"] > 0 and "mfu" not in info
    assert info["attention"] == "sdpa" and "fused_kernels" not in info
    # tokens_seen counts what the model trained on: every packed token of 12 one-row steps
    assert info["tokens_seen"] <= 12 * 128


def test_cpu_run_resolves_logging_and_leaves_liger_off(tiny_run):
    from tunesmith.config import load_config

    run_dir, _ = tiny_run
    config = load_config(run_dir / "config.yaml")
    assert config.train.logging_steps == 1 and "every step on a CPU" in config.reasons["train.logging_steps"]
    assert config.train.fused_kernels is False
    assert "off on a CPU" in config.reasons["train.fused_kernels"]


def test_common_args_cut_host_work_on_gpu_only(tiny_model_dir, tiny_chat_file, tmp_path):
    from conftest import tiny_run_config

    config = tiny_run_config(tiny_model_dir, tiny_chat_file)
    args = common_args(config, tmp_path, has_eval=True)
    assert args["include_num_input_tokens_seen"] == "no"  # SpeedCallback counts without a sync
    assert args["logging_steps"] == 1  # "auto" left unresolved reads as every step
    if not CUDA:
        assert args["dataloader_num_workers"] == 0 and args["dataloader_pin_memory"] is False
        assert args["logging_nan_inf_filter"] is True and not args["bf16"] and not args["fp16"]


# --------------------------------------------------------------------------- MFU


def test_flops_per_token_is_6n_full_and_about_4n_lora():
    n = 1_700_000_000
    assert speed.flops_per_token(n, n) == 6 * n
    lora = speed.flops_per_token(n, 18_000_000)
    assert lora == 4 * n + 2 * 18_000_000 and 4 * n < lora < 4.05 * n


def test_mfu_from_tokens_per_second_and_peak():
    # The measurement: 17.6k tokens/s on a 1.7B LoRA on an H200 (989 TFLOP/s) is about 12-15%.
    value = speed.mfu(17_600, speed.flops_per_token(1_711_000_000, 18_000_000), 989.0)
    assert value == pytest.approx(17_600 * (4 * 1_711_000_000 + 36_000_000) / 989e12)
    assert 0.10 < value < 0.15
    assert speed.mfu(17_600, 1e9, 989.0, devices=2) == pytest.approx(speed.mfu(17_600, 1e9, 989.0) / 2)
    assert speed.mfu(None, 1e9, 989.0) is None and speed.mfu(100.0, 1e9, None) is None


def test_peak_tflops_by_name_and_override(monkeypatch):
    monkeypatch.delenv(speed.PEAK_ENV, raising=False)
    assert speed.peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert speed.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert speed.peak_tflops("NVIDIA H200")[0] == 989.0
    assert speed.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert speed.peak_tflops("NVIDIA L4")[0] == 121.0 and speed.peak_tflops("NVIDIA L40S")[0] == 362.0
    assert speed.peak_tflops("NVIDIA A10G")[0] == 70.0
    assert speed.peak_tflops("NVIDIA GeForce RTX 4090")[0] == 165.0
    value, why = speed.peak_tflops("Some Future GPU")
    assert value is None and speed.PEAK_ENV in why
    monkeypatch.setenv(speed.PEAK_ENV, "500")
    assert speed.peak_tflops("Some Future GPU") == (500.0, f"${speed.PEAK_ENV}")


def test_parameter_counts_leave_out_an_untied_input_embedding():
    from transformers import LlamaConfig, LlamaForCausalLM

    def model(tied):
        return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied))

    tied, untied = model(True), model(False)
    total, matmul, trainable = speed.parameter_counts(tied)
    assert total == matmul == trainable == sum(p.numel() for p in tied.parameters())
    total, matmul, _ = speed.parameter_counts(untied)
    assert matmul == total - 100 * 16  # the input embedding is a lookup
    untied.requires_grad_(False)
    assert speed.parameter_counts(untied)[2] == 0


# --------------------------------------------------------------------------- the callback


class Args(SimpleNamespace):
    world_size = 1
    device = torch.device("cpu")


def test_speed_callback_counts_real_tokens_and_leaves_out_evaluation(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tunesmith.train.callbacks.time.perf_counter", lambda: clock[0])
    model = torch.nn.Linear(4, 4)
    model.forward = lambda input_ids=None, attention_mask=None: None  # the hook sees the keywords
    cb = SpeedCallback()
    args, state = Args(), SimpleNamespace(num_input_tokens_seen=0, global_step=0, max_steps=10)
    cb.on_train_begin(args, state, None, model=model)

    def step(ids, mask=None, log=False, evaluate=False, seconds=1.0):
        control = SimpleNamespace(should_log=log, should_evaluate=evaluate, should_save=False)
        cb.on_step_begin(args, state, control)
        model(input_ids=ids, attention_mask=mask)
        clock[0] += seconds
        state.global_step += 1
        cb.on_step_end(args, state, control)

    padded = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    step(padded, mask)  # 8 real tokens of 10 positions
    assert state.num_input_tokens_seen == 0 and cb._device is not None  # no read before a log step
    step(torch.ones(1, 12, dtype=torch.long), log=True)  # padding-free: every position is real
    assert state.num_input_tokens_seen == 20
    logs = {"loss": 1.0}
    cb.on_log(args, state, None, logs=logs)
    assert logs["tokens_per_s"] == 10.0 and logs["peak_memory_gb"] > 0 and "mfu" not in logs

    with torch.no_grad():  # an evaluation or generation forward is not training
        model(input_ids=padded)
    step(padded, log=True, evaluate=True)  # 10 tokens in 1 s, then a 5 s evaluation
    cb.on_log(args, state, None, logs=(logs := {"loss": 1.0}))
    clock[0] += 5.0
    cb.on_evaluate(args, state, None)
    assert logs["tokens_per_s"] == 10.0
    step(padded, log=True)
    cb.on_log(args, state, None, logs=(logs := {"loss": 1.0}))
    assert logs["tokens_per_s"] == 10.0  # the evaluation's 5 s are not training time
    cb.on_train_end(args, state, None)
    summary = cb.summary()
    assert summary["tokens_per_s"] == 10.0 and summary["training_seconds"] == 4.0
    assert state.num_input_tokens_seen == 40 and summary["peak_memory_kind"] == ("cuda" if CUDA else "cpu_rss")


# --------------------------------------------------------------------------- sizing on a GPU (made-up numbers)

H200 = GpuFacts(params=1_711_000_000, hidden=2048, layers=24, vocab=49152, free_gb=139.0, peak_tflops=989.0,
                adapter="lora", quantize="none", checkpointing=False, flash=False, name="H200")


def test_sdpa_keeps_the_flattened_row_short_and_one_row_per_micro_batch():
    long_chats = size_micro_batch(H200, mean_length=1000, max_length=4096, examples_per_update=64)
    assert long_chats.batch_size == 1 and long_chats.pack_length == 4096  # one longest example
    short = size_micro_batch(H200, mean_length=40, max_length=128, examples_per_update=64)
    assert short.batch_size == 1 and short.pack_length == 2560  # one update's 64 examples of 40 tokens
    assert "one optimizer update" in short.reason and "SDPA" in short.reason


def test_flash_attention_fills_the_gpu_in_several_rows():
    flash = dataclasses.replace(H200, flash=True)
    size = size_micro_batch(flash, mean_length=1000, max_length=2048, examples_per_update=64)
    assert size.tokens > 8192 and size.pack_length <= 8192 and size.batch_size >= 1
    assert size.tokens <= size.fit_tokens and "FlashAttention-2" in size.reason


def test_sizing_stays_within_free_memory():
    tight = dataclasses.replace(H200, flash=True, free_gb=16.0)
    size = size_micro_batch(tight, mean_length=1000, max_length=2048, examples_per_update=64)
    assert size.tokens <= size.fit_tokens and "memory" in size.reason
    checkpointed = dataclasses.replace(tight, checkpointing=True)
    assert size_micro_batch(checkpointed, 1000, 2048, 64).fit_tokens > size.fit_tokens
    hopeless = dataclasses.replace(H200, params=70_000_000_000, hidden=8192, layers=80, free_gb=24.0)
    size = size_micro_batch(hopeless, mean_length=500, max_length=1024, examples_per_update=64)
    assert size.pack_length == 1024 and "--quantize 4bit" in size.reason


def test_four_bit_when_bf16_would_not_fit_in_free_memory():
    eight_b = {"params": 8_030_000_000, "hidden": 4096, "layers": 32, "vocab": 128256, "tokens": 4096}
    assert quantize_decision(**eight_b, free_gb=60.0)[0] == "none"
    value, why = quantize_decision(**eight_b, free_gb=20.0)
    assert value == "4bit" and "20.0 GB are free" in why and "fits" in why
    hw = {"device": "cuda", "name": "NVIDIA L4", "memory_gb": 22.0, "free_gb": 20.0}
    shape = {"hidden": 4096, "layers": 32, "vocab": 128256, "model_type": "llama"}
    assert choose_quantize(shape, 8_030_000_000, 4096, "lora", hw)[0] == "4bit"
    assert choose_quantize(shape, 8_030_000_000, 4096, "full", hw)[0] == "none"
    assert choose_quantize(shape, 8_030_000_000, 4096, "lora", {"device": "cpu"})[0] == "none"


def test_probe_shrinks_a_micro_batch_that_does_not_fit():
    # 16k tokens: weights 4 GB, peak 60 GB, optimizer 1 GB, on an 80 GB GPU (68 GB usable)
    assert speed.fit_to_probe(16384, 4.0, 60.0, 1.0, 80.0) == 16384
    fitted = speed.fit_to_probe(16384, 4.0, 90.0, 1.0, 80.0)
    assert fitted == int(16384 * (80 * 0.85 - 5.0) / 86.0)
    assert speed.shrink_layout(8192, 2, 2048, fitted) == (8192, 1)
    assert speed.shrink_layout(4096, 1, 1024, 3000) == (2944, 1)
    assert speed.shrink_layout(4096, 1, 1024, 500) == (1024, 1)  # never below one longest example


# --------------------------------------------------------------------------- kernels and precision


def test_liger_is_off_on_cpu_and_says_why():
    assert speed.fused_kernels_choice(False, "llama", True, {"llama"}) == (
        False, "Liger's fused kernels are Triton GPU kernels: off on a CPU")
    on, why = speed.fused_kernels_choice(True, "llama", False, set())
    assert not on and "tunesmith[gpu]" in why
    on, why = speed.fused_kernels_choice(True, "gpt_bigcode", True, {"llama", "qwen2"})
    assert not on and "gpt_bigcode" in why
    assert speed.fused_kernels_choice(True, "qwen2", True, {"llama", "qwen2"})[0]


def test_fused_kernels_true_on_cpu_is_one_clear_error(tiny_model_dir, tiny_chat_file, tmp_path):
    from conftest import tiny_run_config

    from tunesmith.errors import ConfigError
    from tunesmith.train.common import start_run

    config = tiny_run_config(tiny_model_dir, tiny_chat_file, fused_kernels=True)
    if CUDA and speed.liger_architectures():
        pytest.skip("Liger can run here")
    with pytest.raises(ConfigError, match="fused_kernels"):
        start_run(config, tmp_path / "run", resume=False)


def test_precision_is_one_dtype_per_run():
    assert speed.precision_choice(False, False, "none").dtype == "float32"
    eight = speed.precision_choice(True, True, "8bit")
    assert (eight.dtype, eight.fp16, eight.bf16) == ("float16", True, False)  # bitsandbytes int8 is float16
    four = speed.precision_choice(True, True, "4bit")
    assert (four.dtype, four.bf16) == ("bfloat16", True)
    assert speed.precision_choice(True, False, "4bit").dtype == "float16"
    assert speed.precision_choice(True, False, "none").dtype == "float32"  # as before on a GPU without bfloat16


def test_attention_choice():
    assert speed.attention_choice(False)[0] == "sdpa"
    assert speed.attention_choice(True, flash_installed=True)[0] == "flash_attention_2"
    assert speed.attention_choice(True, flash_installed=False)[0] == "sdpa"


def test_quantized_base_checkpoints_by_default():
    assert MethodConfig(adapter="qlora").checkpointing is True
    assert MethodConfig(quantize="8bit").checkpointing is True
    assert MethodConfig().checkpointing is False
    assert MethodConfig(adapter="qlora", gradient_checkpointing=False).checkpointing is False
    assert MethodConfig(adapter="qlora", quantize="auto").quantize == "4bit"
    assert RunConfig.model_validate({"method": {"quantize": "auto", "adapter": "full"}}).method.quantize == "auto"


# --------------------------------------------------------------------------- the lean trainer


def _sft_trainer(cls, model_dir, tokenizer, examples, out):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    torch.manual_seed(0)
    args = SFTConfig(output_dir=str(out), max_steps=3, per_device_train_batch_size=1, learning_rate=1e-2,
                     max_length=128, packing=True, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, seed=0, data_seed=0, dataset_num_proc=None, warmup_steps=0, bf16=CUDA)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return cls(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer)


def test_lean_sft_trainer_matches_trl(tiny_model_dir, tiny_tokenizer, tmp_path):
    from trl import SFTTrainer

    from tunesmith.train.sft import tokenize_chats
    from tunesmith.train.trainers import LeanSFTTrainer

    rows = [json.loads(line) for line in write_chat_file(tmp_path / "chat.jsonl", n=24).read_text().splitlines()]
    examples = tokenize_chats(rows, tiny_tokenizer, 128).examples
    history = {}
    for cls in (SFTTrainer, LeanSFTTrainer):
        trainer = _sft_trainer(cls, tiny_model_dir, tiny_tokenizer, examples, tmp_path / cls.__name__)
        trainer.train()
        history[cls] = [h for h in trainer.state.log_history if "loss" in h]
    trl, lean = history[SFTTrainer], history[LeanSFTTrainer]
    assert len(trl) == len(lean) == 3
    for a, b in zip(trl, lean):
        for key in ("loss", "entropy", "mean_token_accuracy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


# --------------------------------------------------------------------------- CUDA only


def _config_model(tmp_path, tokenizer, layers=4, hidden=256):
    """A small Llama built from a config (random weights) saved with `tokenizer`, in bfloat16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@needs_cuda
def test_liger_loss_matches_plain_kernels(tmp_path, tiny_tokenizer):
    if not speed.liger_architectures():
        pytest.skip("liger-kernel is not installed (pip install 'tunesmith[gpu]')")
    from transformers import AutoModelForCausalLM

    path = _config_model(tmp_path, tiny_tokenizer)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 64), device="cuda")
    losses, grads = [], []
    for liger in (False, True):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
        if liger:
            speed.apply_fused_kernels(model)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.model.layers[0].mlp.down_proj.weight.grad.float())
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    assert torch.allclose(grads[1], grads[0], rtol=0.05, atol=1e-3)


@needs_cuda
def test_qlora_peak_memory_is_under_half_of_bf16(tmp_path, tiny_tokenizer):
    pytest.importorskip("bitsandbytes")
    from tunesmith.train.common import load_base, wrap_model

    path = _config_model(tmp_path, tiny_tokenizer, layers=8, hidden=1024)
    peaks = {}
    for quantize in ("none", "4bit"):
        config = RunConfig.model_validate({"model": {"name": str(path)}, "method": {"quantize": quantize}})
        base = load_base(config)  # a 4-bit base is placed on the GPU as it loads
        model = wrap_model(base if quantize == "4bit" else base.cuda(), config, "CAUSAL_LM", tmp_path / quantize,
                           resume=False)
        _before, peak = speed.probe_peak_memory(model, 4096, len(tiny_tokenizer))
        peaks[quantize] = peak
        del model
        torch.cuda.empty_cache()
    assert peaks["4bit"] < 0.5 * peaks["none"], peaks


@needs_cuda
def test_eight_bit_base_casts_nothing_per_step(tmp_path, tiny_tokenizer, caplog):
    pytest.importorskip("bitsandbytes")
    from tunesmith.train.common import load_base, wrap_model

    path = _config_model(tmp_path, tiny_tokenizer)
    config = RunConfig.model_validate({"model": {"name": str(path)}, "method": {"quantize": "8bit"}})
    model = wrap_model(load_base(config), config, "CAUSAL_LM", tmp_path / "run", resume=False)
    ids = torch.randint(0, len(tiny_tokenizer), (1, 64), device="cuda")
    # bitsandbytes up to 0.49 warns about the cast; from 0.50 it logs it
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        with torch.autocast("cuda", dtype=torch.float16):
            model(input_ids=ids, labels=ids).loss.backward()
    assert not [w for w in caught if "inputs will be cast" in str(w.message)]
    assert "inputs will be cast" not in caplog.text
