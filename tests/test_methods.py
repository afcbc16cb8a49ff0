"""Every adaptation method on the tiny model: the PEFT family, full fine-tuning with frozen
layers, continued pretraining, classification, two-stage runs, QLoRA's GPU guard, NEFTune
and label smoothing. Each trains, its loss moves, and its saved artifact reloads and gives
the same predictions as the model in memory at the end of training."""

import json
from typing import get_args

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import tiny_run_config, write_chat_file
from tunesmith.config import Adapter, RunConfig
from tunesmith.errors import ConfigError, DataError, ModelError
from tunesmith.inference.generate import generate, load_for_inference
from tunesmith.inference.classifier import load_classifier, predict
from tunesmith.train.classify import train_classify
from tunesmith.train.common import linear_module_names, peft_config
from tunesmith.train.pretrain import replay_blocks, to_blocks, train_pretrain
from tunesmith.train.sft import train_sft
from tunesmith.workflows.train_eval import train as train_stages

PROBE = [[5, 17, 42, 99, 7, 3]]  # a fixed token sequence to compare predictions on


class FinalLogits(TrainerCallback):
    """The trained model's last-position logits on PROBE, taken after the best checkpoint
    was restored: what the saved artifact must reproduce."""

    def __init__(self):
        self.logits = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            ids = torch.tensor(PROBE, device=model.device)
            self.logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float().cpu()
        model.train(was_training)


def last_logits(model) -> torch.Tensor:
    with torch.no_grad():
        ids = torch.tensor(PROBE)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()


def losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


# --------------------------------------------------------------------------- the PEFT family and full


ADAPTERS = list(get_args(Adapter))  # every adapter the config accepts is tested


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_trains_and_reloads(adapter, tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"), learning_rate=1e-2)
    config.method.adapter = adapter
    config.method.num_virtual_tokens = 4
    probe = FinalLogits()
    summary = train_sft(config, tmp_path / "run", callbacks=[probe])

    loss = losses(tmp_path / "run")
    assert len(loss) == 12 and all(x == x for x in loss)  # finite
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, f"{adapter}: loss did not fall: {loss}"
    assert 0 < summary.trainable_params <= summary.total_params
    if adapter != "full":
        assert summary.trainable_params < summary.total_params / 2
    assert (tmp_path / "run" / summary.weights).is_dir()

    loaded = load_for_inference(str(tmp_path / "run"))
    torch.testing.assert_close(last_logits(loaded.model), probe.logits, atol=2e-4, rtol=1e-3)
    [answer] = generate(loaded, [[{"role": "user", "content": "card lost"}]], max_new_tokens=3)
    assert isinstance(answer, str)
    base = load_for_inference(str(tmp_path / "run"), base=True)
    assert not torch.allclose(last_logits(base.model), probe.logits, atol=1e-3), "training changed nothing"


def test_a_cpu_that_computes_bfloat16_trains_under_autocast_and_saves_float32(tmp_path, tiny_model_dir, monkeypatch):
    # TUNESMITH_CPU_BF16=1 forces the path a CPU with AVX512-BF16 or AMX takes (emulated elsewhere).
    from transformers import TrainerCallback

    monkeypatch.setenv("TUNESMITH_CPU_BF16", "1")
    seen = {}

    class Args(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.update(bf16=args.bf16, use_cpu=args.use_cpu)

    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"), learning_rate=1e-2)
    train_sft(config, tmp_path / "run", callbacks=[Args()])
    assert seen == {"bf16": True, "use_cpu": True}
    loss = losses(tmp_path / "run")
    assert all(x == x for x in loss) and sum(loss[-3:]) < sum(loss[:3])
    loaded = load_for_inference(str(tmp_path / "run"))
    assert next(loaded.model.parameters()).dtype == torch.float32  # autocast computes in bfloat16, weights stay float32


def test_targets_are_every_linear_layer_but_the_head(tiny_model_dir):
    from tunesmith.models import load_model

    names = linear_module_names(load_model(str(tiny_model_dir)))
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    ia3 = peft_config(RunConfig.model_validate({"method": {"adapter": "ia3"}}).method, load_model(str(tiny_model_dir)), "CAUSAL_LM")
    assert set(ia3.target_modules) == {"k_proj", "v_proj", "down_proj"} and set(ia3.feedforward_modules) == {"down_proj"}


def test_full_with_frozen_bottom_layers(tmp_path, tiny_model_dir):
    from tunesmith.models import load_model

    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"), max_steps=4, eval_steps=4)
    config.method.adapter = "full"
    config.method.freeze_layers = 1
    config.method.gradient_checkpointing = True
    train_sft(config, tmp_path / "run")
    before = load_model(str(tiny_model_dir)).state_dict()
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    same = lambda key: torch.equal(before[key], after[key].to(before[key].dtype))  # noqa: E731
    assert same("model.embed_tokens.weight")
    assert same("model.layers.0.mlp.down_proj.weight") and same("model.layers.0.self_attn.q_proj.weight")
    assert not same("model.layers.1.mlp.down_proj.weight")


def test_freezing_more_layers_than_exist_is_config_error(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"))
    config.method.adapter = "full"
    config.method.freeze_layers = 9
    with pytest.raises(ConfigError, match="only 2 layers"):
        train_sft(config, tmp_path / "run")


def test_neftune_and_label_smoothing_change_the_loss(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl")
    runs = {}
    for name, neftune, smoothing in [("plain", 0.0, 0.0), ("neftune", 5.0, 0.0), ("smooth", 0.0, 0.1)]:
        config = tiny_run_config(tiny_model_dir, data, max_steps=3, eval_steps=3)
        config.method.neftune_alpha = neftune
        config.method.label_smoothing = smoothing
        train_sft(config, tmp_path / name)
        runs[name] = losses(tmp_path / name)
    # Same seed, same data: only the option differs. NEFTune perturbs the embeddings from the
    # first step; label smoothing adds the smoothing term to the first step's loss.
    assert runs["neftune"][0] != pytest.approx(runs["plain"][0], abs=1e-6)
    assert runs["smooth"][0] > runs["plain"][0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gives")
@pytest.mark.parametrize("quantize", ["4bit", "8bit"])
def test_quantized_base_on_cpu_says_it_needs_a_gpu(quantize, tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"))
    config.method.quantize = quantize
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train_sft(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU")
def test_qlora_trains_on_gpu(tmp_path, tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"), learning_rate=1e-2)
    config.method.adapter = "lora"
    config.method.quantize = "4bit"
    summary = train_sft(config, tmp_path / "run")
    loss = losses(tmp_path / "run")
    assert loss[-1] < loss[0] and summary.weights == "adapter"
    load_for_inference(str(tmp_path / "run"))


# --------------------------------------------------------------------------- continued pretraining


def write_text_file(path, n=30):
    docs = [
        f"Ward {i % 5} note: patient stable, blood pressure {110 + i} over {70 + i % 9}, continue the current plan."
        for i in range(n)
    ]
    path.write_text("\n\n".join(docs) + "\n")
    return path


def test_blocks_keep_every_token(tiny_tokenizer):
    texts = ["one two three", "four five", "six"]
    blocks = to_blocks(texts, tiny_tokenizer, block=4)
    flat = [t for b in blocks for t in b]
    expected = []
    for ids in tiny_tokenizer(texts, add_special_tokens=False)["input_ids"]:
        expected += ids + [tiny_tokenizer.eos_token_id]
    assert flat == expected
    assert all(len(b) == 4 for b in blocks[:-1]) and len(blocks[-1]) <= 4


def test_replay_makes_the_asked_share():
    general = [[1, 2], [3, 4], [5, 6]]
    replay = replay_blocks(80, 0.2, general, seed=0)
    assert len(replay) == 20  # 20 of 100 blocks
    assert all(b in general for b in replay)
    assert replay_blocks(80, 0.0, general, seed=0) == []


def test_pretrain_trains_on_every_token_with_replay(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_text_file(tmp_path / "notes.txt"), learning_rate=1e-2, max_length=32)
    config.method.stages = ["pretrain"]
    config.data.replay_ratio = 0.25
    probe = FinalLogits()
    summary = train_pretrain(config, tmp_path / "run", callbacks=[probe])
    assert summary.task == "pretrain" and summary.replay_blocks == round(summary.train_blocks / 3)
    assert summary.best_eval_perplexity == pytest.approx(2.718281828 ** summary.best_eval_loss)
    loss = losses(tmp_path / "run")
    assert loss[-1] < loss[0]
    loaded = load_for_inference(str(tmp_path / "run"))
    torch.testing.assert_close(last_logits(loaded.model), probe.logits, atol=2e-4, rtol=1e-3)


def test_pretrain_on_chat_data_is_one_sentence(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"))
    config.method.stages = ["pretrain"]
    with pytest.raises(DataError, match="needs raw text"):
        train_pretrain(config, tmp_path / "run")


def test_prompt_tuning_cannot_pretrain(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_text_file(tmp_path / "notes.txt"))
    config.method.stages = ["pretrain"]
    config.method.adapter = "prompt"
    with pytest.raises(ConfigError, match="lora or full"):
        train_pretrain(config, tmp_path / "run")


# --------------------------------------------------------------------------- classification


def write_label_file(path, n=120):
    """Learnable from one word: the label is the account word in the text."""
    words = {"card": "card_problem", "loan": "loan_question", "fee": "fee_dispute"}
    fillers = ["please help", "my", "why is there a", "question about the", "urgent:"]
    lines = ["text,label"]
    for i in range(n):
        word = list(words)[i % 3]
        lines.append(f"{fillers[i % 5]} {word} number {i},{words[word]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def classify_config(model_dir, data, **train):
    values = dict(batch_size=8, max_steps=30, eval_steps=10, learning_rate=5e-3, max_length=32)
    values.update(train)
    config = tiny_run_config(model_dir, data, **values)
    config.method.stages = ["classify"]
    config.train.best_metric = "accuracy"
    config.data.validation_split = 0.2
    return config


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_classifier_learns_and_predict_reloads(adapter, tmp_path, tiny_model_dir):
    config = classify_config(tiny_model_dir, write_label_file(tmp_path / "labels.csv"))
    config.method.adapter = adapter
    config.method.num_virtual_tokens = 4
    if adapter == "full":
        config.train.learning_rate = 1e-3
    if adapter in ("prompt", "prefix", "ia3"):
        config.train.learning_rate = 5e-2
    probe = FinalLogits()
    try:
        summary = train_classify(config, tmp_path / "run", callbacks=[probe])
    except ConfigError as exc:
        if adapter == "prefix" and "past key values" in str(exc):
            pytest.skip("this transformers version gives classification heads no key/value cache to prefix")
        raise
    assert summary.labels == 3 and summary.validation_rows == 24
    assert summary.eval_accuracy is not None and 0 <= summary.eval_macro_f1 <= 1
    if adapter not in ("prompt", "prefix", "ia3"):  # these steer a random tiny model only weakly
        assert summary.eval_accuracy > 0.6, summary
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in r and "eval_macro_f1" in r for r in rows)

    classifier = load_classifier(tmp_path / "run")
    assert classifier.labels == ["card_problem", "fee_dispute", "loan_question"]
    torch.testing.assert_close(last_logits(classifier.model), probe.logits, atol=2e-4, rtol=1e-3)
    [p] = predict(classifier, ["urgent: fee number 7"])
    assert p["label"] in classifier.labels and 0 < p["probability"] <= 1
    assert [label for label, _ in p["top"]][0] == p["label"] and len(p["top"]) == 3


def test_classify_errors_are_one_sentence(tmp_path, tiny_model_dir):
    config = classify_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"))
    with pytest.raises(DataError, match="text\\+label"):
        train_classify(config, tmp_path / "run")
    val = tmp_path / "val.csv"
    val.write_text("text,label\nsomething new,brand_new_label\nanother,card_problem\n")
    config = classify_config(tiny_model_dir, write_label_file(tmp_path / "labels.csv"))
    config.data.validation = str(val)
    with pytest.raises(DataError, match="brand_new_label"):
        train_classify(config, tmp_path / "run2")


def test_generation_and_classification_runs_are_not_confused(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    with pytest.raises(ModelError, match="not a classification run"):
        load_classifier(run_dir)


# --------------------------------------------------------------------------- stages


def test_pretrain_then_sft_starts_from_the_first_stage(tmp_path, tiny_model_dir):
    from tunesmith.config import load_config
    from tunesmith.models import load_model

    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"), max_steps=6, eval_steps=3)
    config.method.stages = ["pretrain", "sft"]
    config.data.pretrain = str(write_text_file(tmp_path / "notes.txt"))
    summary = train_stages(config, tmp_path / "run")

    run = tmp_path / "run"
    assert [s.stage for s in summary.stages] == ["pretrain", "sft"]
    for stage in ("pretrain", "sft"):
        assert (run / stage / "adapter").is_dir() and (run / stage / "metrics.jsonl").exists()
        assert (run / stage / "config.yaml").exists() and (run / stage / "run.json").exists()
    sft_config = load_config(run / "sft" / "config.yaml")
    assert sft_config.model.name == str(run / "pretrain" / "merged")
    assert sft_config.data.train.endswith("chat.jsonl")
    assert load_config(run / "pretrain" / "config.yaml").data.train.endswith("notes.txt")
    # The second stage's base is the first stage's result, not the original model.
    merged = load_model(str(run / "pretrain" / "merged")).state_dict()
    pretrained = load_for_inference(str(run / "pretrain")).model.state_dict()
    original = load_model(str(tiny_model_dir)).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged[key], pretrained[key]) and not torch.equal(merged[key], original[key])
    # The run directory answers with the last stage; --base means the original model.
    loaded = load_for_inference(str(run))
    assert "sft" in loaded.name
    base = load_for_inference(str(run), base=True)
    torch.testing.assert_close(last_logits(base.model), last_logits(load_model(str(tiny_model_dir))))

    # Resuming a finished multi-stage run trains nothing again.
    before = (run / "sft" / "run.json").read_text()
    train_stages(RunConfig(), run, resume=True)
    assert (run / "sft" / "run.json").read_text() == before


def test_multistage_without_pretrain_data_is_config_error(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"))
    config.method.stages = ["pretrain", "sft"]
    with pytest.raises(ConfigError, match="--pretrain-data"):
        train_stages(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_pretrain_then_classify(tmp_path, tiny_model_dir):
    config = classify_config(tiny_model_dir, write_label_file(tmp_path / "labels.csv"), max_steps=6, eval_steps=3)
    config.method.stages = ["pretrain", "classify"]
    config.data.pretrain = str(write_text_file(tmp_path / "notes.txt"))
    summary = train_stages(config, tmp_path / "run")
    assert summary.task == "classify"
    classifier = load_classifier(tmp_path / "run")
    assert predict(classifier, ["card number 3"])[0]["label"] in classifier.labels


def test_a_classifier_averages_its_loss_over_accumulated_micro_batches(tmp_path, tiny_model_dir):
    """The head returns each micro-batch's mean loss; the trainer took it for a loss already
    normalised over the accumulation, so the logged loss (and the gradient) were
    gradient_accumulation times too large (28.5 for 27 CUAD classes at 8 micro-batches)."""
    def first_loss(accumulation: int) -> float:
        config = classify_config(tiny_model_dir, write_label_file(tmp_path / f"labels{accumulation}.csv"))
        config.train.batch_size, config.train.gradient_accumulation = 2, accumulation
        config.train.max_steps, config.train.learning_rate = 1, 1e-9  # the loss of the initial head
        train_classify(config, tmp_path / f"run{accumulation}")
        rows = [json.loads(line) for line in (tmp_path / f"run{accumulation}" / "metrics.jsonl").read_text().splitlines()]
        return next(r["train_loss"] for r in rows if "train_loss" in r)

    one, eight = first_loss(1), first_loss(8)
    assert eight == pytest.approx(one, rel=0.5), (one, eight)  # the same head, averaged over 8 micro-batches
