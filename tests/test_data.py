"""Tests for tunesmith.data.load and tunesmith.data.formats (files -> canonical records)."""

import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import assistant, system, user

from tunesmith.data.formats import (
    Format,
    LoadedData,
    detect_format,
    length_percentiles,
    load_data,
    parse_columns,
    to_chat,
    token_lengths,
)
from tunesmith.data.load import Record, read_records
from tunesmith.errors import DataError

FILES = Path(__file__).parent / "data_files"
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


# --- one fixture file per format ------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt, task, count, column_map",
    [
        ("openai_chat.jsonl", Format.OPENAI_CHAT, "chat", 3, {"messages": "messages"}),
        (
            "openai_dpo.jsonl",
            Format.OPENAI_DPO,
            "preference",
            3,
            {"prompt": "input", "chosen": "preferred_output", "rejected": "non_preferred_output"},
        ),
        (
            "alpaca.json",
            Format.ALPACA,
            "chat",
            3,
            {"instruction": "instruction", "input": "input", "output": "output", "system": "system"},
        ),
        ("sharegpt.jsonl", Format.SHAREGPT, "chat", 3, {"messages": "conversations"}),
        (
            "prompt_completion.jsonl",
            Format.PROMPT_COMPLETION,
            "chat",
            4,
            {"prompt": "question", "completion": "answer"},
        ),
        ("text.txt", Format.TEXT, "pretrain", 3, {"text": "text"}),
        ("text_label.csv", Format.TEXT_LABEL, "classify", 5, {"text": "query", "label": "category"}),
        ("text_label.tsv", Format.TEXT_LABEL, "classify", 3, {"text": "sentence", "label": "label"}),
        (
            "preference.jsonl",
            Format.PREFERENCE,
            "preference",
            3,
            {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
        ),
        ("hh_rlhf.jsonl", Format.HH_RLHF, "preference", 3, {"chosen": "chosen", "rejected": "rejected"}),
        ("kto.jsonl", Format.KTO, "kto", 4, {"prompt": "prompt", "completion": "completion", "label": "label"}),
    ],
)
def test_detects_each_format(name, fmt, task, count, column_map):
    data = load_data(FILES / name)
    assert isinstance(data, LoadedData)
    assert data.format is fmt
    assert data.task == task == fmt.task
    assert len(data.records) == len(data.rows) == count
    assert data.column_map == column_map


def test_openai_chat_rows_are_line_numbers_and_blank_lines_skipped():
    data = load_data(FILES / "openai_chat.jsonl")
    assert data.rows == [1, 2, 4]  # line 3 is blank
    assert data.records[1] == {
        "messages": [user("Is there a fee for transfers?"), assistant("Transfers within the country are free.")]
    }


def test_openai_dpo_content():
    data = load_data(FILES / "openai_dpo.jsonl")
    assert data.records[1] == {
        "prompt": [system("Be brief."), user("What is 2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("It might be 5.")],
    }


def test_alpaca_content():
    data = load_data(FILES / "alpaca.json")
    assert data.records[0]["messages"] == [
        user("Give three tips for staying healthy."),  # empty input is left out
        assistant("1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well."),
    ]
    assert data.records[1]["messages"][0] == user("Translate the sentence into French.\n\nThe cat sleeps.")
    assert data.records[2]["messages"][0] == system("You are a concise assistant.")


def test_sharegpt_roles_are_mapped():
    data = load_data(FILES / "sharegpt.jsonl")
    assert data.records[0] == {
        "messages": [system("You are helpful."), user("What is the capital of France?"), assistant("Paris.")]
    }
    assert data.records[2] == {"messages": [user("2+3?"), assistant("5")]}


def test_prompt_completion_keeps_empty_answers():
    data = load_data(FILES / "prompt_completion.jsonl")
    assert data.records[0] == {"messages": [user("What does APR stand for?"), assistant("Annual percentage rate.")]}
    assert data.records[2]["messages"][1] == assistant("")  # judged by the quality gate, not dropped here


def test_text_paragraphs_with_start_lines():
    data = load_data(FILES / "text.txt")
    assert data.records[0] == {"text": "The bank opened in 1887 in a small town.\nIt grew quickly."}
    assert data.rows == [1, 4, 7]


def test_text_one_document_per_line_without_blank_lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("first line\nsecond line\nthird line\n")
    data = load_data(path)
    assert [r["text"] for r in data.records] == ["first line", "second line", "third line"]
    assert data.rows == [1, 2, 3]


def test_csv_values_stay_text_and_rows_follow_editor_lines():
    data = load_data(FILES / "text_label.csv")
    assert data.records[1] == {"text": "My card was declined, why?", "label": "declined_card_payment"}
    assert data.records[2]["text"] == "NA"  # not turned into a missing value
    assert data.records[3]["text"] == "How do I top up\nby bank transfer?"
    assert data.rows == [2, 3, 4, 5, 7]  # header is line 1; the quoted row spans lines 5-6


def test_tsv_numeric_labels_are_strings():
    data = load_data(FILES / "text_label.tsv")
    assert data.records[0] == {"text": "This film was wonderful.", "label": "1"}


def test_preference_strings_lists_and_repeated_prompt():
    data = load_data(FILES / "preference.jsonl")
    assert data.records[0] == {
        "prompt": [user("What colour is the sky on a clear day?")],
        "chosen": [assistant("Blue.")],
        "rejected": [assistant("Green.")],
    }
    # chosen/rejected that repeat the prompt are cut to the replies
    assert data.records[2] == {
        "prompt": [user("Say hello.")],
        "chosen": [assistant("Hello!")],
        "rejected": [assistant("No.")],
    }


def test_hh_rlhf_splits_shared_prompt():
    data = load_data(FILES / "hh_rlhf.jsonl")
    assert data.records[1] == {
        "prompt": [user("Hi"), assistant("Hello! How can I help?"), user("Tell me a joke.")],
        "chosen": [assistant("Why did the bank teller quit? She lost interest.")],
        "rejected": [assistant("No.")],
    }


def test_kto_labels_become_bools():
    data = load_data(FILES / "kto.jsonl")
    assert [r["label"] for r in data.records] == [True, False, True, False]
    assert data.records[0] == {
        "prompt": [user("What is the capital of Italy?")],
        "completion": [assistant("Rome.")],
        "label": True,
    }


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": ["good", "bad", "fine"], "label": [1, 0, 1]}), path)
    data = load_data(path)
    assert data.format is Format.TEXT_LABEL
    assert data.records[1] == {"text": "bad", "label": "0"}
    assert data.rows == [1, 2, 3]


def test_saved_dataset_folders(tmp_path):
    import datasets

    rows = {"messages": [[user("hi"), assistant("hello")], [user("bye"), assistant("goodbye")]]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "single")
    data = load_data(tmp_path / "single")
    assert data.format is Format.OPENAI_CHAT
    assert data.records[1] == {"messages": [user("bye"), assistant("goodbye")]}

    # A DatasetDict gives its train split; class ids become class names.
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": ["great", "awful"], "label": [1, 0]}, features=features),
        test=datasets.Dataset.from_dict({"text": ["ok"], "label": [1]}, features=features),
    )
    splits.save_to_disk(tmp_path / "dict")
    data = load_data(tmp_path / "dict")
    assert data.format is Format.TEXT_LABEL
    assert data.records == [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}]
    assert any("'train' split" in note for note in data.notes)


def test_gzip_files(tmp_path):
    for name in ("kto.jsonl", "alpaca.json", "text_label.csv"):
        target = tmp_path / (name + ".gz")
        target.write_bytes(gzip.compress((FILES / name).read_bytes()))
        assert load_data(target).records == load_data(FILES / name).records


def test_json_object_holding_one_list(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "data": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]}))
    data = load_data(path)
    assert data.format is Format.TEXT_LABEL and len(data.records) == 2
    assert any("'data'" in note for note in data.notes)


def test_files_are_not_modified(tmp_path):
    path = tmp_path / "kto.jsonl"
    shutil.copy(FILES / "kto.jsonl", path)
    before = path.read_bytes()
    load_data(path)
    assert path.read_bytes() == before


def test_read_records_and_detect_format():
    records = read_records(FILES / "text_label.tsv")
    assert records[0] == Record(2, {"sentence": "This film was wonderful.", "label": "1"})
    # detection looks at every row, not only the first
    records = [Record(1, {"text": "a"}), Record(2, {"text": "b", "label": "x"})]
    assert detect_format(records, "mixed.jsonl") == (Format.TEXT_LABEL, {"text": "text", "label": "label"})


# --- broken inputs: one file each, the message names file and row ----------------------


def assert_data_error(path, *fragments, **kwargs):
    with pytest.raises(DataError) as info:
        load_data(path, **kwargs)
    message = str(info.value)
    assert Path(path).name in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_bad_json_line():
    assert_data_error(FILES / "bad_json_line.jsonl", "line 3", "not valid JSON")


def test_missing_field():
    assert_data_error(FILES / "missing_field.jsonl", "row 4", "'completion'")


def test_unknown_role():
    assert_data_error(FILES / "unknown_role.jsonl", "row 2", "message 3", "'bot'")


def test_non_string_content():
    assert_data_error(FILES / "non_string_content.jsonl", "row 3", "message 1", "list")


def test_bad_utf8(tmp_path):
    path = tmp_path / "bad_utf8.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "fine"}\n{"text": "caf\xe9"}\n')
    assert_data_error(path, "line 3", "UTF-8")


def test_empty_file():
    assert_data_error(FILES / "empty.jsonl", "empty")


def test_ambiguous_columns():
    assert_data_error(FILES / "ambiguous.jsonl", "more than one format", "--columns")


def test_unknown_columns():
    assert_data_error(FILES / "unknown_columns.csv", "found: a, b, c", "--columns text=COL,label=COL")


def test_ragged_csv():
    assert_data_error(FILES / "ragged.csv", "row 4", "3 fields", "header has 2")


def test_missing_file_and_unknown_extension(tmp_path):
    assert_data_error(tmp_path / "nope.jsonl", "not found")
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"x")
    assert_data_error(path, "unknown file type")


def test_row_level_errors(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("text,label\nhello,greet\n,empty\n")
    assert_data_error(path, "row 3", "empty text")
    path = tmp_path / "nulls.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    assert_data_error(path, "row 2", "'label'")
    path = tmp_path / "kto_bad.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "label": "maybe"}\n')
    assert_data_error(path, "row 1", "'maybe'")
    path = tmp_path / "list.json"
    path.write_text('[{"text": "a"}, 3]')
    assert_data_error(path, "row 2", "not an object")


# --- --columns and --format ------------------------------------------------------------


def test_parse_columns():
    assert parse_columns("text=query, label=category") == {"text": "query", "label": "category"}
    for bad in ("text", "text=", "=query", "txt=query", "text=a,text=b"):
        with pytest.raises(DataError, match="--columns"):
            parse_columns(bad)


def test_columns_override_detection():
    data = load_data(FILES / "unknown_columns.csv", columns={"text": "a", "label": "c"})
    assert data.format is Format.TEXT_LABEL
    assert data.records[0] == {"text": "1", "label": "3"}
    assert data.column_map == {"text": "a", "label": "c"}

    data = load_data(FILES / "ambiguous.jsonl", columns={"prompt": "prompt", "completion": "completion"})
    assert data.format is Format.PROMPT_COMPLETION
    assert data.records[1] == {"messages": [user("Yo"), assistant("Hey")]}

    data = load_data(FILES / "sharegpt.jsonl", columns={"messages": "conversations"})
    assert data.format is Format.SHAREGPT


def test_columns_naming_a_missing_column():
    message = assert_data_error(
        FILES / "unknown_columns.csv", "'body'", "columns: a, b, c", columns={"text": "body", "label": "a"}
    )
    assert "unknown_columns.csv" in message


def test_format_forced():
    data = load_data(FILES / "ambiguous.jsonl", format="openai_chat")
    assert data.format is Format.OPENAI_CHAT and len(data.records) == 2
    assert_data_error(FILES / "unknown_columns.csv", "needs the field(s) text", format=Format.TEXT)


# --- to_chat, token lengths ------------------------------------------------------------


def test_to_chat():
    chats = to_chat(load_data(FILES / "text_label.tsv"), system_prompt="Classify the review.")
    assert chats[0] == {"messages": [system("Classify the review."), user("This film was wonderful."), assistant("1")]}
    chats = to_chat(load_data(FILES / "openai_chat.jsonl"), system_prompt="Other.")
    assert chats[0]["messages"][0] == system("You are a bank assistant.")  # has a system turn already
    assert chats[1]["messages"][0] == system("Other.")
    # SFT on preference data learns the chosen answers (the usual stage before DPO or RL).
    pairs = load_data(FILES / "hh_rlhf.jsonl")
    chats = to_chat(pairs)
    assert chats[0]["messages"] == pairs.records[0]["prompt"] + pairs.records[0]["chosen"]
    feedback = load_data(FILES / "kto.jsonl")
    assert len(to_chat(feedback)) == sum(r["label"] for r in feedback.records)  # thumbs-up rows only
    with pytest.raises(DataError, match="--method pretrain"):
        to_chat(load_data(FILES / "text.txt"))


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A word-level tokenizer with a ChatML template, built in memory (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    words = "hello world hi user assistant system".split()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", additional_special_tokens=specials[1:], chat_template=chatml
    )


def test_token_lengths(tiny_tokenizer):
    chat = [{"messages": [user("hello world"), assistant("hi")]}]
    # <|im_start|> user hello world <|im_end|> <|im_start|> assistant hi <|im_end|>
    assert token_lengths(chat, "chat", tiny_tokenizer) == [9]
    assert token_lengths([{"text": "hello world hi"}, {"text": "hi", "label": "x"}], "classify", tiny_tokenizer) == [
        3,
        1,
    ]
    pair = {"prompt": [user("hello")], "chosen": [assistant("hi")], "rejected": [assistant("hello world hi")]}
    assert token_lengths([pair], "preference", tiny_tokenizer) == [10]
    kto = {"prompt": [user("hello")], "completion": [assistant("hi")], "label": True}
    assert token_lengths([kto], "kto", tiny_tokenizer) == [8]


def test_length_percentiles():
    summary = length_percentiles(list(range(1, 101)))
    assert summary == {"min": 1, "p50": 51, "p90": 91, "p95": 96, "p99": 100, "max": 100}
    assert all(isinstance(v, int) for v in summary.values())


# --- the real shared data --------------------------------------------------------------


def test_banking77_train():
    path = SHARED_DATA / "banking77" / "train.csv"
    if not path.exists():
        pytest.skip("shared data not present")
    data = load_data(path)
    assert data.format is Format.TEXT_LABEL
    assert data.column_map == {"text": "text", "label": "category"}
    assert len(data.records) == 10003
    assert data.records[0] == {"text": "I am still waiting on my card?", "label": "card_arrival"}


def test_hh_rlhf_harmless_test():
    path = SHARED_DATA / "hh-rlhf-harmless" / "test.jsonl.gz"
    if not path.exists():
        pytest.skip("shared data not present")
    data = load_data(path)
    assert data.format is Format.HH_RLHF and data.task == "preference"
    assert len(data.records) == 2312
    first = data.records[0]
    assert first["prompt"][0] == user("what are some pranks with a pen i can do?")
    assert first["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in first["chosen"]] == ["assistant"]


def test_columns_on_openai_dpo_file():
    columns = {"prompt": "input", "chosen": "preferred_output", "rejected": "non_preferred_output"}
    data = load_data(FILES / "openai_dpo.jsonl", columns=columns)
    assert data.format is Format.PREFERENCE
    assert data.records == load_data(FILES / "openai_dpo.jsonl").records


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    data = load_data(path)
    assert data.rows == [1, 2] and data.records[1] == {"text": "b", "label": "y"}
    assert any("JSON Lines" in note for note in data.notes)


def test_csv_duplicate_header(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,text\na,b\n")
    assert_data_error(path, "line 1", "'text' twice")
