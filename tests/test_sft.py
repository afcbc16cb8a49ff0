"""Tests for the SFT recipe (tunesmith.train.sft) and the auto resolver, on the tiny model."""

import copy
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import banking_rows, tiny_run_config, write_chat_file
from tunesmith.config import RunConfig, load_config, save_config
from tunesmith.errors import ConfigError, DataError, ModelError
from tunesmith.train.auto import resolve
from tunesmith.train.sft import assistant_spans, tokenize_chats, train_sft

EOS = "<|im_end|>"


def chat(*turns):
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def masked_text(example, tokenizer):
    ids = [i for i, m in zip(example["input_ids"], example["assistant_masks"]) if m]
    return tokenizer.decode(ids, skip_special_tokens=False)


def learned_runs(example, tokenizer):
    """Decoded text of each contiguous run of masked tokens."""
    runs, current = [], []
    for token, m in zip(example["input_ids"], example["assistant_masks"]):
        if m:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    if current:
        runs.append(tokenizer.decode(current, skip_special_tokens=False))
    return runs


# --------------------------------------------------------------------------- loss mask


def test_assistant_span_is_reply_plus_eos(tiny_tokenizer):
    messages = chat("Why would my card payment not work?", "declined_card_payment")
    text, spans = assistant_spans(messages, tiny_tokenizer)
    assert [text[s:e] for s, e in spans] == ["declined_card_payment" + EOS]
    assert text.endswith("<|im_start|>assistant\ndeclined_card_payment<|im_end|>\n")


def test_mask_covers_reply_and_eos_only(tiny_tokenizer):
    messages = chat("Why would my card payment not work?", "declined_card_payment")
    result = tokenize_chats([{"messages": messages}], tiny_tokenizer, max_length=512)
    [example] = result.examples
    assert len(example["input_ids"]) == len(example["assistant_masks"])
    assert learned_runs(example, tiny_tokenizer) == ["declined_card_payment" + EOS]
    # the user text and the assistant header are context, not targets
    context = tiny_tokenizer.decode(
        [i for i, m in zip(example["input_ids"], example["assistant_masks"]) if not m], skip_special_tokens=False
    )
    assert context == "<|im_start|>user\nWhy would my card payment not work?<|im_end|>\n<|im_start|>assistant\n\n"
    assert result.truncated == 0 and result.skipped == 0


def test_multi_turn_masks_every_assistant_turn(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *chat("card lost", "lost_or_stolen_card", "top up?", "top_up_failed")]
    [example] = tokenize_chats([{"messages": messages}], tiny_tokenizer, max_length=512).examples
    assert learned_runs(example, tiny_tokenizer) == ["lost_or_stolen_card" + EOS, "top_up_failed" + EOS]


def test_template_without_eos_gets_eos_appended(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    messages = chat("card lost", "lost_or_stolen_card")
    text, spans = assistant_spans(messages, tokenizer)
    assert [text[s:e] for s, e in spans] == ["lost_or_stolen_card" + EOS]
    [example] = tokenize_chats([{"messages": messages}], tokenizer, max_length=512).examples
    # Byte-level BPE glues the space after "assistant:" to the reply's first word; that
    # token is still learned (it is the first thing the model must produce).
    assert learned_runs(example, tokenizer) == [" lost_or_stolen_card" + EOS]


def test_truncation_is_counted(tiny_tokenizer):
    messages = chat("card lost", "lost_or_stolen_card")
    full = tokenize_chats([{"messages": messages}], tiny_tokenizer, max_length=512).examples[0]
    cut = tokenize_chats([{"messages": messages}], tiny_tokenizer, max_length=len(full["input_ids"]) - 2)
    assert cut.truncated == 1 and cut.skipped == 0
    [example] = cut.examples
    assert len(example["input_ids"]) == len(full["input_ids"]) - 2
    assert example["assistant_masks"] == full["assistant_masks"][:-2]


def test_row_with_answer_cut_off_is_skipped(tiny_tokenizer):
    rows = [
        {"messages": chat("a very long question " * 20, "card_arrival")},
        {"messages": chat("hi", "greeting")},
    ]
    result = tokenize_chats(rows, tiny_tokenizer, max_length=24)
    assert result.skipped == 1
    assert result.truncated == 1
    assert len(result.examples) == 1
    assert learned_runs(result.examples[0], tiny_tokenizer) == ["greeting" + EOS]


# --------------------------------------------------------------------------- auto resolver


def chat_rows(n):
    return [{"messages": chat(text, label)} for text, label in banking_rows(n)]


def test_resolve_fills_every_auto_field_with_a_reason(tiny_model_dir, tiny_tokenizer):
    config = RunConfig.model_validate({"model": {"name": str(tiny_model_dir)}})
    auto_fields = config.unresolved()
    resolved = resolve(config, chat_rows(40), tiny_tokenizer, has_validation_file=False)
    assert resolved.unresolved() == []
    assert set(auto_fields) <= set(resolved.reasons)
    assert all(resolved.reasons[key] for key in auto_fields)
    assert config.unresolved() == auto_fields  # the input config is not changed
    t = resolved.train
    assert 0 < resolved.data.validation_split <= 0.1
    assert t.max_length >= 64 and t.pack_length >= t.max_length
    assert t.learning_rate == 4e-3  # LoRA on a model far under 300M parameters
    assert t.epochs == 3 and t.eval_steps >= 5


def test_auto_max_length_covers_the_longest_example(tiny_model_dir, tiny_tokenizer):
    rows = chat_rows(30) + [{"messages": chat("card " * 150, "lost_or_stolen_card")}]
    longest = max(len(tiny_tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows)
    config = RunConfig.model_validate({"model": {"name": str(tiny_model_dir)}})
    t = resolve(config, rows, tiny_tokenizer, has_validation_file=False).train
    assert longest > 150 and t.max_length >= longest  # no row loses its answer to the cut


def test_resolve_keeps_explicit_values(tiny_model_dir, tiny_tokenizer):
    config = RunConfig.model_validate(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"validation_split": 0.25},
            "train": {"learning_rate": 0.123, "batch_size": 3, "max_length": 77, "eval_steps": 9},
        }
    )
    resolved = resolve(config, chat_rows(40), tiny_tokenizer, has_validation_file=False)
    assert resolved.data.validation_split == 0.25
    t = resolved.train
    assert (t.learning_rate, t.batch_size, t.max_length, t.eval_steps) == (0.123, 3, 77, 9)
    for key in ("data.validation_split", "train.learning_rate", "train.batch_size", "train.max_length", "train.eval_steps"):
        assert key not in resolved.reasons


def test_resolve_tiny_dataset_holds_nothing_out(tiny_model_dir, tiny_tokenizer):
    config = RunConfig.model_validate({"model": {"name": str(tiny_model_dir)}})
    resolved = resolve(config, chat_rows(12), tiny_tokenizer, has_validation_file=False)
    assert resolved.data.validation_split == 0.0
    assert "12 rows" in resolved.reasons["data.validation_split"]
    with_file = resolve(config, chat_rows(40), tiny_tokenizer, has_validation_file=True)
    assert with_file.data.validation_split == 0.0


# --------------------------------------------------------------------------- training


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_run_learns_and_writes_run_dir(tiny_run):
    run_dir, summary = tiny_run
    rows = read_metrics(run_dir)
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 12
    assert losses[0] > losses[-1], losses
    keys = set().union(*rows)
    assert {"train_loss", "eval_loss", "tokens_per_s", "learning_rate"} <= keys
    assert sum("eval_loss" in r for r in rows) == 3  # steps 4, 8, 12

    # LoRA B matrices start at zero: any non-zero value means the adapter was trained.
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())
    assert (run_dir / "adapter" / "adapter_config.json").exists()

    config = load_config(run_dir / "config.yaml")
    assert config.unresolved() == []
    assert "data.validation_split" in config.reasons
    assert "auto" not in (run_dir / "config.yaml").read_text().replace("reasons", "")

    info = json.loads((run_dir / "run.json").read_text())
    assert info == summary.to_json()
    assert info["global_step"] == 12 and info["method"] == "lora" and info["weights"] == "adapter"
    assert info["train_rows"] + info["validation_rows"] == 40
    assert any(p.name.startswith("checkpoint-") for p in (run_dir / "checkpoints").iterdir())
    card = json.loads((run_dir / "data_card.json").read_text())  # the gate ran first
    assert card["rows"] == 40 and card["stats"]["trained_despite_errors"] is False


def test_full_fine_tune_writes_model(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl", n=16), max_steps=2, eval_steps=2)
    config.method.adapter = "full"
    summary = train_sft(config, tmp_path / "run")
    assert summary.weights == "model" and summary.global_step == 2
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "config.json").exists()
    assert list(model_dir.glob("*.safetensors"))
    assert (model_dir / "tokenizer_config.json").exists()
    assert not (tmp_path / "run" / "adapter").exists()

    from tunesmith.inference.generate import generate, load_for_inference

    loaded = load_for_inference(str(tmp_path / "run"))
    assert len(generate(loaded, [[{"role": "user", "content": "card lost"}]], max_new_tokens=3)) == 1


class StopAt(TrainerCallback):
    """Simulates a killed run: raises once training reaches `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def last_train_loss(run_dir):
    return [r for r in read_metrics(run_dir) if "train_loss" in r][-1]


def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl")
    config = tiny_run_config(tiny_model_dir, data, max_steps=8, eval_steps=2)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_sft(config, interrupted, callbacks=[StopAt(5)])
    assert (interrupted / "checkpoints" / "checkpoint-4").is_dir()
    assert not (interrupted / "adapter").exists()
    assert not (interrupted / "run.json").exists()

    resumed = train_sft(None, interrupted, resume=True)
    assert resumed.global_step == 8
    assert json.loads((interrupted / "run.json").read_text())["global_step"] == 8

    straight = train_sft(config, tmp_path / "straight")
    assert straight.global_step == 8
    a, b = last_train_loss(interrupted), last_train_loss(tmp_path / "straight")
    assert a["step"] == b["step"] == 8
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-4, (a, b)
    assert abs(resumed.best_eval_loss - straight.best_eval_loss) < 1e-4
    wa = load_file(interrupted / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


def test_run_into_existing_run_dir_is_config_error(tiny_run, tiny_model_dir):
    run_dir, _ = tiny_run
    config = tiny_run_config(tiny_model_dir, run_dir.parent / "chat.jsonl")
    with pytest.raises(ConfigError, match="--resume"):
        train_sft(config, run_dir)


def test_resume_without_checkpoint_is_model_error(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(tiny_run_config(tiny_model_dir, tmp_path / "chat.jsonl"), run_dir / "config.yaml")
    with pytest.raises(ModelError, match="no checkpoint"):
        train_sft(None, run_dir, resume=True)


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    """A process killed while saving leaves a checkpoint without (or with half of) its
    trainer_state.json, written last: resuming takes the newest complete one."""
    from tunesmith.runs import complete_checkpoints

    for step, state in ((10, '{"global_step": 10}'), (20, '{"global_step": 20}'), (30, '{"global_st'), (40, None)):
        path = tmp_path / "checkpoints" / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if state is not None:
            (path / "trainer_state.json").write_text(state)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-20"]


def test_resume_outside_run_dir_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="config.yaml"):
        train_sft(None, tmp_path, resume=True)


def test_no_training_data_is_config_error(tmp_path, tiny_model_dir):
    config = RunConfig.model_validate({"model": {"name": str(tiny_model_dir)}})
    with pytest.raises(ConfigError, match="data"):
        train_sft(config, tmp_path / "run")


def test_packed_rows_attend_only_within_each_example(tiny_model_dir):
    """Padding-free packing relies on transformers building a block-diagonal mask from the
    restarting position ids (with the cache off, as in training): a packed row must give
    the same logits as its examples run one by one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    seqs = [[5, 9, 17, 3, 44], [8, 8, 21], [30, 2, 7, 11]]
    ids = torch.tensor([sum(seqs, [])])
    positions = torch.tensor([[p for s in seqs for p in range(len(s))]])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        separate = torch.cat([model(input_ids=torch.tensor([s]), use_cache=False).logits[0] for s in seqs])
    assert torch.allclose(packed, separate, atol=1e-4)


# --------------------------------------------------------------------------- data gate


QUALITY_CHAT = Path(__file__).parent / "data_files" / "quality" / "chat.jsonl"


def test_train_refuses_data_with_gate_errors(tiny_model_dir, tmp_path):
    config = tiny_run_config(tiny_model_dir, QUALITY_CHAT, max_steps=2)
    with pytest.raises(DataError) as exc:
        train_sft(config, tmp_path / "run")
    assert "data gate" in str(exc.value) and "--force" in str(exc.value) and "--fix" in str(exc.value)
    assert not (tmp_path / "run").exists()


def test_train_force_records_it_in_the_card(tiny_model_dir, tmp_path):
    config = tiny_run_config(tiny_model_dir, QUALITY_CHAT, max_steps=2)
    config.data.force = True
    train_sft(config, tmp_path / "run")
    card = json.loads((tmp_path / "run" / "data_card.json").read_text())
    assert card["stats"]["trained_despite_errors"] is True
    assert any(f["severity"] == "error" for f in card["findings"])
