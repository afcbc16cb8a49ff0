"""The CLI as a user meets it: exit codes, one-sentence errors, files written."""

import json

from typer.testing import CliRunner

from tunesmith.cli import app

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_one_sentence_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output, result.output
    # rich wraps long lines to the terminal width; the sentence is everything after "error:"
    text = " ".join(result.output[result.output.index("error:"):].split())
    for fragment in fragments:
        assert fragment in text, text


def test_models_lists_builtin():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output


def test_inspect_reports_format_and_tokens(tiny_model_dir, tiny_chat_file):
    result = invoke("data", "inspect", tiny_chat_file, "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "openai_chat" in result.output and "40" in result.output
    assert "p99" in result.output


def test_inspect_columns_override(tmp_path, tiny_model_dir):
    path = tmp_path / "tickets.csv"
    path.write_text("body,queue\nmy card is lost,cards\nreset my pin,pins\n")
    result = invoke("data", "inspect", path, "--model", tiny_model_dir, "--columns", "text=body,label=queue")
    assert result.exit_code == 0, result.output
    assert "text_label" in result.output and "2 distinct" in result.output


def test_inspect_missing_file(tmp_path):
    assert_one_sentence_error(invoke("data", "inspect", tmp_path / "nope.csv"), "nope.csv")


def test_train_unknown_model_lists_available(tiny_chat_file, tmp_path):
    result = invoke("train", "--data", tiny_chat_file, "--model", "no-such-model", "--output", tmp_path / "r")
    assert_one_sentence_error(result, "no-such-model", "smollm2-135m")


def test_train_without_data(tmp_path):
    assert_one_sentence_error(invoke("train", "--output", tmp_path / "r"), "--data")


def test_train_bad_config_key(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  learning_rat: 0.1\n")
    assert_one_sentence_error(invoke("train", "--config", cfg), "learning_rat")


def test_resume_not_a_run(tmp_path):
    assert_one_sentence_error(invoke("train", "--resume", tmp_path), "not a tunesmith run")


def test_train_generate_chat(tiny_model_dir, tiny_chat_file, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "train:\n  pack_length: 128\n  batch_size: 1\n  gradient_accumulation: 1\n  learning_rate: 0.005\n  eval_steps: 2\n"
    )
    result = invoke(
        "train", "--data", tiny_chat_file, "--model", tiny_model_dir, "--config", cfg,
        "--max-steps", 4, "--output", run_dir,
    )
    assert result.exit_code == 0, result.output
    assert "training finished" in result.output
    for name in ("config.yaml", "metrics.jsonl", "run.json", "adapter/adapter_config.json"):
        assert (run_dir / name).exists(), name
    assert "learning_rate: 0.005" in (run_dir / "config.yaml").read_text()  # config value kept

    result = invoke("generate", run_dir, "--prompt", "my card is lost", "--max-new-tokens", 5)
    assert result.exit_code == 0, result.output

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "card lost"}\n{"text": "pin reset"}\n')
    out = tmp_path / "answers.jsonl"
    result = invoke("generate", run_dir, "--file", prompts, "--out", out, "--max-new-tokens", 5, "--base")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all("answer" in r for r in rows)

    result = invoke("chat", run_dir, "--max-new-tokens", 5, input="hello\n/reset\nagain\n\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("model>") == 2


def test_generate_needs_one_source(tiny_model_dir):
    assert_one_sentence_error(invoke("generate", tiny_model_dir), "--prompt")


def test_data_check_writes_card_and_fix(tmp_path, tiny_model_dir):
    from pathlib import Path

    source = Path(__file__).parent / "data_files" / "quality" / "chat.jsonl"
    before = source.read_bytes()
    result = invoke("data", "check", source, "--model", tiny_model_dir, "--out", tmp_path, "--fix", tmp_path / "clean.jsonl")
    assert result.exit_code == 1, result.output  # the planted conflicts and empty answers are errors
    assert "conflicts" in result.output and "would block training" in result.output
    card = json.loads((tmp_path / "data_card.json").read_text())
    assert any(f["check"] == "pii" for f in card["findings"])
    assert (tmp_path / "data_card.md").exists() and (tmp_path / "fix_log.jsonl").exists()
    assert source.read_bytes() == before


def test_data_check_clean_file_passes(tmp_path, tiny_model_dir, tiny_chat_file):
    result = invoke("data", "check", tiny_chat_file, "--model", tiny_model_dir, "--out", tmp_path)
    assert result.exit_code == 0, result.output


def _intent_csv(path, n=24):
    from conftest import banking_rows

    rows = [r for r in banking_rows() if r[1] in ("card_arrival", "top_up_failed")][:n]
    path.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    return path


def test_data_augment_writes_variants_with_provenance(tmp_path):
    src = _intent_csv(tmp_path / "intents.csv", 6)
    out = tmp_path / "aug.jsonl"
    result = invoke("data", "augment", src, "--out", out, "--methods", "typo,swap", "--copies", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["method"] for r in rows} == {"original", "typo", "swap"}
    assert sorted({r["source_id"] for r in rows}) == [2, 3, 4, 5, 6, 7]  # CSV rows after the header
    assert "typo" in result.output and "original" in result.output


def test_data_augment_errors_are_one_sentence(tmp_path):
    src = _intent_csv(tmp_path / "intents.csv", 4)
    assert_one_sentence_error(invoke("data", "augment", src, "--out", src), "is the input file itself")
    assert_one_sentence_error(invoke("data", "augment", src, "--out", tmp_path / "o.jsonl", "--methods", "typo,blur"),
                              "Unknown augmentation method 'blur'")
    assert_one_sentence_error(invoke("data", "augment", src, "--out", tmp_path / "o.jsonl", "--methods", "paraphrase",
                                     "--teacher-url", "http://127.0.0.1:9/v1"), "--teacher-url needs --teacher-model")


def test_data_synth_with_an_endpoint_teacher(tmp_path, stub_openai):
    import re

    counter = iter(range(1000))

    def reply(messages):
        label = re.search(r'label "([^"]+)"', messages[-1]["content"]).group(1)
        return f"Customer question {next(counter)} on {label}, asked in a new way {next(counter)}"

    stub_openai.reply = reply
    stub_openai.key = "sk-test"
    seed = _intent_csv(tmp_path / "seed.csv")
    out = tmp_path / "synth.jsonl"
    args = ["data", "synth", "--seed", seed, "--out", out, "--n", 4, "--teacher-url", stub_openai.url,
            "--teacher-model", "stub", "--label-check", "off", "--rouge", 1.0, "--cosine", 1.0]
    result = runner.invoke(app, [str(a) for a in args], env={"TUNESMITH_TEACHER_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 4
    assert (tmp_path / "synth.report.json").exists() and "filter report" in result.output
    # a second run with a larger --n continues the same file
    result = runner.invoke(app, [str(a) for a in args[:7] + [6] + args[8:]], env={"TUNESMITH_TEACHER_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 6 and len(stub_openai.requests) == 6


def test_data_synth_errors_are_one_sentence(tmp_path, stub_openai):
    stub_openai.key = "right"
    seed = _intent_csv(tmp_path / "seed.csv")
    out = tmp_path / "s.jsonl"
    assert_one_sentence_error(
        invoke("data", "synth", "--seed", seed, "--out", out, "--n", 2, "--teacher-url", stub_openai.url,
               "--teacher-model", "m", "--teacher-key", "wrong"), "refused the key with HTTP 401", "--teacher-key")
    assert_one_sentence_error(invoke("data", "synth", "--out", out, "--n", 2), "Give --seed FILE")
    assert_one_sentence_error(invoke("data", "synth", "--out", out, "--n", 2, "--topics", tmp_path / "none.yaml"),
                              "does not exist")
    assert_one_sentence_error(invoke("data", "synth", "--seed", seed, "--out", seed, "--n", 2), "is the input file itself")
    assert not out.exists() or out.read_text() == ""


def test_data_synth_judge_on_the_same_endpoint_shares_the_rate_limit(tmp_path, stub_openai):
    import re

    counter = iter(range(1000))

    def reply(messages):
        text = messages[-1]["content"]
        if text.startswith("Rate from 1 to 10"):
            return "8"
        label = re.search(r'label "([^"]+)"', text).group(1)
        return f"Customer question {next(counter)} on {label}, asked in a new way {next(counter)}"

    stub_openai.reply = reply
    seed = _intent_csv(tmp_path / "seed.csv")
    result = invoke("data", "synth", "--seed", seed, "--out", tmp_path / "s.jsonl", "--n", 3, "--teacher-url", stub_openai.url,
                    "--teacher-model", "t", "--judge-url", stub_openai.url, "--judge-model", "j", "--rpm", 600,
                    "--label-check", "off", "--rouge", 1.0, "--cosine", 1.0)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["judge_score"] == 8 for r in rows)
    assert {b["model"] for b in stub_openai.requests} == {"t", "j"}
    gaps = [b - a for a, b in zip(stub_openai.times, stub_openai.times[1:])]
    assert len(stub_openai.times) == 6 and min(gaps) >= 0.08  # one budget of 10 a second for both


def test_train_classifier_then_predict(tiny_model_dir, tmp_path):
    from test_methods import write_label_file

    data = write_label_file(tmp_path / "labels.csv")
    run_dir = tmp_path / "run"
    result = invoke(
        "train", "--data", data, "--model", tiny_model_dir, "--task", "classify", "--max-steps", 6,
        "--lr", 0.005, "--output", run_dir,
    )
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output and "tunesmith predict" in result.output
    out = tmp_path / "pred.jsonl"
    result = invoke("predict", run_dir, "--file", data, "--out", out, "--top-k", 2)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 120 and all(len(r["top"]) == 2 and "true_label" in r for r in rows)
    assert "accuracy" in result.output and "120 labelled rows" in result.output
    result = invoke("predict", run_dir, "--text", "card number 5")
    assert result.exit_code == 0 and "%" in result.output
    # A classifier does not write text, and a generative run does not classify.
    assert_one_sentence_error(invoke("generate", run_dir, "--prompt", "hi"), "is a classifier", "tunesmith predict")


def test_train_method_errors_are_one_sentence(tiny_model_dir, tiny_chat_file, tmp_path):
    out = tmp_path / "r"
    assert_one_sentence_error(
        invoke("train", "--data", tiny_chat_file, "--model", tiny_model_dir, "--adapter", "qlora", "--output", out),
        "needs a CUDA GPU",
    )
    assert_one_sentence_error(
        invoke("train", "--data", tiny_chat_file, "--model", tiny_model_dir, "--stages", "pretrain,sft", "--output", out),
        "--pretrain-data",
    )
    assert_one_sentence_error(invoke("train", "--data", tiny_chat_file, "--task", "chat"), "--task classify")
    assert_one_sentence_error(invoke("train", "--data", tiny_chat_file, "--method", "full"), "--adapter full")
    assert_one_sentence_error(invoke("train", "--data", tiny_chat_file, "--adapter", "lorra"), "method.adapter")
    assert_one_sentence_error(invoke("train", "--data", tiny_chat_file, "--method", "pretrain", "--task", "classify"), "one of")
    assert_one_sentence_error(invoke("predict", tmp_path, "--text", "x"), "not a run directory")
    assert not out.exists()


def test_train_two_stages_from_the_cli(tiny_model_dir, tiny_chat_file, tmp_path):
    from test_methods import write_text_file

    run_dir = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"method:\n  stages: [pretrain, sft]\n  adapter: dora\ndata:\n  pretrain: {write_text_file(tmp_path / 'notes.txt')}\n"
        f"  train: {tiny_chat_file}\n  replay_ratio: 0.2\n"
        "train:\n  max_length: 64\n  pack_length: 128\n  batch_size: 1\n  gradient_accumulation: 1\n  eval_steps: 2\n"
    )
    result = invoke("train", "--model", tiny_model_dir, "--config", cfg, "--max-steps", 2, "--output", run_dir)
    assert result.exit_code == 0, result.output
    assert "stage pretrain" in result.output
    assert (run_dir / "pretrain" / "merged" / "config.json").exists() and (run_dir / "sft" / "adapter").is_dir()
    assert json.loads((run_dir / "pretrain" / "run.json").read_text())["replay_blocks"] > 0
    result = invoke("generate", run_dir, "--prompt", "card lost", "--max-new-tokens", 3)
    assert result.exit_code == 0, result.output


def test_keys_create_list_and_revoke(tmp_path):
    from tunesmith.jobs import store

    result = invoke("keys", "create", "--project", "acme", "--data-dir", tmp_path)
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[-1]
    sessions = store.connect(store.default_database_url(tmp_path))
    key = store.find_key(sessions, secret)
    assert key.project == "acme" and not key.admin
    listed = invoke("keys", "list", "--data-dir", tmp_path)
    assert key.id in listed.output and secret not in listed.output
    assert invoke("keys", "revoke", key.id, "--data-dir", tmp_path).exit_code == 0
    assert store.find_key(sessions, secret) is None
    assert_one_sentence_error(invoke("keys", "revoke", "key-nope", "--data-dir", tmp_path), "No key with id 'key-nope'")
    assert_one_sentence_error(invoke("keys", "create", "--project", "a/b", "--data-dir", tmp_path), "--project 'a/b'")


def test_serve_refuses_bad_options_in_one_sentence(tmp_path):
    assert_one_sentence_error(invoke("serve", "--data-dir", tmp_path, "--model", "tiny"), "write NAME=FOLDER")
    assert_one_sentence_error(invoke("serve", "--data-dir", tmp_path, "--model", f"tiny={tmp_path}"),
                              "not a Hugging Face model folder")
    assert_one_sentence_error(invoke("serve", "--database-url", "nosuchdb://x", "--data-dir", tmp_path), "Cannot open the database")
