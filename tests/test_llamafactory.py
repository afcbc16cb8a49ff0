"""LLaMA-Factory's dataset formats (its data/README.md) load with nothing lost (issue 22).

The fixtures in data_files/llamafactory/ are shaped like LLaMA-Factory's own demo files
(glaive_toolcall_en_demo, alpaca_en_demo with history, dpo_en_demo, kto_en_demo, mllm_demo,
c4_demo) plus alpaca preference/KTO files and a custom dataset; dataset_info.json beside them
describes each, as LLaMA-Factory's data/ folder does. Every file reads the same with that
dataset_info.json and, copied alone, by detection. Also here: the smaller gaps of the issue
(OpenAI turn keys, TRL's standard implicit-prompt pairs, `--conflicts` without `--fix`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assistant, system, tiny_run_config, user
from test_cli import assert_one_sentence_error, invoke

from tunesmith.data.formats import Format, load_data, parse_columns, to_chat
from tunesmith.data.load import read_records
from tunesmith.data.quality import check_data
from tunesmith.errors import DataError
from tunesmith.train.sft import tokenize_chats

LF = Path(__file__).parent / "data_files" / "llamafactory"


def tool(text):
    return {"role": "tool", "content": text}


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def write_rows(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


ROLE_KEYS = ("from", "role", "speaker")


def _texts(value) -> list[str]:
    """The text of a raw value: every string but role names and JSON text (calls, tool
    definitions and results are checked by value in their tests)."""
    if isinstance(value, dict):
        return [t for k, v in value.items() if k not in ROLE_KEYS for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, str):
        try:
            return [] if isinstance(json.loads(value), (dict, list)) else [value]
        except ValueError:
            return [value]
    return []


def assert_nothing_lost(data, path):
    """Rows out == rows in, every column of the file is used or reported, and every text of
    a used column is in its record."""
    raw = read_records(path)
    assert data.rows == [r.row for r in raw]
    used = {column for column, use in data.column_uses() if use != "not used"}
    assert used | set(data.unused_columns) == {k for r in raw for k in r.data}
    for record, source in zip(data.records, raw):
        text = "\n".join(_texts(record))
        for column in used:
            for piece in _texts(source.data.get(column)):
                assert piece.strip() in text, (column, piece)


DEMOS = [
    ("glaive_toolcall_en_demo.json", Format.SHAREGPT, "chat"),
    ("alpaca_en_demo.json", Format.ALPACA, "chat"),
    ("alpaca_dpo_demo.json", Format.ALPACA_PREFERENCE, "preference"),
    ("alpaca_kto_demo.json", Format.ALPACA_KTO, "kto"),
    ("dpo_en_demo.json", Format.SHAREGPT_PREFERENCE, "preference"),
    ("kto_en_demo.json", Format.SHAREGPT_KTO, "kto"),
    ("sharegpt_kto_demo.json", Format.SHAREGPT_KTO, "kto"),
    ("c4_demo.jsonl", Format.TEXT, "pretrain"),
]


@pytest.mark.parametrize("name, fmt, task", DEMOS)
def test_demo_files_load_the_same_with_dataset_info_or_alone(name, fmt, task, tmp_path):
    data = load_data(LF / name)
    assert (data.format, data.task) == (fmt, task)
    assert_nothing_lost(data, LF / name)
    assert data.unused_columns == [] and data.unused_keys == []
    [note] = data.notes
    assert note.startswith(f"dataset_info.json: read {name} as its entry '{name.split('.')[0]}' ({fmt.value}: ")
    alone = load_data(shutil.copy(LF / name, tmp_path / name))  # no dataset_info.json there: detected
    assert (alone.format, alone.records, alone.notes) == (fmt, data.records, [])


def test_glaive_tool_calls_become_openai_tool_calls_and_tool_turns(tmp_path, tiny_tokenizer):
    path = LF / "glaive_toolcall_en_demo.json"
    data = load_data(path)
    recipes, plain, parallel = data.records
    raw = json.loads(path.read_text())
    assert [m["role"] for m in recipes["messages"]] == ["user", "assistant", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert recipes["messages"][3] == {
        "role": "assistant", "content": "",
        "tool_calls": [call("search_recipes", {"ingredients": ["chicken", "bell peppers", "rice"]})],
    }
    assert recipes["messages"][4] == tool(raw[0]["conversations"][4]["value"])
    # the tools column is JSON text of bare function definitions; they come out as OpenAI's tools
    assert recipes["tools"] == [{"type": "function", "function": f} for f in json.loads(raw[0]["tools"])]
    assert "tools" not in plain and plain["messages"][1]["content"].startswith("Photoshop is")  # "[]": no tools
    assert parallel["messages"][1]["tool_calls"] == [
        call("get_weather", {"city": "Lisbon"}), call("convert_currency", {"amount": 20, "from": "EUR", "to": "USD"}),
    ]
    assert [m["role"] for m in parallel["messages"][2:]] == ["tool", "tool", "assistant"]
    # the canonical chat is the one the OpenAI path gives: the same OpenAI row reads the same
    openai_row = {"messages": [{"role": "user", "content": recipes["messages"][2]["content"]},
                               {"role": "assistant", "content": None, "tool_calls": recipes["messages"][3]["tool_calls"]},
                               {"role": "tool", "content": recipes["messages"][4]["content"]}],
                  "tools": recipes["tools"]}
    assert load_data(write_rows(tmp_path / "openai.jsonl", openai_row)).records[0] == {
        "messages": recipes["messages"][2:5], "tools": recipes["tools"],
    }
    assert to_chat(data)[0]["tools"] == recipes["tools"]
    # SFT learns the calls and the answers, never the tool results
    [example] = tokenize_chats(to_chat(data)[:1], tiny_tokenizer, max_length=2048).examples
    learned = tiny_tokenizer.decode([t for t, m in zip(example["input_ids"], example["assistant_masks"]) if m])
    assert "search_recipes" in learned and "I found a recipe" in learned and '"recipes": [' not in learned


def test_alpaca_history_and_system_come_before_the_instruction():
    data = load_data(LF / "alpaca_en_demo.json")
    assert data.records[1]["messages"] == [
        system("You are a careful translator."),
        user("Translate 'good morning' into French."), assistant("Bonjour."),
        user("And 'good night'?"), assistant("Bonne nuit."),
        user("Translate the sentence into French.\n\nThe cat sleeps on the sofa."), assistant("Le chat dort sur le canapé."),
    ]
    assert data.records[0]["messages"] == [user("Describe a process of making crepes."), assistant(data.records[0]["messages"][1]["content"])]


def test_alpaca_preference_and_kto():
    pairs = load_data(LF / "alpaca_dpo_demo.json").records
    assert pairs[0] == {
        "prompt": [user("Give me a tip for saving money.")],
        "chosen": [assistant("Set up an automatic transfer to a savings account on payday, so you save before you can spend.")],
        "rejected": [assistant("Just spend less.")],
    }
    assert pairs[1]["prompt"][0]["content"].startswith("Summarise the text in one sentence.\n\nBanks take deposits")
    kto = load_data(LF / "alpaca_kto_demo.json")
    assert [r["label"] for r in kto.records] == [True, False, True]
    assert kto.records[1] == {"prompt": [user("What is the capital of Australia?")],
                              "completion": [assistant("The capital of Australia is Sydney.")], "label": False}
    # a thumbs-down answer is never an SFT target
    assert all("Sydney" not in m["content"] for chat in to_chat(kto) for m in chat["messages"])


def test_sharegpt_preference_with_single_turn_answers():
    data = load_data(LF / "dpo_en_demo.json")
    game, maths = data.records
    assert game["prompt"] == [user("Hi! I'd like to create a word game where players guess a hidden city.")]
    assert game["rejected"] == [assistant("Sounds good. What would you like to know?")]
    assert [m["role"] for m in maths["prompt"]] == ["system", "user", "assistant", "user"]
    assert maths["chosen"] == [assistant("80 x 0.15 = 12, so 15% of 80 is 12.")]


@pytest.mark.parametrize("name", ["kto_en_demo.json", "sharegpt_kto_demo.json"])
def test_sharegpt_kto_judges_the_last_turn(name):
    data = load_data(LF / name)
    raw = json.loads((LF / name).read_text())
    turns = "messages" if "messages" in raw[0] else "conversations"
    for record, row in zip(data.records, raw):
        assert record["label"] is row.get("label", row.get("kto_tag"))
        assert len(record["prompt"]) == len(row[turns]) - 1 and record["completion"][0]["role"] == "assistant"
    rejected = [r["completion"][0]["content"] for r in data.records if not r["label"]]
    learned = [m["content"] for chat in to_chat(data) for m in chat["messages"]]
    assert rejected and not set(rejected) & set(learned)


def test_dataset_info_columns_and_tags_name_a_custom_dataset():
    data = load_data(LF / "support_chat.json")
    assert data.format is Format.SHAREGPT and data.unused_columns == [] and data.unused_keys == []
    assert data.column_map == {"messages": "dialog", "system": "brief", "tools": "functions_json"}
    assert "entry 'support_chat'" in data.notes[0] and "speaker/text" in data.notes[0]
    order, returns = data.records
    assert order["messages"] == [
        system("You are the support assistant of an online shop."),
        user("Where is my order 4417?"),
        {"role": "assistant", "content": "", "tool_calls": [call("lookup_order", {"order_id": "4417"})]},
        tool('{"status": "shipped", "eta": "Friday"}'),
        assistant("Order 4417 has shipped and should arrive on Friday."),
    ]
    assert order["tools"][0]["function"]["name"] == "lookup_order" and "tools" not in returns
    assert returns["messages"][0] == system("You are the support assistant of an online shop. Be brief.")
    assert_nothing_lost(data, LF / "support_chat.json")


def test_dataset_info_entry_choices(tmp_path):
    rows = [{"q": "What is 2+2?", "a": "4", "id": 1}, {"q": "What is 3+3?", "a": "6", "id": 2}]
    path = tmp_path / "maths.json"
    path.write_text(json.dumps(rows))
    info = tmp_path / "dataset_info.json"
    entry = {"file_name": "maths.json", "columns": {"prompt": "q", "response": "a"}}
    info.write_text(json.dumps({"remote": {"hf_hub_url": "x/y", "file_name": "maths.json"}, "first": entry,
                                "second": {"file_name": "./maths.json", "columns": {"prompt": "a"}}}))
    data = load_data(path)
    assert data.format is Format.ALPACA and data.records[0]["messages"] == [user("What is 2+2?"), assistant("4")]
    assert data.unused_columns == ["id"]
    assert data.notes[0] == "dataset_info.json: the entries first, second all name maths.json; using the first, 'first'."
    # explicit --columns win, and the note says the entry was not applied
    explicit = load_data(path, columns=parse_columns("prompt=a,completion=q"))
    assert explicit.records[0]["messages"] == [user("4"), assistant("What is 2+2?")]
    assert any("'first' is not applied, since --columns says" in note for note in explicit.notes)
    forced = load_data(path, format="alpaca", columns=parse_columns("instruction=q,output=a"))
    assert forced.records == data.records
    # an entry that cannot be used is one sentence naming it
    info.write_text(json.dumps({"m": {"file_name": "maths.json", "formatting": "xml"}}))
    with pytest.raises(DataError, match=r"the entry 'm' has the formatting 'xml'; use alpaca or sharegpt\.$"):
        load_data(path)
    info.write_text(json.dumps({"m": {"file_name": "maths.json", "columns": {"prompt": "question", "response": "a"}}}))
    with pytest.raises(DataError, match=r"names the column 'question', which maths.json does not have"):
        load_data(path)
    info.write_text(json.dumps({"m": {"file_name": "maths.json", "ranking": True, "columns": {"prompt": "q"}}}))
    with pytest.raises(DataError, match=r"is alpaca_preference data but names no column for chosen, rejected"):
        load_data(path)
    # LLaMA-Factory's "openai" formatting reads as sharegpt; a role outside the entry's tags is one sentence
    chat = write_rows(tmp_path / "chat.jsonl", {"dialog": [{"who": "client", "said": "Hi"}, {"who": "bot", "said": "Hello"}]},
                      {"dialog": [{"who": "client", "said": "Hi"}, {"who": "robot", "said": "Hello"}]})
    tags = {"role_tag": "who", "content_tag": "said", "user_tag": "client", "assistant_tag": "bot"}
    info.write_text(json.dumps({"c": {"file_name": "chat.jsonl", "formatting": "openai", "columns": {"messages": "dialog"},
                                      "tags": tags, "num_samples": 1}}))
    bad: list = []
    data = load_data(chat, bad_rows=bad)
    assert data.format is Format.SHAREGPT and data.records == [{"messages": [user("Hi"), assistant("Hello")]}]
    assert "num_samples (1) is not applied: every row is read" in data.notes[0]
    assert bad == [(2, ("has message 2 in the column 'dialog' with the unknown role 'robot'; use one of the role tags "
                        "of dataset_info.json (client, bot, observation, function_call, system) in 'who'"))]
    # a dataset_info.json that is not JSON is a note, and the format is detected
    info.write_text("{not json")
    data = load_data(write_rows(tmp_path / "chat.jsonl", {"messages": [user("Hi"), assistant("Hello")]}))
    assert data.format is Format.OPENAI_CHAT and "cannot be read" in data.notes[0]


def test_images_are_refused_naming_the_row(tmp_path):
    path = LF / "mllm_demo.json"
    with pytest.raises(DataError) as err:
        load_data(path)
    message = str(err.value)
    assert message.startswith(f"{path}: row 1 has 2 images in the column 'images'; the models here read text only")
    assert message.count(". ") == 0 and message.endswith(".")
    card = check_data(str(path), label_check=False)  # the gate lists every such row
    [refused] = [f for f in card.findings if f.check == "schema" and f.severity == "error"]
    assert refused.rows == [1, 2] and card.rows == 0
    # a placeholder alone is refused too; an empty media column is only reported as unused
    alone = write_rows(tmp_path / "p.jsonl", {"messages": [user("Describe <video> please"), assistant("A cat.")], "videos": []},
                       {"messages": [user("Hi"), assistant("Hello")], "videos": []})
    with pytest.raises(DataError, match=r"row 1 has the placeholder <video> in the column 'messages'"):
        load_data(alone)
    fine = load_data(write_rows(tmp_path / "e.jsonl", {"messages": [user("Hi"), assistant("Hello")], "images": []}))
    assert fine.unused_columns == ["images"]


def test_sharegpt_rows_that_do_not_fit_are_one_sentence(tmp_path):
    bad_call = {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "get_weather(Paris)"},
                                  {"from": "observation", "value": "20"}, {"from": "gpt", "value": "20 degrees."}]}
    with pytest.raises(DataError, match=r"row 1 has message 2 in the column 'conversations', a function call, whose content is not JSON"):
        load_data(write_rows(tmp_path / "c.jsonl", bad_call))
    two_systems = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                     {"from": "gpt", "value": "Hello"}], "system": "Be kind."}
    with pytest.raises(DataError, match=r"row 1 has a system prompt in the column 'system' and a different one"):
        load_data(write_rows(tmp_path / "s.jsonl", two_systems))
    history = {"instruction": "Hi", "output": "Hello", "history": [["only a question"]]}
    with pytest.raises(DataError, match=r"row 1 has the history item 1 \['only a question'\] .* not an \[instruction, response\] pair"):
        load_data(write_rows(tmp_path / "h.jsonl", history))
    tools = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "tools": "not json"}
    with pytest.raises(DataError, match=r"row 1 has tool definitions in the column 'tools' that are not a list of functions"):
        load_data(write_rows(tmp_path / "t.jsonl", tools))


def test_a_chat_label_that_is_not_boolean_stays_an_unused_column(tmp_path):
    path = write_rows(tmp_path / "c.jsonl", {"messages": [user("Hi"), assistant("Hello")], "label": "greeting"})
    data = load_data(path)
    assert data.format is Format.OPENAI_CHAT and data.unused_columns == ["label"]


# --- training: a couple of the new formats, one step each ---------------------------------


@pytest.mark.parametrize("name, stage", [("glaive_toolcall_en_demo.json", "sft"), ("dpo_en_demo.json", "dpo"),
                                         ("kto_en_demo.json", "kto")])
def test_one_training_step(name, stage, tmp_path, tiny_model_dir):
    from tunesmith.train.stages import train_run

    data = shutil.copy(LF / name, tmp_path / name)
    shutil.copy(LF / "dataset_info.json", tmp_path / "dataset_info.json")
    config = tiny_run_config(tiny_model_dir, data, max_steps=1, eval_steps=1, max_length=512, pack_length=512, batch_size=2)
    config.data.validation_split = 0.0  # a demo file has a few rows: train on all of them
    config.method.stages = [stage]
    summary = train_run(config, tmp_path / "run")
    assert summary.global_step == 1 and summary.train_rows == len(read_records(data))


# --- the smaller gaps -------------------------------------------------------------------------


def test_openai_turn_keys_refusal_audio_and_unknown_keys(tmp_path, tiny_model_dir):
    rows = [
        {"messages": [{"role": "user", "content": "How do I pick a lock?", "timestamp": "2024-05-01T10:00:00Z"},
                      {"role": "assistant", "content": None, "refusal": "I can't help with that."}]},
        {"messages": [{"role": "user", "content": "Hi", "timestamp": None},
                      {"role": "assistant", "content": "Hello", "refusal": "ignored: there is content", "mood": "cheerful"}]},
    ]
    path = write_rows(tmp_path / "chat.jsonl", *rows)
    data = load_data(path)
    assert data.records[0]["messages"][1] == assistant("I can't help with that.")
    assert data.unused_keys == ["messages[].timestamp", "messages[].refusal", "messages[].mood"]
    card = check_data(str(path), label_check=False)
    [finding] = [f for f in card.findings if "messages[].timestamp" in f.message]
    assert finding.severity == "warning" and finding.count == 0 and "messages[].mood" in finding.message
    result = invoke("data", "inspect", path, "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert "messages[].timestamp" in " ".join(result.output.replace("│", " ").split())
    audio = {"messages": [user("Say hi"), {"role": "assistant", "content": None, "audio": {"id": "audio_abc123"}}]}
    with pytest.raises(DataError, match=r"row 1 has an audio answer in message 2 .* reads text only"):
        load_data(write_rows(tmp_path / "audio.jsonl", audio))


def test_openai_dpo_input_keys_are_reported(tmp_path):
    row = {"input": {"messages": [user("Hi")], "tools": [], "parallel_tool_calls": False},
           "preferred_output": [assistant("Hello!")], "non_preferred_output": [assistant("What.")]}
    data = load_data(write_rows(tmp_path / "dpo.jsonl", row))
    assert data.format is Format.OPENAI_DPO and data.unused_keys == ["input.tools", "input.parallel_tool_calls"]


def test_trl_standard_implicit_prompt_pairs(tmp_path):
    path = write_rows(
        tmp_path / "pairs.jsonl",
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "It is blue", "rejected": "It is black"},  # they differ inside a word: no word is split
    )
    data = load_data(path)
    assert (data.format, data.task) == (Format.HH_RLHF, "preference")
    assert data.records == [
        {"prompt": [user("The sky is")], "chosen": [assistant(" blue.")], "rejected": [assistant(" green.")]},
        {"prompt": [user("It is")], "chosen": [assistant(" blue")], "rejected": [assistant(" black")]},
    ]
    with pytest.raises(DataError, match=r"row 1 has texts in 'chosen' and 'rejected' that share no opening words .* "
                                        r"--columns prompt=COL,chosen=chosen,rejected=rejected\.$"):
        load_data(write_rows(tmp_path / "none.jsonl", {"chosen": "Blue.", "rejected": "Green."}))
    hh = load_data(Path(__file__).parent / "data_files" / "hh_rlhf.jsonl")  # transcripts still split by turn
    assert hh.records[0]["prompt"] == [user("How do I bake bread?")]


def test_conflicts_without_fix_is_one_sentence_with_a_command_that_works(tmp_path, tiny_model_dir, monkeypatch):
    path = write_rows(tmp_path / "data.jsonl", *[{"messages": [user("Hi"), assistant(a)]} for a in ("Hello", "Hello", "Hey")])
    result = invoke("data", "check", path, "--conflicts", "keep-majority")
    assert_one_sentence_error(result, "--conflicts applies only with --fix")
    text = " ".join(result.output.split())
    command = text[text.index("`") + 1 : text.rindex("`")].split()
    assert command[:3] == ["tunesmith", "data", "check"]
    monkeypatch.chdir(tmp_path)
    result = invoke(*command[1:], "--model", tiny_model_dir, "--no-label-check", "--out", tmp_path / "card")
    assert (tmp_path / "data.clean.jsonl").exists(), result.output
    kept = [json.loads(line) for line in (tmp_path / "data.clean.jsonl").read_text().splitlines()]
    assert [r["messages"][1]["content"] for r in kept] == ["Hello"]
    assert_one_sentence_error(invoke("data", "check", path, "--conflicts", "newest"), "--conflicts must be one of")
