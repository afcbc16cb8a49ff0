"""The before/after evaluation: held-out test rows, base vs tuned by task, judge, value,
the evaluation at the end of `train`, and `tunesmith eval` (tiny model, no download)."""

import json

import pytest
from conftest import ScriptedTeacher, banking_rows, tiny_run_config, write_chat_file
from test_cli import assert_one_sentence_error, invoke

from tunesmith.config import EvalConfig, RunConfig


INTENTS = ("card_arrival", "age_limit", "atm_support", "lost_or_stolen_card")


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_model_dir):
    """A tiny SFT run with a held-out test split; `train` evaluates it by itself."""
    from tunesmith.workflows.train_eval import train

    root = tmp_path_factory.mktemp("evaluated")
    data = root / "chat.jsonl"
    with data.open("w") as f:  # four intents, 12 rows each: answers are labels
        for text, label in [r for r in banking_rows() if r[1] in INTENTS][:48]:
            row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}]}
            f.write(json.dumps(row) + "\n")
    config = tiny_run_config(tiny_model_dir, data, max_steps=6)
    config.data.test_split = 0.25
    config.data.system_prompt = "Answer with the intent."
    config.eval.minutes_per_item = 2.0
    config.eval.items_per_week = 600
    events = []
    summary = train(config, root / "run", eval_progress=lambda what, done, total: events.append((what, done, total)))
    return root / "run", summary, events, data


def test_test_rows_are_held_out_of_every_training_read(tmp_path):
    from tunesmith.data.splits import held_out_test, training_data

    data = write_chat_file(tmp_path / "chat.jsonl", n=250)
    config = RunConfig.model_validate({"data": {"train": str(data)}})
    resolved, train_part = training_data(config)
    assert resolved.data.test_split == 0.1 and "10% of 250 rows" in resolved.reasons["data.test_split"]
    held = held_out_test(resolved)
    assert len(held.records) == 25 and len(train_part.records) == 225
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert not {key(r) for r in held.records} & {key(r) for r in train_part.records}
    assert sorted(held.rows + train_part.rows) == list(range(1, 251))  # nothing lost, nothing twice
    assert held_out_test(resolved).rows == held.rows  # the same rows on every read

    small = RunConfig.model_validate({"data": {"train": str(write_chat_file(tmp_path / "small.jsonl", n=50))}})
    resolved_small, part = training_data(small)
    assert resolved_small.data.test_split == 0.0 and len(part.records) == 50
    assert held_out_test(resolved_small) is None


def test_train_evaluates_at_the_end_and_writes_report_and_card(evaluated_run):
    run, summary, events, _ = evaluated_run
    results = summary.evaluation.to_json()  # the typed object, as results.json holds it
    assert summary.evaluation.task == "labels" and summary.evaluation.test.rows == 12
    assert results["task"] == "labels"  # chat rows whose answers are intent names
    assert results["test"]["rows"] == 12 and "held out" in results["test"]["source"]
    assert summary.train_rows + summary.validation_rows + summary.skipped_rows == 36  # 48 - 12 test rows
    for side in ("base", "tuned"):
        assert set(results["metrics"][side]) == {"accuracy", "macro_f1", "perplexity"}
        assert 0.0 <= results["metrics"][side]["accuracy"] <= 1.0
    # The tuned model has learnt the label vocabulary: its references are likelier than the base's.
    assert results["metrics"]["tuned"]["perplexity"] < results["metrics"]["base"]["perplexity"]
    labels = results["labels"]
    assert len(labels["confusion"]["tuned"]) == len(labels["labels"])
    assert sum(map(sum, labels["confusion"]["tuned"])) == 12
    assert results["forgetting"]["probes"]["n"] == 24 and results["forgetting"]["general_perplexity"]["base"] > 1
    assert results["bias"]["tuned"]["pairs"] > 0
    value = results["value"]
    assert value["hours_saved_per_week"] == pytest.approx(600 * results["metrics"]["tuned"]["accuracy"] * 2 / 60)
    assert "judge" in results["skipped"]
    assert {what for what, _, _ in events} >= {"base: answering the test set", "tuned: answering the test set"}
    assert all(done <= total for _, done, total in events)

    on_disk = json.loads((run / "eval" / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"]
    assert len(_records(run / "eval" / "test.jsonl")) == 12
    assert len(_records(run / "eval" / "answers.jsonl")) == 12
    assert (run / "report.html").read_text().count("<img") >= 3
    card = (run / "MODEL_CARD.md").read_text()
    assert f"{results['metrics']['tuned']['accuracy']:.1%}" in card


def test_eval_command_on_another_test_file(evaluated_run, tmp_path):
    run, _, _, _ = evaluated_run
    other = tmp_path / "other.csv"  # text+label rows of the same intents, not in the training file
    other.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in [r for r in banking_rows() if r[1] in INTENTS][48:54]))
    result = invoke("eval", run, "--test", other, "--no-bias", "--no-forgetting")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "report:" in result.output
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["test"] == {"source": str(other), "rows": 6, "file": "eval/test.jsonl"}
    assert results["bias"] is None and results["forgetting"] is None
    assert "switched off" in results["skipped"]["bias"]


def test_generation_metrics_and_position_fair_judge(tiny_model_dir, tmp_path, stub_openai):
    """Free-text answers get generation metrics; a judge that always prefers the first
    answer it is shown wins nothing for either side once both orders are asked."""
    from tunesmith.evaluate.run import evaluate_run
    from tunesmith.workflows.train_eval import train

    data = tmp_path / "qa.jsonl"
    with data.open("w") as f:
        for i, (text, label) in enumerate(banking_rows(30)):
            answer = f"Your request about {label.replace('_', ' ')} is noted, case {i}."
            f.write(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}) + "\n")
    test = tmp_path / "test.jsonl"
    test.write_text("".join(data.read_text().splitlines(keepends=True)[:5]))
    config = tiny_run_config(tiny_model_dir, data, max_steps=2)
    config.eval.enabled = False
    train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "eval").exists()  # eval.enabled false: nothing evaluated

    stub_openai.reply = lambda messages: "A"
    opts = EvalConfig(judge_url=stub_openai.url, judge_model="stub", forgetting=False, bias=False, max_new_tokens=8)
    results = evaluate_run(tmp_path / "run", test=str(test), options=opts).to_json()
    assert results["task"] == "generation"
    assert set(results["metrics"]["tuned"]) == {"exact_match", "token_f1", "rouge_l", "bleu", "semantic_similarity", "perplexity"}
    judge = results["judge"]
    assert judge["prompts"] == 5 and judge["ties"] == 5 and judge["inconsistent"] == 5
    assert len(stub_openai.requests) == 10  # each prompt judged in both orders
    shown = stub_openai.requests[0]["messages"][0]["content"]
    assert "Reference answer" in shown and opts.judge_rubric in shown


def test_judge_counts_a_consistent_preference():
    from tunesmith.evaluate.judge import judge_pairwise

    def prefer_good(conversation):  # a judge that reads the answers, wherever they stand
        text = conversation[0]["content"]
        a, b = text.split("Answer A:\n")[1].split("\n\nAnswer B:\n")
        return "A" if a.startswith("good") else "B" if b.startswith("good") else "tie"

    result = judge_pairwise(ScriptedTeacher(prefer_good), ["q1", "q2", "q3", "q4"], ["bad", "bad", "good", "so-so"],
                            ["good", "good", "bad", "so-so"], "helpful?")
    assert (result["wins"], result["losses"], result["ties"]) == (2, 1, 1)
    assert result["win_rate"] == pytest.approx(0.5) and result["inconsistent"] == 0


def test_classifier_run_is_compared_with_its_base_asked_for_a_label(tiny_model_dir, tmp_path):
    import csv

    from tunesmith.evaluate.run import evaluate_run
    from tunesmith.workflows.train_eval import train

    path = tmp_path / "labels.csv"
    rows = [r for r in banking_rows(200) if r[1] in ("card_arrival", "age_limit", "atm_support")][:30]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    config = tiny_run_config(tiny_model_dir, path, max_steps=3, best_metric="accuracy")
    config.method.stages = ["classify"]
    train(config, tmp_path / "run")
    opts = EvalConfig(forgetting=True, bias=True)
    results = evaluate_run(tmp_path / "run", test=str(path), options=opts).to_json()
    assert results["task"] == "labels" and results["labels"]["labels"] == ["age_limit", "atm_support", "card_arrival"]
    assert "asked to reply with one label" in results["labels"]["base_prompt"]
    assert results["forgetting"] is None and "classifier" in results["skipped"]["forgetting"]
    assert results["bias"]["tuned"]["pairs"] > 0
    assert (tmp_path / "run" / "MODEL_CARD.md").exists()


def test_eval_errors_are_one_sentence(evaluated_run, tmp_path, tiny_model_dir):
    run, _, _, _ = evaluated_run
    assert_one_sentence_error(invoke("eval", tmp_path / "nothing"), "not a run directory")
    assert_one_sentence_error(invoke("eval", run, "--test", tmp_path / "missing.jsonl"), "missing.jsonl does not exist")
    assert_one_sentence_error(invoke("eval", run, "--judge-url", "http://x/v1"), "--judge-url needs --judge-model")
    from tunesmith.workflows.train_eval import train

    small = write_chat_file(tmp_path / "small.jsonl", n=30)
    train(tiny_run_config(tiny_model_dir, small, max_steps=1), tmp_path / "small_run")
    assert_one_sentence_error(invoke("eval", tmp_path / "small_run"), "has no test set", "--test FILE")


def test_train_command_ends_with_the_report(tiny_model_dir, tmp_path):
    data = write_chat_file(tmp_path / "chat.jsonl", n=30)
    test = write_chat_file(tmp_path / "test.jsonl", n=4, offset=200)
    run = tmp_path / "run"
    result = invoke("train", "--data", data, "--model", tiny_model_dir, "--test", test, "--max-steps", 2,
                    "--minutes-per-item", 3, "--items-per-week", 100, "--output", run)
    assert result.exit_code == 0, result.output
    assert "base vs tuned on 4 test rows" in " ".join(result.output.split()) and "value: about" in result.output
    assert (run / "report.html").exists() and (run / "MODEL_CARD.md").exists()
    assert json.loads((run / "eval" / "results.json").read_text())["value"]["items_per_week"] == 100

    skipped = tmp_path / "skipped"
    result = invoke("train", "--data", data, "--model", tiny_model_dir, "--test", test, "--max-steps", 1, "--no-eval",
                    "--output", skipped)
    assert result.exit_code == 0, result.output
    assert not (skipped / "eval").exists() and not (skipped / "report.html").exists()


def test_forgetting_is_flagged_beyond_the_threshold():
    from tunesmith.evaluate.run import Task, _forgetting

    def side(ppl, probes):
        return {"general_perplexity": ppl, "probe_accuracy": probes, "probes": [{}] * 24}

    opts, skipped = EvalConfig(forgetting_threshold=0.1), {}
    kept = _forgetting(side(10.0, 0.5), side(10.9, 0.45), opts, Task("generation"), skipped)
    assert not kept["flagged"] and kept["general_perplexity"]["change"] == pytest.approx(0.09)
    lost = _forgetting(side(10.0, 0.5), side(11.5, 0.25), opts, Task("generation"), skipped)
    assert lost["flagged"] and len(lost["findings"]) == 2  # perplexity +15%, probes -25 points
    assert "rose 15.0%" in lost["findings"][0] and "50.0% to 25.0%" in lost["findings"][1]
    assert lost["alarm"]  # a generation task: the model is meant to stay a general assistant


def test_forgetting_is_an_alarm_only_when_it_threatens_what_was_asked():
    """A labelling task reports forgetting as information, unless --keep-general asked to keep
    general skills; a chat task alarms unless keep_general is set false."""
    from tunesmith.evaluate.report import alarms
    from tunesmith.evaluate.run import Task, _forgetting

    def side(ppl, probes):
        return {"general_perplexity": ppl, "probe_accuracy": probes, "probes": [{}] * 24}

    base, tuned = side(10.0, 0.5), side(23.0, 0.0)
    labels = _forgetting(base, tuned, EvalConfig(), Task("labels"), {})
    assert labels["flagged"] and not labels["alarm"] and "information, not an alarm" in labels["rule"]
    assert not any(a.startswith("Forgetting") for a in alarms({"forgetting": labels}))
    kept = _forgetting(base, tuned, EvalConfig(keep_general=True), Task("labels"), {})
    assert kept["alarm"] and any(a.startswith("Forgetting") for a in alarms({"forgetting": kept}))
    chat = _forgetting(base, tuned, EvalConfig(keep_general=False), Task("generation"), {})
    assert chat["flagged"] and not chat["alarm"]


def test_a_local_judge_model(evaluated_run, tiny_model_dir):
    """A judge on this machine: the tiny random model's replies are rarely a verdict, and an
    unreadable verdict counts as a tie, never as a win."""
    from tunesmith.evaluate.run import evaluate_run

    run, _, _, _ = evaluated_run
    opts = EvalConfig(judge=str(tiny_model_dir), judge_prompts=3, forgetting=False, bias=False)
    judge = evaluate_run(run, options=opts).judge
    assert judge["prompts"] == 3 and judge["judge"] == str(tiny_model_dir)
    assert judge["wins"] + judge["losses"] + judge["ties"] == 3
    assert judge["ties"] >= sum(v["base_first"] is None and v["tuned_first"] is None for v in judge["verdicts"])


def test_a_classifiers_base_answers_a_seeded_sample_and_the_report_says_so():
    """The base of a classifier is asked by a prompt listing every label: at most
    eval.base_rows test rows, the same ones every time, named in the base note."""
    from tunesmith.evaluate.run import Task, _base_rows

    task = Task("labels", classifier=True, texts=[f"text {i}" for i in range(250)])
    task.base_note = "the base model has no classification head"
    rows = _base_rows(task, EvalConfig(base_rows=100), seed=42)
    assert len(rows) == 100 == len(set(rows)) and rows == sorted(rows)
    assert rows == _base_rows(Task("labels", texts=task.texts), EvalConfig(base_rows=100), seed=42)
    assert task.base_note.endswith("a seeded sample of 100 of the 250 test rows (eval.base_rows)")
    small = Task("labels", texts=["a", "b"])
    assert _base_rows(small, EvalConfig(base_rows=100), seed=42) == [0, 1] and small.base_note == ""
