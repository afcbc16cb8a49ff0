"""Tests for tunesmith.inference.generate (generation, loading runs) and evaluate.metrics."""

import json

import pytest

from tunesmith.config import save_config
from tunesmith.errors import DataError, ModelError
from tunesmith.evaluate.metrics import exact_match, normalize
from tunesmith.inference.generate import generate, load_for_inference, read_prompts, with_system

from conftest import tiny_run_config

CONVERSATIONS = [
    [{"role": "user", "content": "Why would my card payment not work?"}],
    [{"role": "user", "content": "My card has not arrived yet."}],
    [{"role": "user", "content": "How do I top up?"}, {"role": "assistant", "content": "top_up"}, {"role": "user", "content": "And by card?"}],
]


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    return load_for_inference(str(tiny_model_dir))


def test_generate_one_answer_per_conversation_in_batches(base_model):
    batches = []
    answers = generate(base_model, CONVERSATIONS, max_new_tokens=4, batch_size=2, on_batch=batches.append)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert batches == [2, 1]


def test_generate_batched_equals_one_by_one(base_model):
    # Left padding must not change greedy answers.
    batched = generate(base_model, CONVERSATIONS, max_new_tokens=4, batch_size=3)
    single = [generate(base_model, [c], max_new_tokens=4, batch_size=1)[0] for c in CONVERSATIONS]
    assert batched == single


def test_a_long_shared_prompt_is_read_once_and_answers_stay_those_of_each_row_alone(base_model, monkeypatch):
    # A 77-label system prompt dominated the prompted base's time; its key/value cache is now
    # computed once. Rows of different lengths are padded between the prefix and their own
    # tokens, which must not change a greedy answer.
    import torch

    import tunesmith.inference.generate as G

    system = {"role": "system", "content": "Reply with one label: " + ", ".join(f"label_{i}" for i in range(40))}
    conversations = [[system, *c] for c in CONVERSATIONS]
    ids = [base_model.tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in conversations]
    assert G.shared_prefix(ids) >= G.SHARED_PREFIX_MIN
    computed, original = [], G._prefix_cache
    monkeypatch.setattr(G, "_prefix_cache", lambda model, prefix: computed.append(len(prefix)) or original(model, prefix))
    batched = generate(base_model, conversations, max_new_tokens=5, batch_size=2)
    assert computed == [G.shared_prefix(ids)]  # once for every batch
    single = [generate(base_model, [c], max_new_tokens=5)[0] for c in conversations]
    assert batched == single
    # The next-token scores themselves: each row after the cached prefix, in one padded batch,
    # scores as it does alone.
    model, shared = base_model.model, G.shared_prefix(ids)
    inputs = G._after_prefix(ids, shared, original(model, ids[0][:shared]), base_model.tokenizer.pad_token_id)
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]  # what generate derives from the mask
    with torch.inference_mode():
        together = model(input_ids=inputs["input_ids"][:, shared:], attention_mask=mask, position_ids=positions,
                         cache=inputs["cache"]).logits[:, -1]
        alone = torch.stack([model(input_ids=torch.tensor([row])).logits[0, -1] for row in ids])
    assert torch.allclose(together, alone, atol=1e-4)


def test_shared_prefix_leaves_each_row_a_token_of_its_own():
    from tunesmith.inference.generate import shared_prefix

    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix([[7, 2], [1, 2]]) == 0
    assert shared_prefix([[1, 2, 3]]) == 0


def test_load_base_model_name(base_model, tiny_model_dir):
    assert base_model.name == str(tiny_model_dir)
    assert base_model.system_prompt is None
    assert not base_model.model.training


def test_load_run_dir_merges_adapter(tiny_run):
    run_dir, _ = tiny_run
    loaded = load_for_inference(str(run_dir))
    assert "adapter" in loaded.name
    assert type(loaded.model).__name__ == "LlamaForCausalLM"  # merged, no PEFT wrapper left
    assert not any("lora" in name for name, _ in loaded.model.named_parameters())
    assert loaded.system_prompt == "Answer with the intent."
    assert len(generate(loaded, CONVERSATIONS[:2], max_new_tokens=3)) == 2


def test_load_run_dir_base(tiny_run):
    run_dir, _ = tiny_run
    loaded = load_for_inference(str(run_dir), base=True)
    assert loaded.name.endswith("(base)")
    assert loaded.system_prompt == "Answer with the intent."
    # the tuned model differs from its base
    tuned = load_for_inference(str(run_dir))
    base_q = dict(loaded.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    tuned_q = dict(tuned.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
    assert not (base_q == tuned_q).all()


def test_base_flag_needs_run_dir(tiny_model_dir):
    with pytest.raises(ModelError, match="run directory"):
        load_for_inference(str(tiny_model_dir), base=True)


def test_run_dir_without_weights_is_model_error(tmp_path, tiny_model_dir):
    save_config(tiny_run_config(tiny_model_dir, tmp_path / "chat.jsonl"), tmp_path / "config.yaml")
    with pytest.raises(ModelError, match="--resume"):
        load_for_inference(str(tmp_path))


def test_with_system_prepends_once():
    user = [{"role": "user", "content": "hi"}]
    assert with_system(user, "Be brief.") == [{"role": "system", "content": "Be brief."}, *user]
    own = [{"role": "system", "content": "Mine."}, *user]
    assert with_system(own, "Be brief.") == own
    assert with_system(user, None) == user


def test_read_prompts_accepts_messages_prompt_and_text(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "reference"}]},
        {"prompt": "q2"},
        {"text": "q3"},
        {"messages": [{"role": "user", "content": "q4"}], "tools": [{"type": "function", "function": {"name": "f"}}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conversations, tools = read_prompts(str(path))
    assert conversations == [
        [{"role": "user", "content": "q1"}],
        [{"role": "user", "content": "q2"}],
        [{"role": "user", "content": "q3"}],
        [{"role": "user", "content": "q4"}],
    ]
    assert tools == [None, None, None, rows[3]["tools"]]  # the row's tools go with its prompt


def test_read_prompts_bad_row_names_the_row(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "?"}) + "\n")
    with pytest.raises(DataError, match="row 2"):
        read_prompts(str(path))


def test_exact_match_normalises():
    assert normalize("  Card_Arrival. ") == "card_arrival"
    assert normalize("Top   up\nfailed!") == "top up failed"
    assert exact_match(["Card_Arrival.", "card_lost", " TOP_UP "], ["card_arrival", "card_arrival", "top_up"]) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])
