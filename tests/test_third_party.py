"""Other people's data files load as their authors meant them (issue 22, "test against the world").

data_files/third_party/ holds copies of real files from LLaMA-Factory, Axolotl, Oumi, Unsloth, the
OpenAI Cookbook, Transformers and TRL's docs, and rows written in the exact shape of sources that
cannot be copied (OpenAI's fine-tuning guides, GLUE and SNLI tables, ...); its README names the
source and licence of each. Every file gives as many rows as it has, or one sentence naming the row
and the fix; every column and every key inside a turn is either used or reported; and every piece
of text in the used columns reaches the canonical records.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import assistant, system, user

from tunesmith.data.formats import (
    THINK_TEMPLATE,
    Format,
    load_data,
    parse_columns,
    to_chat,
)
from tunesmith.data.load import read_records
from tunesmith.data.quality import check_data
from tunesmith.errors import DataError
from tunesmith.train.sft import tokenize_chats

TP = Path(__file__).parent / "data_files" / "third_party"
LF = TP / "llamafactory"
W = TP / "written"

# Values that name structure rather than carry content: roles, part types, tag names.
STRUCTURE_KEYS = ("role", "from", "type")


def _texts(value, skip=STRUCTURE_KEYS) -> list[str]:
    """Every string inside a value; JSON text (tool definitions, arguments) is opened up too."""
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            return [value]
        return _texts(inner, skip) if isinstance(inner, (dict, list, str)) and inner != value else [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k not in skip for s in _texts(v, skip)]
    if isinstance(value, list):
        return [s for v in value for s in _texts(v, skip)]
    return []


def assert_nothing_lost(data, path, refused=()):
    """Rows out == rows in (less the rows refused by name); every column used or reported; every
    string of the used columns in its canonical record."""
    raw = read_records(path)
    assert data.rows == [r.row for r in raw if r.row not in refused]
    used = {column for column, use in data.column_uses() if use != "not used"}
    assert sorted(used | set(data.unused_columns)) == sorted({k for r in raw for k in r.data})
    by_row = dict(zip(data.rows, data.records))
    for source in raw:
        if source.row in refused:
            continue
        kept = "\n".join(_texts(by_row[source.row], skip=()))
        for column in used:
            for piece in _texts(source.data.get(column)):
                assert piece.strip() in kept, (path.name, source.row, column, piece[:80])


# --- every file: format, rows, what is reported -------------------------------------------------

FILES = [
    # (file, format, rows, unused columns, unused keys)
    (LF / "identity.json", Format.ALPACA, 24, [], []),
    (LF / "glaive_toolcall_en_demo.json", Format.SHAREGPT, 3, [], []),
    (LF / "v1_sft_demo.jsonl", Format.OPENAI_CHAT, 5, [], []),
    (LF / "v1_dpo_demo.jsonl", Format.HH_RLHF, 2, [], []),
    (TP / "axolotl_alpaca.json", Format.ALPACA, 2, [], []),
    (TP / "axolotl_conversation.json", Format.SHAREGPT, 1, [], []),
    (TP / "axolotl_training_flags.jsonl", Format.SHAREGPT, 1, [], ["conversations[].train", "conversations[].train_detail"]),
    (TP / "axolotl_content_parts.jsonl", Format.OPENAI_CHAT, 2, [],
     ["messages[].content[].train", "messages[].reasoning_content[].train"]),
    (TP / "oumi_oumi_format.jsonl", Format.OPENAI_CHAT, 2, ["metadata"], []),
    (TP / "oumi_alpaca_format.json", Format.ALPACA, 2, [], []),
    (TP / "unsloth_alpaca_unsloth.json", Format.ALPACA, 10, [], []),
    (TP / "unsloth_canary_dataset.jsonl", Format.PROMPT_COMPLETION, 6, [], []),
    (TP / "cookbook_toy_chat_fine_tuning.jsonl", Format.OPENAI_CHAT, 5, [], []),
    (TP / "cookbook_drone_training.jsonl", Format.OPENAI_CHAT, 3, ["parallel_tool_calls"], []),
    (TP / "transformers_sft_chat.jsonl", Format.OPENAI_CHAT, 3, [], []),
    (TP / "trl_tool_calling.jsonl", Format.OPENAI_CHAT, 1, [], []),
    (TP / "trl_harmony.jsonl", Format.OPENAI_CHAT, 1, [], []),
    (TP / "trl_stepwise.jsonl", Format.PROMPT_ONLY, 1, ["completions", "labels"], []),
    (W / "openai_chat_weight.jsonl", Format.OPENAI_CHAT, 2, [], []),
    (W / "openai_tools.jsonl", Format.OPENAI_CHAT, 2, ["parallel_tool_calls"], []),
    (W / "openai_dpo.jsonl", Format.OPENAI_DPO, 2, [], ["input.tools", "input.parallel_tool_calls"]),
    (W / "openai_rft.jsonl", Format.OPENAI_CHAT, 2, ["reference_answer"], []),
    (W / "llamafactory_v1_reason_tool_use.jsonl", Format.OPENAI_CHAT, 1, [], []),
    (W / "glue_sst2_dev.tsv", Format.TEXT_LABEL, 2, [], []),
]


@pytest.mark.parametrize(("path", "fmt", "rows", "unused_columns", "unused_keys"), FILES, ids=lambda v: getattr(v, "name", None))
def test_file_loads_with_nothing_lost(path, fmt, rows, unused_columns, unused_keys):
    data = load_data(path)
    assert data.format is fmt and len(data.records) == rows
    assert data.unused_columns == unused_columns and data.unused_keys == unused_keys
    if fmt is not Format.OPENAI_DPO:  # its input.tools are reported, not in the records
        assert_nothing_lost(data, path)


@pytest.mark.parametrize(
    ("path", "columns", "unused"),
    [
        (W / "glue_mrpc_dev.tsv", "text=#1 String+#2 String,label=Quality", ["#1 ID", "#2 ID"]),
        (W / "snli_sample.csv", "text=sentence1+sentence2,label=gold_label", ["", "annotator_labels", "captionID", "pairID"]),
        (W / "ag_news_sample.csv", "text=title+description,label=label", ["label_int"]),
        (W / "xsum_sample.jsonl", "prompt=document,completion=summary", []),
        (TP / "oumi_judge_input.jsonl", "prompt=request,completion=response", []),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_tables_without_known_columns_ask_for_them_then_load_whole(path, columns, unused):
    with pytest.raises(DataError, match=r"cannot tell which columns hold the data \(found: .*\); pass --columns"):
        load_data(path)
    data = load_data(path, columns=parse_columns(columns))
    assert data.unused_columns == unused
    assert_nothing_lost(data, path)


# --- LLaMA-Factory: its data folder as a user has it ---------------------------------------------


def test_llamafactory_folder_reads_as_dataset_info_says():
    data = load_data(LF / "identity.json")
    assert "read identity.json as its entry 'identity'" in data.notes[0]
    assert data.records[0]["messages"] == [
        user("hi"), assistant("Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?")
    ]
    glaive = load_data(LF / "glaive_toolcall_en_demo.json")
    assert glaive.column_map == {"messages": "conversations", "tools": "tools"}
    calls = [m for r in glaive.records for m in r["messages"] if m.get("tool_calls")]
    assert calls and all(m["role"] == "assistant" and m["content"] == "" for m in calls)
    assert all(r["tools"][0]["type"] == "function" for r in glaive.records if r.get("tools"))
    # images are refused by row, one sentence each, the rest of the folder unaffected
    bad = []
    assert load_data(LF / "mllm_demo.json", bad_rows=bad).records == []
    assert [row for row, _ in bad] == [1, 2, 3, 4, 5, 6]
    assert bad[0][1].startswith("has 2 images in the column 'images'; the models here read text only")


def test_llamafactory_v1_rows_loss_weight_and_pairs():
    sft = load_data(LF / "v1_sft_demo.jsonl")
    # content parts {"type": "text", "value": ...}; loss_weight 1 on the answer is its weight, 0 on
    # the user turn is what tunesmith does anyway (LLaMA-Factory learns assistant turns only)
    assert sft.records[0]["messages"] == [
        user("hi"),
        {"role": "assistant", "content": "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I "
         "assist you today?", "weight": 1},
    ]
    dpo = load_data(LF / "v1_dpo_demo.jsonl")
    assert dpo.column_map == {"chosen": "chosen_messages", "rejected": "rejected_messages"}
    record = dpo.records[0]
    assert [m["role"] for m in record["prompt"]] == ["system", "user"]
    assert record["chosen"][0]["content"].startswith("Abdulah Hasanagic is the proud owner of AS Company in Gorazde")
    assert record["chosen"] != record["rejected"]


def test_reasoning_and_tool_call_parts_reach_the_learned_text(tiny_tokenizer):
    data = load_data(W / "llamafactory_v1_reason_tool_use.jsonl")
    messages = data.records[0]["messages"]
    assert messages[2] == {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": "get_movie_details", "arguments": '{"title": "Vertigo"}'}}],
        "content": THINK_TEMPLATE.format(reasoning="I should look the film up with get_movie_details.", content=""),
    }
    assert messages[4]["content"] == (
        "<think>\nThe tool says Alfred Hitchcock.\n</think>\n\nVertigo (1958) was directed by Alfred Hitchcock."
    )
    assert data.records[0]["tools"][0]["function"]["name"] == "get_movie_details"  # tools given as JSON text
    [example] = tokenize_chats(to_chat(data), tiny_tokenizer, max_length=4096).examples
    learned = tiny_tokenizer.decode([t for t, m in zip(example["input_ids"], example["assistant_masks"]) if m])
    assert "The tool says Alfred Hitchcock." in learned and "get_movie_details" in learned


def test_trl_harmony_and_axolotl_reasoning():
    [record] = load_data(TP / "trl_harmony.jsonl").records
    assert record["messages"] == [  # "developer" is the system role; "thinking" goes before the answer
        system("Use a friendly tone."),
        user("What is the meaning of life?"),
        assistant("<think>\nDeep reflection...\n</think>\n\nThe final answer is..."),
    ]
    parts = load_data(TP / "axolotl_content_parts.jsonl").records
    assert parts[0]["messages"][1] == assistant("Let me think step by step...\n\n The answer is 4.")
    assert parts[1]["messages"][1] == assistant(
        "<think>\nHmm maybe 2+2=5.\n\n Wait no, 2+2=4.\n</think>\n\nThe answer is 4."
    )


def test_reasoning_on_a_user_turn_is_one_sentence(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi", "thinking": "hmm"}, assistant("Hello")]}) + "\n")
    with pytest.raises(DataError, match=r"row 1 has reasoning in message 1 in the column 'messages', a user turn; "
                                        r"give reasoning on assistant turns only\.$"):
        load_data(path)
    path.write_text(json.dumps({"messages": [user("Hi"), {"role": "assistant", "content": "Hi", "loss_weight": 0.5}]}) + "\n")
    with pytest.raises(DataError, match=r"row 1 has message 2 .* with the loss_weight 0\.5 on the assistant turn; .* 0 or 1"):
        load_data(path)


# --- Axolotl, OpenAI ----------------------------------------------------------------------------


def test_axolotl_single_conversation_object_is_one_row():
    data = load_data(TP / "axolotl_conversation.json")
    assert "holds one conversation, not a list of rows" in data.notes[0]
    assert data.rows == [1] and len(data.records[0]["messages"]) == 12
    assert data.records[0]["messages"][0]["content"].startswith("how could i implement a minesweeper algorithm")


def test_openai_guides_rows():
    weighted = load_data(W / "openai_chat_weight.jsonl").records[0]["messages"]
    assert [m.get("weight") for m in weighted if m["role"] == "assistant"] == [0, 1]
    tools = load_data(W / "openai_tools.jsonl").records
    assert tools[1]["messages"][2] == {"role": "tool", "content": "19.5", "tool_call_id": "call_1"}
    rft = load_data(W / "openai_rft.jsonl").records
    assert rft[0]["messages"][0] == system("Answer with one word: billing, bug or other.")
    bad = []
    vision = load_data(W / "openai_vision.jsonl", bad_rows=bad)
    assert vision.rows == [2] and bad[0][0] == 1 and "has an image part in message 3" in bad[0][1]


def test_openai_dpo_tool_call_answer_is_not_an_empty_side():
    card = check_data(str(W / "openai_dpo.jsonl"), label_check=False)
    assert card.rows == 2 and card.errors() == []
    [finding] = [f for f in card.findings if f.check == "schema"]
    assert "input.tools" in finding.message and finding.severity == "warning"


def test_alpaca_with_the_question_in_input_has_no_leading_blank_lines():
    data = load_data(TP / "unsloth_alpaca_unsloth.json")
    assert data.records[0]["messages"][0] == user("What is Unsloth?")


# --- Tables: quoting --------------------------------------------------------------------------


def test_unquoted_glue_tsv_keeps_every_row_and_its_quotes():
    data = load_data(W / "glue_mrpc_dev.tsv", columns=parse_columns("text=#1 String+#2 String,label=Quality"))
    assert data.rows == [2, 3, 4] and [r["label"] for r in data.records] == ["1", "0", "1"]
    assert data.records[0]["text"].endswith('\n\n" On Sundays the bakery opens at eight .')
    assert data.records[1]["text"].endswith('He said it was " the best rye " in town and sold out by noon .')
    assert "does not quote its values" in data.notes[0]


def test_quoted_tsv_still_reads_its_quoting(tmp_path):
    path = tmp_path / "quoted.tsv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerows([["text", "label"], ['He said "hi"', "greet"], ["two\nlines", "other"], ["a\ttab", "other"]])
    data = load_data(path)
    assert [r["text"] for r in data.records] == ['He said "hi"', "two\nlines", "a\ttab"] and data.notes == []


def test_csv_quote_that_runs_on_is_an_error_naming_the_row(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('text,label\nfine,a\n"starts quoted" then more,b\nlast,c\n')
    with pytest.raises(DataError, match=r"broken\.csv: row 3 cannot be read .* must end with one"):
        load_data(path)
