"""OpenAI's chat fine-tuning format, all of it (issue 22): weights, content parts, names,
tool calls (and the legacy function calls) are read with nothing lost, or refused with one
sentence naming the row; SFT learns only weight != 0 assistant turns and renders tools."""

import copy
import json
from pathlib import Path

import pytest

from tunesmith.data.formats import (
    Format,
    load_data,
    template_inputs,
    to_chat,
    token_lengths,
)
from tunesmith.data.quality import check_data, fix_data
from tunesmith.errors import DataError
from tunesmith.train.sft import assistant_spans, tokenize_chats

FULL = Path(__file__).parent / "data_files" / "openai_chat_full.jsonl"
WEATHER_ARGS = '{"location": "San Francisco, USA", "format": "celsius"}'


def write_rows(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def learned_text(example: dict, tokenizer) -> str:
    return tokenizer.decode(
        [i for i, m in zip(example["input_ids"], example["assistant_masks"]) if m]
    )


def test_full_file_loads_with_nothing_lost():
    data = load_data(FULL)
    assert (
        data.format is Format.OPENAI_CHAT
        and data.task == "chat"
        and data.rows == [1, 2, 3, 4]
    )
    weights, parts, tools, legacy = data.records
    # weights stay on the assistant turns
    assert [m.get("weight") for m in weights["messages"]] == [None, None, 0, None, 1]
    # text parts are joined in order; names are kept
    system, user, assistant = parts["messages"]
    assert system == {"role": "system", "content": "You are a bank assistant."}
    assert user == {
        "role": "user",
        "name": "alice",
        "content": "How do I reset my PIN?\n\nI am abroad.",
    }
    assert assistant["name"] == "bankbot"
    # tool calls, tool results and tool definitions
    call = tools["messages"][1]
    assert call["role"] == "assistant" and call["content"] == ""
    assert call["tool_calls"] == [
        {
            "id": "call_id",
            "type": "function",
            "function": {"name": "get_current_weather", "arguments": WEATHER_ARGS},
        }
    ]
    assert tools["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_id",
        "content": "21.0",
    }
    assert [t["function"]["name"] for t in tools["tools"]] == ["get_current_weather"]
    assert tools["tools"][0]["function"]["parameters"]["required"] == [
        "location",
        "format",
    ]
    # legacy functions / function_call / function role map to tools / tool_calls / tool
    assert legacy["tools"][0] == {
        "type": "function",
        "function": json.loads(FULL.read_text().splitlines()[3])["functions"][0],
    }
    assert (
        legacy["messages"][1]["tool_calls"][0]["function"]["name"]
        == "get_current_weather"
    )
    assert legacy["messages"][2] == {
        "role": "tool",
        "name": "get_current_weather",
        "content": "19.0",
    }
    # the one row-level column not read is reported, not silently dropped
    assert data.unused_columns == ["parallel_tool_calls"]
    assert data.unused_keys == []  # every key on every message is read
    # to_chat (what SFT reads) keeps the tools
    chats = to_chat(data)
    assert chats[2]["tools"] == tools["tools"] and "tools" not in chats[0]


@pytest.mark.parametrize(
    "part, kind",
    [
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            "an image part",
        ),
        (
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            "an image part",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            "an audio part",
        ),
    ],
)
def test_non_text_parts_are_refused_naming_the_row(tmp_path, part, kind):
    ok = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]},
                        {"role": "assistant", "content": "A cat."}]}  # fmt: skip
    path = write_rows(tmp_path / "parts.jsonl", ok, bad)
    with pytest.raises(DataError) as err:
        load_data(path)
    message = str(err.value)
    assert message.startswith(f"{path}: row 2 has {kind} in message 1")
    assert (
        "reads text only" in message
        and message.count(". ") == 0
        and message.endswith(".")
    )


@pytest.mark.parametrize("weight", [2, 0.5, -1, "1", True, None])
def test_other_weights_are_refused_naming_the_row(tmp_path, weight):
    row = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": weight},
        ]
    }
    path = write_rows(tmp_path / "weights.jsonl", row)
    with pytest.raises(
        DataError, match=r"row 1 has message 2 .* with the weight .* 0 or 1"
    ):
        load_data(path)


def test_weight_on_a_user_turn_is_refused(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": "Hi", "weight": 1},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    with pytest.raises(DataError, match=r"row 1 has message 1 .* on the user turn"):
        load_data(write_rows(tmp_path / "w.jsonl", row))


def test_malformed_tool_calls_are_refused(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
        ]
    }
    with pytest.raises(
        DataError, match=r"row 1 has message 2 .* tool calls that are not a list"
    ):
        load_data(write_rows(tmp_path / "t.jsonl", row))


def test_weight_zero_turn_is_context_not_loss(tiny_tokenizer):
    data = load_data(FULL)
    [example] = tokenize_chats(
        [data.records[0]], tiny_tokenizer, max_length=512
    ).examples
    learned = learned_text(example, tiny_tokenizer)
    assert "Paris, as if everyone doesn't know that already." in learned
    assert (
        "Paris<|im_end|>" not in learned
    )  # the weight-0 answer is in the input, not learned
    assert "Paris<|im_end|>" in tiny_tokenizer.decode(example["input_ids"])
    # without the weight, both answers are learned
    unweighted = [
        {k: v for k, v in m.items() if k != "weight"}
        for m in data.records[0]["messages"]
    ]
    [plain] = tokenize_chats(
        [{"messages": unweighted}], tiny_tokenizer, max_length=512
    ).examples
    assert "Paris<|im_end|>" in learned_text(plain, tiny_tokenizer)


def test_only_weight_zero_answers_leave_nothing_to_learn(tiny_tokenizer):
    row = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
        ]
    }
    result = tokenize_chats([row], tiny_tokenizer, max_length=512)
    assert result.examples == [] and result.skipped == 1


def test_tool_calls_fall_back_to_json_text_on_a_template_without_tools(tiny_tokenizer):
    """The tiny ChatML template ignores tools and tool_calls, so they are written as text."""
    record = load_data(FULL).records[2]
    text, spans = assistant_spans(record["messages"], tiny_tokenizer, record["tools"])
    call_json = '[{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", "format": "celsius"}}]'
    assert text.startswith(
        '<|im_start|>system\nYou can call these tools:\n[{"name": "get_current_weather"'
    )
    assert f"<|im_start|>assistant\n{call_json}<|im_end|>" in text
    assert "<|im_start|>tool\n21.0<|im_end|>" in text
    learned = [text[a:b] for a, b in spans]
    assert learned == [
        f"{call_json}<|im_end|>",
        "It is 21 degrees celsius in San Francisco, CA<|im_end|>",
    ]
    [example] = tokenize_chats(
        [to_chat(load_data(FULL))[2]], tiny_tokenizer, max_length=512
    ).examples
    assert "21.0" not in learned_text(
        example, tiny_tokenizer
    )  # tool results are context
    assert "get_current_weather" in learned_text(example, tiny_tokenizer)


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}<call>{{ call['function']['name'] }} "
    "{{ call['function']['arguments'] | tojson }}</call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_tool_calls_go_through_a_template_that_renders_them(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)  # keep the session fixture's template intact
    tok.chat_template = TOOL_TEMPLATE
    record = load_data(FULL).records[2]
    messages, tools = template_inputs(record["messages"], record["tools"], tok)
    assert tools == record["tools"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == json.loads(
        WEATHER_ARGS
    )  # objects for templates
    text, spans = assistant_spans(record["messages"], tok, record["tools"])
    assert text.startswith("<|im_start|>system\nTOOLS: get_current_weather<|im_end|>")
    assert text[spans[0][0] : spans[0][1]].startswith("<call>get_current_weather {")


def test_token_lengths_count_the_rendered_tools(tiny_tokenizer):
    data = load_data(FULL)
    with_tools, without = (
        token_lengths(data.records[2:3], "chat", tiny_tokenizer),
        token_lengths(
            [{"messages": data.records[2]["messages"]}], "chat", tiny_tokenizer
        ),
    )
    assert with_tools[0] > without[0]


def test_gate_and_fix_accept_the_full_format(tmp_path, tiny_tokenizer):
    card = check_data(FULL, tokenizer=tiny_tokenizer, max_length=512)
    assert card.rows == 4
    assert not any("empty assistant" in f.message for f in card.findings)
    result = fix_data(FULL, tmp_path / "clean.jsonl")
    assert result.rows_out == 4 and result.dropped == 0
    again = load_data(tmp_path / "clean.jsonl")
    assert (
        again.records == load_data(FULL).records
    )  # the canonical file reads back the same


def test_gate_tolerates_none_content():
    from tunesmith.data import quality

    record = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": None, "tool_calls": [{}]},
        ]
    }
    assert list(quality._text_fields(record)) == ["Hi", ""]
    assert quality._missing_answer(record) is None
    assert quality._clean_record(record)[0] == record


def test_a_list_that_is_not_content_parts_is_refused(tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": ["Hi"]},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    with pytest.raises(
        DataError, match=r"row 1 has message 1 .* content is a list with the part 'Hi'"
    ):
        load_data(write_rows(tmp_path / "l.jsonl", row))


def test_a_template_that_rejects_tool_turns_is_one_clear_error(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'system'] %}"
        "{{ raise_exception('roles must be user or assistant') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    record = load_data(FULL).records[2]
    with pytest.raises(DataError, match="cannot render a conversation with tool turns"):
        tokenize_chats([record], tok, max_length=512)
