"""Replay of general chat data against forgetting in SFT (`data.replay_ratio`): the shipped
set is valid and leaves the forgetting probes uncontaminated, the mix has the asked share,
is seeded and never touches validation or test, and a classify stage refuses it."""

import json
import re

import pytest
from conftest import tiny_run_config, write_chat_file
from test_methods import losses

from tunesmith.data.formats import load_data
from tunesmith.data.rows import GENERAL_CHAT, SAMPLES, replay_chats, replay_share
from tunesmith.errors import ConfigError, DataError
from tunesmith.models import load_tokenizer
from tunesmith.runs import RunDir
from tunesmith.train.classify import REPLAY_REFUSED, train_classify
from tunesmith.train.sft import prepare, train_sft

PROBES = [json.loads(line) for line in (SAMPLES / "general_probes.jsonl").read_text().splitlines() if line.strip()]
# Words that carry no content of a question: the rest are its key words.
STOP = {
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "and", "or", "is", "are", "was", "were", "be",
    "do", "does", "did", "you", "your", "i", "me", "my", "we", "our", "what", "which", "who", "how", "many", "much",
    "there", "this", "that", "these", "those", "into", "with", "as", "it", "its", "get", "name", "give",
}


def key_words(text: str) -> set[str]:
    """A question's content words, lower-cased, a plural 's' dropped (hours = hour)."""
    words = re.findall(r"\w+", text.lower())
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words if w not in STOP}


def says(answer: str, accepted: list[str]) -> bool:
    """The probe check's own rule: an accepted answer occurs as a whole word."""
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.IGNORECASE) for a in accepted)


def sample_rows() -> list[dict]:
    return [json.loads(line) for line in GENERAL_CHAT.read_text().splitlines() if line.strip()]


def test_general_chat_sample_is_valid_single_turn_chat():
    data = load_data(str(GENERAL_CHAT))
    assert data.task == "chat" and len(data.records) >= 300
    prompts = []
    for row in sample_rows():
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"], row  # no system turn: asked plainly, as the probes are
        user, reply = (m["content"].strip() for m in row["messages"])
        assert user and reply and len(reply) <= 300, row  # concise answers
        prompts.append(user.lower())
    assert len(set(prompts)) == len(prompts)  # no question twice


def test_general_chat_sample_leaves_the_probes_uncontaminated():
    """No replay question is a probe, and none that shares at least half of a probe's key
    words answers with the probe's expected answer (a paraphrase would): a sibling question
    with another answer ("the capital of Germany") is general knowledge, not the probe."""
    rows = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in sample_rows()]
    for probe in PROBES:
        words = key_words(probe["prompt"])
        for question, answer in rows:
            assert key_words(question) != words, (probe["prompt"], question)
            shared = words & key_words(question)
            if 2 * len(shared) >= len(words):
                assert not says(answer, probe["answers"]), (probe["prompt"], question, answer)


def test_replay_share_makes_the_asked_share_seeded_and_cycles():
    pool = list(range(10))
    mix = replay_share(70, 0.3, pool, seed=1)
    assert len(mix) == 30  # 30 of 100 rows
    assert set(mix) == set(pool)  # cycles through the pool when it is too small
    assert mix == replay_share(70, 0.3, pool, seed=1)  # seeded: the same on every call (and on resume)
    assert mix != replay_share(70, 0.3, pool, seed=2)
    assert replay_share(70, 0.0, pool, seed=1) == [] and replay_share(0, 0.3, pool, seed=1) == []


def test_replay_chats_are_general_rows_without_the_system_prompt(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"))
    config.data.system_prompt = "Name the intent."
    assert replay_chats(50, config) == []  # off by default
    config.data.replay_ratio = 0.2
    rows = replay_chats(60, config)
    assert len(rows) == 15
    assert all(r["messages"][0]["role"] == "user" for r in rows)
    general = {json.dumps(r, sort_keys=True) for r in sample_rows()}
    assert all(json.dumps(r, sort_keys=True) in general for r in rows)
    # A replay file of raw text cannot be replayed as chats: one sentence says what to give.
    (tmp_path / "notes.txt").write_text("Plain prose about the weather.\n\nMore prose.\n")
    config.data.replay_file = str(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="SFT replays general chat rows"):
        replay_chats(60, config)


def test_sft_mix_keeps_validation_and_test_the_tasks_own(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl", n=60)
    tokenizer = load_tokenizer(str(tiny_model_dir))

    def prep(ratio):
        config = tiny_run_config(tiny_model_dir, data, max_length=512)
        config.data.system_prompt = "Name the intent."
        config.data.test_split = 0.1  # held out of the training file, never trained on
        config.data.replay_ratio = ratio
        return prepare(config, tokenizer)

    _, plain_train, plain_val, plain_stats = prep(0.0)
    config, train, val, stats = prep(0.3)
    n = plain_stats["train_rows"]
    assert stats["train_rows"] == n and plain_stats["replay_rows"] == 0
    assert stats["replay_rows"] == round(n * 0.3 / 0.7) and len(train) == n + stats["replay_rows"]
    assert train[:n] == plain_train  # the task's rows are untouched, replay is added
    assert val == plain_val and stats["validation_rows"] == plain_stats["validation_rows"]
    # The system prompt is the task's: every task row has it, no replay row does.
    texts = [tokenizer.decode(e["input_ids"]) for e in train]
    assert all("Name the intent." in t for t in texts[:n])
    assert not any("Name the intent." in t for t in texts[n:])
    # No replay row is in validation, and the test rows stay out of training.
    val_texts = {tokenizer.decode(e["input_ids"]) for e in val}
    assert not val_texts & set(texts[n:])
    test_queries = _held_out_test_queries(config)
    assert test_queries  # some rows were held out as the test set
    assert not any(q in t for q in test_queries for t in texts)
    assert prep(0.3)[1] == train  # seeded: the same mix on every call (and on resume)


def _held_out_test_queries(config) -> list[str]:
    from tunesmith.data.splits import held_out_test

    held = held_out_test(config)
    return [r["messages"][0]["content"] for r in held.records]


def test_sft_with_replay_records_replay_rows_and_trains(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl", n=40)
    config = tiny_run_config(tiny_model_dir, data, max_length=512, pack_length=512, learning_rate=1e-2)
    config.data.system_prompt = "Name the intent."
    config.data.replay_ratio = 0.3
    summary = train_sft(config, tmp_path / "run")
    assert summary.train_rows == 36 and summary.replay_rows == round(36 * 0.3 / 0.7) == 15
    assert json.loads(RunDir(tmp_path / "run").summary_file.read_text())["replay_rows"] == 15
    loss = losses(tmp_path / "run")
    assert loss[-1] < loss[0]


def test_classify_refuses_replay(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, write_chat_file(tmp_path / "chat.jsonl"))
    config.method.stages = ["classify"]
    config.data.replay_ratio = 0.2
    with pytest.raises(ConfigError) as err:
        train_classify(config, tmp_path / "run")
    assert str(err.value) == REPLAY_REFUSED
    assert not (tmp_path / "run").exists()
