"""Real-world formats load losslessly: TRL's own dataset types and Hugging Face-style tables.

Each fixture in data_files/ is written the way its authors document it. Every test checks
that rows out == rows in, that every value of every used column reaches the canonical
record, and which columns were left unused (and so reported).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assistant, system, user

from tunesmith.config import RunConfig
from tunesmith.data.formats import (
    CONTEXT_TEMPLATE,
    Format,
    load_data,
    parse_columns,
    to_chat,
)
from tunesmith.data.load import read_records
from tunesmith.data.rows import load_chat_rows, load_prompts
from tunesmith.errors import DataError

FILES = Path(__file__).parent / "data_files"


def _strings(value) -> list[str]:
    """Every piece of text in a raw value or canonical record."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [str(value)]


def assert_lossless(data, path):
    """Rows out == rows in; every used column's text is in its record; the rest are reported."""
    raw = read_records(path)
    assert len(data.records) == len(raw) and data.rows == [r.row for r in raw]
    uses = dict(data.column_uses())
    used = {column for column, use in uses.items() if use != "not used"}
    assert sorted(used | set(data.unused_columns)) == sorted({k for r in raw for k in r.data})
    for record, source in zip(data.records, raw):
        text = "\n".join(_strings(record))
        for column in used:
            for piece in _strings(source.data.get(column)):
                if isinstance(source.data.get(column), bool) or uses[column] == "label":
                    continue  # labels are checked by value in each test
                assert piece.strip() in text, (column, piece)


# --- TRL's dataset types ---------------------------------------------------------------


def test_trl_prompt_only_conversational_feeds_rl_prompts():
    path = FILES / "trl_prompt_only.jsonl"
    data = load_data(path)
    assert (data.format, data.task) == (Format.PROMPT_ONLY, "chat")
    assert data.column_map == {"prompt": "prompt"} and data.unused_columns == []
    assert_lossless(data, path)
    assert data.records[1] == {"messages": [system("Answer in one word."), user("Where is the sun?")]}
    assert all(r["messages"][-1]["role"] == "user" for r in data.records)
    rows = load_prompts(str(path), RunConfig())
    assert len(rows) == 3
    assert [r["prompt"] for r in rows[:2]] == [r["messages"] for r in data.records[:2]]
    assert [r["answer"] for r in rows[:2]] == ["", ""]


def test_trl_multi_turn_prompt_only_keeps_its_last_user_turn():
    path = FILES / "trl_prompt_only.jsonl"
    rows = load_prompts(str(path), RunConfig())
    assert rows[2]["prompt"] == load_data(path).records[2]["messages"]


def test_trl_prompt_only_standard():
    path = FILES / "trl_prompt_only_standard.jsonl"
    data = load_data(path)
    assert data.format is Format.PROMPT_ONLY
    assert data.records == [{"messages": [user("The sky is")]}, {"messages": [user("The sun is")]}]
    assert len(load_prompts(str(path), RunConfig())) == 2
    assert load_data(path, columns=parse_columns("prompt=prompt")).format is Format.PROMPT_ONLY


def test_trl_prompt_completion_conversational():
    path = FILES / "trl_prompt_completion.jsonl"
    data = load_data(path)
    assert (data.format, data.task) == (Format.PROMPT_COMPLETION, "chat")
    assert_lossless(data, path)
    assert data.records[1] == {"messages": [system("Be brief."), user("Where is the sun?"), assistant("In the sky.")]}
    assert to_chat(data)[0]["messages"] == [user("What color is the sky?"), assistant("It is blue.")]


def test_trl_preference_implicit_prompt():
    path = FILES / "trl_preference_implicit.jsonl"
    data = load_data(path)
    assert data.task == "preference"
    assert_lossless(data, path)
    assert data.records[1] == {
        "prompt": [user("Hi"), assistant("Hello!"), user("Where is the sun?")],
        "chosen": [assistant("In the sky.")],
        "rejected": [assistant("In the sea.")],
    }


def test_trl_preference_explicit_prompt_messages_or_strings():
    path = FILES / "trl_preference_explicit.jsonl"
    data = load_data(path)
    assert (data.format, data.task) == (Format.PREFERENCE, "preference")
    assert_lossless(data, path)
    assert data.records == [
        {"prompt": [user("What color is the sky?")], "chosen": [assistant("It is blue.")], "rejected": [assistant("It is green.")]},
        {"prompt": [user("The sky is")], "chosen": [assistant(" blue.")], "rejected": [assistant(" green.")]},
    ]
    assert len(load_prompts(str(path), RunConfig())) == 2


def test_trl_unpaired_preference_conversational():
    path = FILES / "trl_unpaired_preference.jsonl"
    data = load_data(path)
    assert (data.format, data.task) == (Format.KTO, "kto")
    assert_lossless(data, path)
    assert [r["label"] for r in data.records] == [True, False]
    assert data.records[1]["completion"] == [assistant("It is green.")]
    assert to_chat(data) == [{"messages": [user("What color is the sky?"), assistant("It is blue.")]}]


# --- tables ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, column_map, unused, first",
    [
        ("sentiment.csv", {"text": "review", "label": "sentiment"}, ["stars"],
         {"text": "Great phone, the battery lasts two days.", "label": "positive"}),
        ("intent.tsv", {"text": "utterance", "label": "intent"}, ["id"],
         {"text": "wake me up at seven", "label": "alarm_set"}),
        ("sentence_y.csv", {"text": "sentence", "label": "y"}, [], {"text": "the film was fun", "label": "1"}),
    ],
)
def test_classification_label_names(name, column_map, unused, first):
    data = load_data(FILES / name)
    assert (data.format, data.task) == (Format.TEXT_LABEL, "classify")
    assert data.column_map == column_map and data.unused_columns == unused
    assert data.records[0] == first
    assert_lossless(data, FILES / name)


def test_dolly_instruction_context_response():
    path = FILES / "dolly.jsonl"
    data = load_data(path)
    assert (data.format, data.task) == (Format.PROMPT_COMPLETION, "chat")
    assert data.column_map == {"prompt": "instruction", "completion": "response", "context": "context"}
    assert data.unused_columns == ["category"]
    assert_lossless(data, path)
    raw = read_records(path)[0].data
    assert data.records[0]["messages"] == [
        user(f"{raw['context']}\n\n{raw['instruction']}"),
        assistant(raw["response"]),
    ]
    # an empty context adds nothing to the user turn
    assert data.records[1]["messages"][0] == user("Which is a species of fish? Tope or Rope")


def test_question_with_context_reaches_the_user_turn():
    path = FILES / "qa_context.csv"
    data = load_data(path)
    assert data.column_map == {"prompt": "question", "completion": "answer", "context": "context"}
    assert data.unused_columns == ["id"]
    assert_lossless(data, path)
    assert data.records[0]["messages"] == [
        user(CONTEXT_TEMPLATE.format(context="The Eiffel Tower is in Paris. It was finished in 1889.",
                                     prompt="When was the Eiffel Tower finished?")),
        assistant("In 1889."),
    ]
    assert data.column_uses() == [("id", "not used"), ("context", "context"), ("question", "prompt"), ("answer", "completion")]


def test_query_response_and_columns_context():
    path = FILES / "query_response.csv"
    data = load_data(path)
    assert data.column_map == {"prompt": "query", "completion": "response"} and data.unused_columns == ["source"]
    assert data.records[1]["messages"] == [user("Is there a fee for transfers abroad?"), assistant("Yes, 1% of the amount, at least 2 EUR.")]
    # --columns can name a context column too, and then nothing is unused
    data = load_data(path, columns=parse_columns("prompt=query,completion=response,context=source"))
    assert data.format is Format.PROMPT_COMPLETION and data.unused_columns == []
    assert data.records[0]["messages"][0] == user("faq\n\nHow do I reset my PIN?")
    assert_lossless(data, path)


def test_unused_columns_are_reported_for_forced_formats():
    data = load_data(FILES / "ambiguous.jsonl", format="openai_chat")
    assert data.unused_columns == ["prompt", "completion"]
    data = load_data(FILES / "text_label.csv")
    assert data.unused_columns == ["id"]
    assert ("id", "not used") in data.column_uses()


def test_instruction_input_response_keeps_the_input():
    path = FILES / "instruction_input_response.jsonl"
    data = load_data(path)
    assert data.column_map == {"prompt": "instruction", "completion": "response", "context": "input"}
    assert data.unused_columns == []
    assert data.records == [
        {"messages": [user("Good morning\n\nTranslate to French."), assistant("Bonjour")]},
        {"messages": [user("Name a prime number."), assistant("7")]},
    ]


def test_columns_join_several_inputs():
    path = FILES / "nli.csv"
    with pytest.raises(DataError, match="premise, hypothesis, label"):
        load_data(path)  # no column says which is the text: refused, not guessed
    data = load_data(path, columns=parse_columns("text=premise+hypothesis,label=label"))
    assert (data.format, data.task) == (Format.TEXT_LABEL, "classify")
    assert data.unused_columns == []
    assert data.column_uses() == [("premise", "text"), ("hypothesis", "text"), ("label", "label")]
    assert data.records[0] == {"text": "A man is playing a guitar.\n\nA person plays music.", "label": "entailment"}
    assert_lossless(data, path)
    # prompt and context join too
    data = load_data(FILES / "qa_context.csv", columns=parse_columns("prompt=id+question,completion=answer,context=context"))
    assert data.unused_columns == []
    assert data.records[0]["messages"][0]["content"].endswith("\n\nq1\n\nWhen was the Eiffel Tower finished?")


def test_columns_join_errors():
    with pytest.raises(DataError, match="field 'label', which takes one column"):
        parse_columns("text=a,label=b+c")
    with pytest.raises(DataError, match="'nope', which the file does not have"):
        load_data(FILES / "nli.csv", columns=parse_columns("text=premise+nope,label=label"))


def test_query_answer_is_ambiguous_not_guessed(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("query,answer\nwhat is 2+2,4\n")
    with pytest.raises(DataError, match="more than one format"):
        load_data(path)


def test_inspect_shows_every_column_and_what_it_became(tiny_model_dir):
    from test_cli import invoke

    result = invoke("data", "inspect", FILES / "dolly.jsonl", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    rows = [" ".join(line.replace("│", " ").split()) for line in result.output.splitlines()]
    for shown in ("format prompt_completion", "column instruction -> prompt", "column context -> context",
                  "column response -> completion", "column category -> not used"):
        assert shown in rows, (shown, rows)
    assert any(row.startswith("not used category") for row in rows), rows
    result = invoke("data", "inspect", FILES / "trl_prompt_only.jsonl", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "prompt_only" in result.output


def test_supervised_tuning_refuses_prompts_without_answers():
    with pytest.raises(DataError, match="prompts without answers .* --method grpo"):
        load_chat_rows(str(FILES / "trl_prompt_only.jsonl"), RunConfig())


def test_an_unused_column_is_a_finding_the_user_sees_without_lowering_the_score(tmp_path):
    from tunesmith.data.quality import check_data

    path = tmp_path / "tickets.csv"
    path.write_text("text,label,ticket_id\n" + "".join(f"my card {i} is late,card_arrival,{i}\n" for i in range(6))
                    + "".join(f"refund order {i},refund,{i + 6}\n" for i in range(6)))
    card = check_data(str(path), label_check=False)
    unused = [f for f in card.findings if f.check == "schema" and "ticket_id" in f.message]
    assert len(unused) == 1 and unused[0].severity == "warning" and unused[0].count == 0
    assert "--columns" in unused[0].message
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(",".join(line.split(",")[:2]) for line in path.read_text().splitlines()) + "\n")
    assert card.score() == check_data(str(plain), label_check=False).score()
    assert not [f for f in check_data(str(plain), label_check=False).findings if "not used" in f.message]
