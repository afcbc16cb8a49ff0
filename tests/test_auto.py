"""`tunesmith auto` (pipeline.py) on the tiny model, and the memory planner's choices."""

import csv
import json

import pytest
from conftest import banking_rows, write_chat_file
from test_align import write_preference_file
from test_cli import invoke

from tunesmith.config import load_config
from tunesmith.errors import ConfigError, DataError, ModelError
from tunesmith.jobs import store
from tunesmith.train.auto import plan_memory
from tunesmith.workflows.auto import detect_task, parse_budget, run_auto

GB = 2**30


def test_parse_budget():
    assert parse_budget("30m") == 1800 and parse_budget("2h") == 7200 and parse_budget("1h30m") == 5400
    assert parse_budget("90s") == 90 and parse_budget(None) is None
    with pytest.raises(ConfigError, match="--budget soon"):
        parse_budget("soon")


def write_labels(path, n=60):
    """`n` rows of the three commonest intents (every intent has examples on both sides of a split)."""
    from collections import Counter

    rows = banking_rows()
    top = {label for label, _ in Counter(label for _, label in rows).most_common(3)}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([r for r in rows if r[1] in top][:n])
    return path


def test_detect_task_per_format(tmp_path):
    chat = write_chat_file(tmp_path / "chat.jsonl", n=10)
    labels = write_labels(tmp_path / "labels.csv", n=10)
    text = tmp_path / "notes.txt"
    text.write_text("Clause 4.2 sets the notice period.\nThe tenant pays the deposit.\n")
    pairs = write_preference_file(tmp_path / "pairs.jsonl", n=4)
    assert [detect_task(str(p), None, "auto")[:2] for p in (chat, labels, text, pairs)] == [
        ("chat", "sft"), ("classify", "classify"), ("pretrain", "pretrain"), ("preference", "dpo")]
    assert detect_task(str(labels), None, "chat")[:2] == ("chat", "sft")  # labels answered as chat
    with pytest.raises(DataError, match="--task classify cannot train on"):
        detect_task(str(chat), None, "classify")


@pytest.mark.parametrize("params, gb, rows, device, expect", [
    (135e6, 24, 1_000, "cpu", ("lora", "none", False)),       # small data: LoRA
    (135e6, 24, 50_000, "cpu", ("full", "none", False)),      # enough data and memory: every weight
    (135e6, 3, 50_000, "cpu", ("lora", "none", False)),       # full does not fit in 3 GB
    (7e9, 80, 5_000, "cuda", ("lora", "none", False)),        # 7B LoRA on an 80 GB GPU: a smaller micro-batch
    (7e9, 24, 5_000, "cuda", ("lora", "4bit", True)),         # a 24 GB GPU: QLoRA
])
def test_memory_plan_for_data_and_memory_sizes(params, gb, rows, device, expect):
    shape = (576, 30, 49152) if params < 1e9 else (4096, 32, 32000)
    tokens = 16384 if device == "cuda" else 512
    plan = plan_memory("m", int(params), *shape, tokens, 512 if device == "cpu" else 2048, rows, device, gb)
    assert (plan.adapter, plan.quantize, plan.gradient_checkpointing) == expect
    assert plan.needed_gb <= gb * 0.9 and plan.reason
    if params == 7e9 and gb == 80:
        assert plan.tokens < tokens and "tokens per micro-batch" in plan.reason  # before checkpointing


def test_memory_plan_refuses_with_what_would_fit():
    with pytest.raises(ModelError, match="needs about .* GB .* choose a smaller model or a machine with a GPU"):
        plan_memory("big", int(7e9), 4096, 32, 32000, 512, 512, 1000, "cpu", 8)
    with pytest.raises(ModelError, match="on 4-bit weights"):
        plan_memory("huge", int(70e9), 8192, 80, 32000, 16384, 4096, 1000, "cuda", 24)


def test_auto_chat_with_a_test_file_and_a_budget(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl", n=200)  # enough steps for the 4-step probe
    test = write_chat_file(tmp_path / "test.jsonl", n=8, offset=200)
    said = []
    db = store.default_database_url(tmp_path)
    result = run_auto(str(data), tmp_path / "run", test=str(test), budget="3m", model=str(tiny_model_dir),
                      say=said.append)
    model_id = store.register_run(db, tmp_path / "run", str(tiny_model_dir), "acme")
    config = load_config(tmp_path / "run" / "config.yaml")
    assert config.method.stages == ["sft"] and config.method.adapter == "lora"
    for key in ("auto.task", "auto.gate", "auto.memory", "auto.budget", "train.max_steps", "train.learning_rate"):
        assert config.reasons.get(key), key
    assert "s per step over a 4-step probe" in config.reasons["train.max_steps"]
    assert "the evaluation of the full test set (8 rows) measured on the probe" in config.reasons["train.max_steps"]
    assert not (tmp_path / "run" / "probe").exists()
    assert result.evaluation and result.evaluation.test.rows == 8
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="decisions-table"' in html and "auto.memory" in html
    assert any("the data gate passed" in line for line in said)
    with store.connect(db)() as s:
        model = s.get(store.Model, model_id)
    assert model.project == "acme" and model.run_dir == str((tmp_path / "run").resolve())


@pytest.mark.parametrize("kind", ["classify", "pretrain", "preference"])
def test_auto_trains_each_task_type(kind, tmp_path, tiny_model_dir):
    if kind == "classify":
        data = write_labels(tmp_path / "labels.csv", n=60)
    elif kind == "pretrain":
        data = tmp_path / "notes.txt"
        data.write_text("\n".join(text for text, _ in banking_rows(60)) + "\n")
    else:
        data = write_preference_file(tmp_path / "pairs.jsonl", n=24)
    result = run_auto(str(data), tmp_path / "run", model=str(tiny_model_dir))
    stage = {"classify": "classify", "pretrain": "pretrain", "preference": "dpo"}[kind]
    assert load_config(tmp_path / "run" / "config.yaml").method.stages == [stage]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["global_step"] > 0
    assert result.model_id is None and result.evaluation is None  # not registered; under 200 rows, no test split


def test_auto_applies_the_safe_fixes_or_stops_with_the_way_out(tmp_path, tiny_model_dir):
    rows = [json.loads(line) for line in write_chat_file(tmp_path / "chat.jsonl", n=30).read_text().splitlines()]
    broken = rows + rows[:5] + [{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": ""}]}]
    path = tmp_path / "dirty.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in broken))
    run_auto(str(path), tmp_path / "run", model=str(tiny_model_dir))
    config = load_config(tmp_path / "run" / "config.yaml")
    assert "dropped 6 rows" in config.reasons["auto.gate"] and config.data.train.endswith("clean.jsonl")

    conflict = rows + [{"messages": [rows[0]["messages"][0], {"role": "assistant", "content": "something else"}]}] * 3
    path.write_text("".join(json.dumps(r) + "\n" for r in conflict))
    with pytest.raises(DataError, match="still finds errors after the safe fixes .* pass --force"):
        run_auto(str(path), tmp_path / "run2", model=str(tiny_model_dir))


def test_auto_command_ends_with_three_lines(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl", n=30)
    test = write_chat_file(tmp_path / "test.jsonl", n=6, offset=30)
    result = invoke("auto", data, "--test", test, "--model", tiny_model_dir, "--output", tmp_path / "run",
                    "--data-dir", tmp_path / "project", "--project", "acme")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()[-3:]
    assert "on 6 test rows" in lines[0] and lines[1].startswith("wall time") and "report:" in lines[2]
    assert "ft:" in lines[2] and ":acme:" in lines[2]


def test_auto_drops_training_rows_that_leak_into_the_test_set(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl", n=30)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(data.read_text().splitlines(keepends=True)[:4]))  # 4 test rows also in training
    run_auto(str(data), tmp_path / "run", test=str(test), model=str(tiny_model_dir))
    config = load_config(tmp_path / "run" / "config.yaml")
    assert "dropped 4 rows" in config.reasons["auto.gate"]
    assert len((tmp_path / "run" / "data" / "clean.jsonl").read_text().splitlines()) == 26


def test_auto_grows_small_data_with_a_teacher_endpoint(tmp_path, tiny_model_dir, stub_openai):
    from collections import defaultdict

    from test_synth import label_of

    data = write_labels(tmp_path / "labels.csv", n=30)
    known = {row["text"] for row in csv.DictReader(data.open())}
    pool = defaultdict(list)  # the teacher answers with real queries of the asked intent that DATA lacks
    for text, label in banking_rows():
        if text not in known:
            pool[label].append(text)
    stub_openai.reply = lambda messages: pool[label_of(messages)].pop() if pool[label_of(messages)] else ""
    result = invoke("auto", data, "--model", tiny_model_dir, "--output", tmp_path / "run", "--data-dir", tmp_path / "p",
                    "--synth-below", "38", "--teacher-url", stub_openai.url, "--teacher-model", "teacher-llm")
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "run" / "config.yaml")
    why = config.reasons["auto.synthetic"]
    assert why.startswith("30 rows, under --synth-below 38: 8 synthetic rows added from teacher-llm at http")
    assert config.data.train.endswith("train_with_synthetic.jsonl") and config.method.stages == ["classify"]
    assert len((tmp_path / "run" / "data" / "train_with_synthetic.jsonl").read_text().splitlines()) == 38
    assert stub_openai.requests and stub_openai.requests[0]["model"] == "teacher-llm"
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["train_rows"] + summary["validation_rows"] == 38


def test_keep_general_makes_forgetting_an_alarm_and_replays_chat_for_sft():
    from tunesmith.config import RunConfig
    from tunesmith.workflows.auto import KEEP_GENERAL_REPLAY, _keep_general

    said = []
    chat = _keep_general(RunConfig(), "sft", lambda key, why: said.append((key, why)))
    assert chat.eval.keep_general is True and chat.data.replay_ratio == KEEP_GENERAL_REPLAY
    assert "general chat rows replayed" in chat.reasons["data.replay_ratio"] and said[0][0] == "auto.keep_general"
    head = _keep_general(RunConfig(), "classify", lambda key, why: None)
    assert head.eval.keep_general is True and head.data.replay_ratio == 0.0


def test_long_texts_on_a_cpu_count_their_attention_scores_and_keep_rows_per_update(tmp_path, monkeypatch):
    """32 CUAD clauses of 512 tokens ran a 24 GB machine out of memory: the plan assumed 128
    tokens a row and no attention scores. It now measures the rows' length and counts the
    scores, and a smaller micro-batch keeps 32 rows per update by accumulation."""
    from tunesmith.config import RunConfig, apply_overrides
    from tunesmith.workflows import auto
    from tunesmith.workflows.auto import plan

    shape = (576, 30, 49152)
    plain = plan_memory("m", int(135e6), *shape, 32 * 512, 512, 4000, "cpu", 22)
    counted = plan_memory("m", int(135e6), *shape, 32 * 512, 512, 4000, "cpu", 22, heads=9)
    assert counted.tokens < plain.tokens or counted.gradient_checkpointing
    clause = "The Licensee shall not assign, transfer or sublicense any of its rights under this Agreement " * 12
    data = tmp_path / "clauses.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i}. {clause}", "label": "Anti-Assignment" if i % 2 else "Other"}) + "\n"
                            for i in range(40)))
    config = apply_overrides(RunConfig(), {"data.train": str(data), "method.stages": ["classify"]}, source="auto")
    monkeypatch.setattr(auto, "hardware", lambda: {"device": "cpu", "name": "cpu", "threads": 2})
    monkeypatch.setattr(auto, "available_memory_gb", lambda hw: 6.0)
    planned = plan(config, 40, {})
    assert planned.train.batch_size < 32 and planned.train.batch_size * planned.train.gradient_accumulation == 32
    assert "rows per update" in planned.reasons["train.gradient_accumulation"]
