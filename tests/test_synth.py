"""Synthetic data: every filter on crafted rows, each kind end to end with a scripted teacher,
resuming, the endpoint path against a stub server, and the tiny model as a local teacher."""

import json
import random
import re
from collections import defaultdict

import pytest

from conftest import ScriptedTeacher, banking_rows
from tunesmith.data.synth import (
    Pool, SynthOptions, degrade, load_scenarios, parse_score, sidecar_paths, synthesize,
)
from tunesmith.errors import ConfigError, DataError

LABELS = ("card_arrival", "top_up_failed")


@pytest.fixture
def seed_csv(tmp_path):
    """Eight real Banking77 queries for each of two intents."""
    rows = defaultdict(list)
    for text, label in banking_rows():
        if label in LABELS and len(rows[label]) < 8:
            rows[label].append(text)
    path = tmp_path / "seed.csv"
    with path.open("w") as f:
        f.write("text,label\n")
        for label, texts in rows.items():
            for t in texts:
                f.write(f'"{t}",{label}\n')
    return path


def label_of(messages):
    return re.search(r'label "([^"]+)"', messages[-1]["content"]).group(1).replace(" ", "_")


def queue_teacher(replies: dict):
    """Answer classification prompts from a per-label queue of replies."""
    queues = {k: list(v) for k, v in replies.items()}
    return ScriptedTeacher(lambda m: queues[label_of(m)].pop(0) if queues[label_of(m)] else "")


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


CLASSIFY_REPLIES = {
    "card_arrival": [
        "",  # empty
        "Sure, here you go:",  # lead-in
        "Where is my new card if I haven't received it yet?",  # copy of a seed row
        "Here is another example of this label.",  # talks about the task
        "Hi",  # too short
        "Every single time I try to top up it gets rejected by the app.",  # reads as the other label
        "It has been ten days and the card you mailed me never showed up.",
        "Could you check on the delivery status of my replacement card?",
    ],
    "top_up_failed": [
        "I tried adding money to my account but the top-up keeps failing.",
        "Why does my top up get rejected every time I try?",
    ],
}


def test_classify_filters_every_bad_row_and_reports_why(tmp_path, seed_csv):
    out = tmp_path / "synth.jsonl"
    teacher = queue_teacher(CLASSIFY_REPLIES)
    report = synthesize(out, teacher, SynthOptions(n=4, batch_size=2, max_candidates=20), seed_path=seed_csv)
    rows = read(out)
    assert report.kept == 4 and len(rows) == 4
    assert {r["text"] for r in rows} == set(CLASSIFY_REPLIES["card_arrival"][-2:] + CLASSIFY_REPLIES["top_up_failed"])
    assert all(r["label"] in LABELS and r["method"] == "label-conditioned" and r["teacher"] == "scripted" for r in rows)
    # provenance: the seed rows shown to the teacher (CSV rows 2-17), all of the row's own label
    seed_rows = {i + 2: line.rsplit(",", 1)[1] for i, line in enumerate(seed_csv.read_text().splitlines()[1:])}
    assert all(r["source_ids"] and {seed_rows[i] for i in r["source_ids"]} == {r["label"]} for r in rows)
    dropped = report.dropped
    assert dropped["unparseable (empty reply)"] >= 1
    assert dropped["unparseable (a lead-in or refusal, not a row)"] == 1
    assert dropped["near-duplicate of the seed (embedding cosine > 0.95)"] == 1
    assert dropped["unparseable (talks about the task instead of being a row)"] == 1
    assert any(k.startswith("too short") for k in dropped)
    assert dropped["label check failed (the seed classifier predicts another label)"] == 1
    dropped_path, report_path = sidecar_paths(out)
    assert len(read(dropped_path)) == sum(dropped.values())
    saved = json.loads(report_path.read_text())
    assert saved["kept"] == 4 and saved["candidates"] == report.candidates and saved["stopped"] == ""


def test_labels_are_filled_evenly(tmp_path, seed_csv):
    counter = iter(range(1000))
    teacher = ScriptedTeacher(lambda m: f"{label_of(m)} case number {next(counter)} with detail {random.random()}")
    synthesize(tmp_path / "s.jsonl", teacher, SynthOptions(n=6, label_check="off", rouge_threshold=1.0,
                                                            embedding_threshold=1.0), seed_path=seed_csv)
    labels = [r["label"] for r in read(tmp_path / "s.jsonl")]
    assert labels.count("card_arrival") == labels.count("top_up_failed") == 3


def test_teacher_label_check(tmp_path, seed_csv):
    def reply(m):
        if m[-1]["content"].startswith("Does this message fit"):
            return "Yes." if "card" in m[-1]["content"].split("Message:")[1] else "No"
        return {"card_arrival": "The card you posted to me last month never came.",
                "top_up_failed": "I need a loan for a new car this year."}[label_of(m)]
    report = synthesize(tmp_path / "s.jsonl", ScriptedTeacher(reply),
                        SynthOptions(n=2, batch_size=2, label_check="teacher", max_candidates=2), seed_path=seed_csv)
    assert [r["label"] for r in read(tmp_path / "s.jsonl")] == ["card_arrival"]
    assert report.dropped == {"label check failed (the teacher says the text does not fit the label)": 1}


def test_resume_keeps_rows_and_continues(tmp_path, seed_csv):
    out = tmp_path / "synth.jsonl"
    synthesize(out, queue_teacher(CLASSIFY_REPLIES), SynthOptions(n=2, batch_size=1, label_check="off"), seed_path=seed_csv)
    first = read(out)
    assert len(first) == 2
    out.write_text(out.read_text() + '{"text": "cut off mid-wri')  # an interrupted write
    teacher = ScriptedTeacher(lambda m: f"Brand new {label_of(m)} question number {teacher.calls}?")
    report = synthesize(out, teacher, SynthOptions(n=4, batch_size=1, label_check="off"), seed_path=seed_csv)
    rows = read(out)
    assert rows[:2] == first and len(rows) == 4
    assert teacher.calls == 2  # only the missing rows were made
    assert report.kept == 4 and report.candidates >= 4


def test_gives_up_after_max_candidates(tmp_path, seed_csv):
    report = synthesize(tmp_path / "s.jsonl", ScriptedTeacher(lambda m: ""), SynthOptions(n=3, max_candidates=5),
                        seed_path=seed_csv)
    assert report.kept == 0 and report.candidates == 5
    assert "stopped after 5 candidates" in report.stopped


def test_instruct_self_instruct_and_evol(tmp_path):
    seed = tmp_path / "chat.jsonl"
    tasks = ["Summarise the refund policy for a customer.", "Explain how to reset a card PIN.",
             "Write a polite reply to a late delivery complaint.", "List the fees for international transfers."]
    seed.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "You are a bank assistant."},
        {"role": "user", "content": t}, {"role": "assistant", "content": "..."}]}) + "\n" for t in tasks))
    subjects = iter(["savings accounts for children", "freezing a stolen card", "disputing a card payment",
                     "opening a joint account", "changing a registered address", "ordering a cheque book"] * 3)

    def reply(m):
        text = m[-1]["content"]
        if text.startswith("Write new requests"):
            return f"Describe the steps for {next(subjects)}.\n\nI hope this helps! Another one"
        if text.startswith("Rewrite the request"):
            return f"New request: For a customer abroad, describe {next(subjects)} in detail."
        assert m[0] == {"role": "system", "content": "You are a bank assistant."}
        return f"Here is how: {text.lower()}"

    report = synthesize(tmp_path / "out.jsonl", ScriptedTeacher(reply), SynthOptions(n=6, batch_size=3), seed_path=seed)
    rows = read(tmp_path / "out.jsonl")
    assert len(rows) == 6 and report.kind == "instruct"
    assert {r["method"] for r in rows} == {"self-instruct", "evol"}
    for r in rows:
        system, user, assistant = r["messages"]
        assert system["role"] == "system" and user["role"] == "user" and assistant["content"].startswith("Here is how")
        assert user["content"] not in tasks and "I hope" not in user["content"]
        assert not user["content"].startswith("New request")


def preference_seed(tmp_path):
    seed = tmp_path / "chat.jsonl"
    prompts = ["How do I close my account?", "What is the daily ATM limit?", "Can I get a card in another colour?"]
    seed.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                     {"role": "assistant", "content": "..."}]}) + "\n" for p in prompts))
    return seed, prompts


def test_preference_pairs_from_seed_prompts_then_new_ones(tmp_path):
    seed, prompts = preference_seed(tmp_path)
    new = iter(["How do I order a replacement card after a theft?", "Why was my salary deposit held back?"])

    def reply(m):
        text = m[-1]["content"]
        if text.startswith("Write new requests"):
            return next(new)
        return f"First, open the app. Then pick the answer for: {text}. Finally, confirm it."

    report = synthesize(tmp_path / "p.jsonl", ScriptedTeacher(reply), SynthOptions(n=5, kind="preference", batch_size=5),
                        seed_path=seed)
    rows = read(tmp_path / "p.jsonl")
    assert report.kept == 5
    assert sorted(r["prompt"][-1]["content"] for r in rows if r["method"] == "seed-prompt") == sorted(prompts)
    assert sum(r["method"] == "self-instruct" for r in rows) == 2
    assert sorted(r["source_ids"][0] for r in rows if r["method"] == "seed-prompt") == [1, 2, 3]
    for r in rows:
        assert r["chosen"][0]["role"] == "assistant" and r["rejected"][0]["content"] != r["chosen"][0]["content"]
        assert r["rejected_by"] in ("truncated", "shuffled", "off-topic")


def test_preference_rejected_by_a_weaker_model_and_judged(tmp_path):
    seed, prompts = preference_seed(tmp_path)
    teacher = ScriptedTeacher(lambda m: "A careful, complete answer.")
    weaker = ScriptedTeacher(lambda m: "dunno")

    def judge_reply(m):
        text = m[-1]["content"]
        if "ATM" in text:  # the judge prefers the rejected answer here
            return "9" if "dunno" in text else "7"
        return "Score: 8/10" if "careful" in text else "2"

    judge = ScriptedTeacher(judge_reply)
    report = synthesize(tmp_path / "p.jsonl", teacher, SynthOptions(n=3, kind="preference", max_candidates=3),
                        seed_path=seed, judge=judge, rejected_teacher=weaker)
    rows = read(tmp_path / "p.jsonl")
    assert report.kept == 2 and report.dropped == {"the judge does not prefer the chosen answer": 1}
    assert all(r["rejected"][0]["content"] == "dunno" and r["rejected_by"] == "weaker-model" for r in rows)
    assert all(r["judge_score"] == 8 and r["judge_score_rejected"] == 2 for r in rows)


def test_judge_threshold_and_missing_scores(tmp_path, seed_csv):
    texts = {"card_arrival": ["The courier never delivered the card I ordered two weeks ago.",
                              "My replacement card still is not in my mailbox, where is it?"],
             "top_up_failed": ["Adding funds by bank card fails with an error every time.",
                               "The top-up I tried this morning was declined for no reason."]}
    scores = iter(["7", "I cannot rate this", "3", "10"])
    judge = ScriptedTeacher(lambda m: next(scores))
    report = synthesize(tmp_path / "s.jsonl", queue_teacher(texts), SynthOptions(n=4, batch_size=4, max_candidates=4,
                                                                                 label_check="off"),
                        seed_path=seed_csv, judge=judge)
    assert report.kept == 2
    assert report.dropped == {"the judge gave no score": 1, "judge score below 6": 1}


def scenarios_file(tmp_path, answer=False):
    path = tmp_path / "topics.yaml"
    path.write_text(
        "template: 'Write a short {setting} scenario about {topic} for a legal team.'\n"
        "topics: [a lease dispute, an employment contract]\n"
        "variables:\n  setting: [hypothetical, realistic]\n"
        f"answer: {str(answer).lower()}\n"
    )
    return path


def test_scenarios_text_and_answered(tmp_path):
    counter = iter(range(100))

    def reply(m):
        text = m[-1]["content"]
        if text.startswith("Write a short"):
            return f"Case {next(counter)}: {text[14:]} The parties disagree about clause {next(counter)}."
        return "Advice: read the clause."

    spec = load_scenarios(scenarios_file(tmp_path))
    synthesize(tmp_path / "t.jsonl", ScriptedTeacher(reply), SynthOptions(n=4, scenarios=spec, rouge_threshold=0.95))
    rows = read(tmp_path / "t.jsonl")
    assert [r["topic"] for r in rows].count("a lease dispute") == 2
    assert all(r["text"].startswith("Case") and r["variables"]["setting"] in ("hypothetical", "realistic") for r in rows)

    # a seed next to --topics is what new scenarios must not repeat
    old = tmp_path / "old.txt"
    old.write_text(rows[0]["text"] + "\n")
    again = iter(["Case 0: " + rows[0]["text"][8:], "Case 9: a brand new dispute about a neighbour's fence and who pays."])
    report = synthesize(tmp_path / "t2.jsonl", ScriptedTeacher(lambda m: next(again)), SynthOptions(n=1, batch_size=1, scenarios=spec),
                        seed_path=old)
    assert report.kept == 1 and sum(report.dropped.values()) == 1 and "the seed" in next(iter(report.dropped))

    spec = load_scenarios(scenarios_file(tmp_path, answer=True))
    synthesize(tmp_path / "c.jsonl", ScriptedTeacher(reply), SynthOptions(n=2, scenarios=spec, rouge_threshold=0.95))
    for r in read(tmp_path / "c.jsonl"):
        assert r["messages"][0]["content"].startswith("Case") and r["messages"][1]["content"] == "Advice: read the clause."


def test_scenario_yaml_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    for text, message in [
        ("template: 'About things'\ntopics: [a]\n", "must contain {topic}"),
        ("template: 'A {style} case on {topic}'\ntopics: [a]\n", "{style} but `variables:` does not define it"),
        ("template: '{topic}'\ntopics: []\n", "non-empty list"),
        ("template: '{topic}'\ntopics: [a]\ntopic: [b]\n", "unknown key(s) topic"),
        ("template: [unclosed\n", "not valid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(DataError, match=re.escape(message)):
            load_scenarios(path)
    with pytest.raises(DataError, match="does not exist"):
        load_scenarios(tmp_path / "missing.yaml")


def test_option_and_seed_errors(tmp_path, seed_csv):
    teacher = ScriptedTeacher(lambda m: "x")
    with pytest.raises(ConfigError, match="Give --seed FILE"):
        synthesize(tmp_path / "o.jsonl", teacher, SynthOptions(n=1))
    with pytest.raises(ConfigError, match="holds classify data, which cannot seed instruct data"):
        synthesize(tmp_path / "o.jsonl", teacher, SynthOptions(n=1, kind="instruct"), seed_path=seed_csv)
    with pytest.raises(ConfigError, match="--label-check must be"):
        synthesize(tmp_path / "o.jsonl", teacher, SynthOptions(n=1, label_check="maybe"), seed_path=seed_csv)
    with pytest.raises(ConfigError, match="--methods for instruct data"):
        synthesize(tmp_path / "o.jsonl", teacher, SynthOptions(n=1, methods=("wizard",)), seed_path=seed_csv)
    text_seed = tmp_path / "notes.txt"
    text_seed.write_text("some raw text\nmore raw text\n")
    with pytest.raises(ConfigError, match="holds pretrain data"):
        synthesize(tmp_path / "o.jsonl", teacher, SynthOptions(n=1), seed_path=text_seed)


def test_pool_finds_near_duplicates_by_rouge_and_embedding():
    from tunesmith.data.labels import embed

    pool = Pool(rouge_threshold=0.7, embedding_threshold=0.95)
    known = ["How long does it take for my new card to arrive in the mail?"]
    pool.add(known, embed(known), seed=True)
    candidates = [
        "how long does it take for my new card to arrive?",  # same words: ROUGE-L ~0.9
        "When will the new card be delivered to me",  # same meaning, other words
        "Why was my top-up declined this morning?",
    ]
    vectors = embed(candidates)
    reasons = [pool.duplicate(c, v) for c, v in zip(candidates, vectors)]
    assert reasons[0] is not None and "the seed" in reasons[0]
    assert reasons[1] is None and reasons[2] is None
    strict = Pool(rouge_threshold=0.99, embedding_threshold=0.5)
    strict.add(known, embed(known), seed=False)
    assert "embedding cosine > 0.5" in strict.duplicate(candidates[1], vectors[1])


def test_parse_score_and_degrade():
    assert parse_score("8") == 8 and parse_score("Score: 7/10") == 7 and parse_score("I give it 0, no, 6.5") == 6.5
    assert parse_score("no idea") is None and parse_score("42") is None
    rng = random.Random(0)
    answer = "Open the app. Tap cards. Choose freeze. Confirm with your PIN."
    seen = set()
    for _ in range(30):
        text, how = degrade(answer, ["Something else entirely."], rng)
        seen.add(how)
        assert text != answer
        if how == "truncated":
            assert answer.startswith(text) and len(text) < len(answer)
        elif how == "shuffled":
            assert sorted(text.split()) == sorted(answer.split())
        else:
            assert text == "Something else entirely."
    assert seen == {"truncated", "shuffled", "off-topic"}
    assert degrade("Yes.", [], rng) == ("Yes.", "truncated")


def test_endpoint_teacher_end_to_end(tmp_path, seed_csv, stub_openai):
    from tunesmith.inference.teacher import EndpointTeacher

    counter = iter(range(1000))
    stub_openai.reply = lambda m: f"Question {next(counter)} about {label_of(m).replace('_', ' ')} from a customer"
    stub_openai.fail = [429, 503]
    teacher = EndpointTeacher(stub_openai.url, "teacher-llm", concurrency=2, backoff=0.01)
    report = synthesize(tmp_path / "e.jsonl", teacher, SynthOptions(n=3, label_check="off", rouge_threshold=1.0,
                                                                    embedding_threshold=1.0), seed_path=seed_csv)
    assert report.kept == 3 and report.teacher == f"teacher-llm at {stub_openai.url}"
    assert len(stub_openai.requests) == 5  # three rows and two retries
    assert "Examples:" in stub_openai.requests[0]["messages"][-1]["content"]  # no prefill for endpoints


def test_tiny_local_teacher_runs_the_pipeline(tmp_path, seed_csv, tiny_model_dir):
    import torch

    from tunesmith.inference.teacher import LocalTeacher

    torch.manual_seed(0)
    report = synthesize(tmp_path / "l.jsonl", LocalTeacher(str(tiny_model_dir)), SynthOptions(n=2, max_candidates=4,
                                                                                           max_new_tokens=8), seed_path=seed_csv)
    assert report.candidates == 4
    assert report.kept + sum(report.dropped.values()) == 4
    assert json.loads(sidecar_paths(tmp_path / "l.jsonl")[1].read_text())["candidates"] == 4


def test_refusal_and_meta_filters_adapt_to_the_seed(tmp_path):
    # In this seed customers apologise and mention examples, so such rows are not talk about the task.
    seed = tmp_path / "seed.csv"
    seed.write_text("text,label\n" + "".join(
        f"\"I'm sorry to ask again about example {i}, where is my card number {i}?\",card\n" for i in range(10)))
    counter = iter(range(100))
    teacher = ScriptedTeacher(lambda m: f"I'm sorry, but the example card {next(counter)} still has not come, {random.random()}")
    report = synthesize(tmp_path / "s.jsonl", teacher, SynthOptions(n=2, rouge_threshold=1.0, embedding_threshold=1.0),
                        seed_path=seed)
    assert report.kept == 2 and not report.dropped
