"""Detect a data file's format and convert every row to one of tunesmith's canonical shapes.

Canonical shapes (TRL's, see DESIGN.md "Canonical data shapes"):

- chat:       {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
              OpenAI chat rows keep the rest of OpenAI's fine-tuning format: "tools" on the
              row, and on messages "weight" (0 or 1, assistant), "name", "tool_calls"
              (assistant; content "" when it only calls tools) and "tool_call_id" (role
              "tool"). Legacy "functions" / "function_call" / role "function" become tools /
              tool_calls / "tool"; text content parts are joined, other parts refused.
- pretrain:   {"text": str}
- classify:   {"text": str, "label": str}
- preference: {"prompt": messages, "chosen": messages, "rejected": messages}
- kto:        {"prompt": messages, "completion": messages, "label": bool}

TRL's own dataset types load as themselves (conversational or standard): prompt-only rows
``{"prompt": ...}`` (GRPO/RLOO prompt files) become chat rows that end on a user turn;
prompt-completion, preference with an explicit or implicit prompt and unpaired preference
take message lists or strings. Flat tables name their columns the Hugging Face way
(question/answer, query/response, instruction/response, input/output, ...); an optional
context column goes into the user turn as ``"{context}\n\n{prompt}"`` so no input is lost.
Every column of the file that the conversion does not use is listed in
``LoadedData.unused_columns``.

Detection looks at every column that appears in any row. A row that does not fit the
detected format is a ``DataError`` naming the file, the row (see ``load.py`` for what the
row number means) and the reason; every other row is kept, even an empty answer: judging
content is the quality gate's job, not this module's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from tunesmith.data.load import Record, read_records
from tunesmith.errors import DataError


class Format(str, Enum):
    """An input data format that tunesmith recognises."""

    OPENAI_CHAT = "openai_chat"
    OPENAI_DPO = "openai_dpo"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    PROMPT_COMPLETION = "prompt_completion"
    PROMPT_ONLY = "prompt_only"
    TEXT = "text"
    TEXT_LABEL = "text_label"
    PREFERENCE = "preference"
    HH_RLHF = "hh_rlhf"
    KTO = "kto"

    @property
    def task(self) -> str:
        """The task this format's data trains: chat, pretrain, classify, preference or kto."""
        return TASKS[self]


TASKS = {
    Format.OPENAI_CHAT: "chat",
    Format.OPENAI_DPO: "preference",
    Format.ALPACA: "chat",
    Format.SHAREGPT: "chat",
    Format.PROMPT_COMPLETION: "chat",
    Format.PROMPT_ONLY: "chat",  # chat rows ending on a user turn: prompts for grpo/rloo
    Format.TEXT: "pretrain",
    Format.TEXT_LABEL: "classify",
    Format.PREFERENCE: "preference",
    Format.HH_RLHF: "preference",
    Format.KTO: "kto",
}

# Canonical fields of each format: (required, optional). These are the names --columns uses.
FIELDS: dict[Format, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Format.OPENAI_CHAT: (("messages",), ("tools", "functions")),
    Format.OPENAI_DPO: (("prompt", "chosen", "rejected"), ()),
    Format.ALPACA: (("instruction", "output"), ("input", "system")),
    Format.SHAREGPT: (("messages",), ()),
    Format.PROMPT_COMPLETION: (("prompt", "completion"), ("context",)),
    Format.PROMPT_ONLY: (("prompt",), ()),
    Format.TEXT: (("text",), ()),
    Format.TEXT_LABEL: (("text", "label"), ()),
    Format.PREFERENCE: (("prompt", "chosen", "rejected"), ()),
    Format.HH_RLHF: (("chosen", "rejected"), ()),
    Format.KTO: (("prompt", "completion", "label"), ()),
}
CANONICAL_FIELDS = sorted({name for required, optional in FIELDS.values() for name in required + optional})

# Column names recognised without --columns (matched case-insensitively, earlier names first).
TEXT_NAMES = ("text", "sentence", "query", "utterance", "content", "review", "tweet", "comment")
LABEL_NAMES = (
    "label",
    "labels",
    "category",
    "intent",
    "class",
    "target",
    "sentiment",
    "answer",
    "y",
    "label_text",
)
PROMPT_COMPLETION_PAIRS = (
    ("prompt", "completion"),
    ("prompt", "response"),
    ("question", "answer"),
    ("question", "response"),
    ("query", "response"),
    ("query", "answer"),
    ("instruction", "response"),
    ("input", "output"),
    ("input", "response"),
)
# An extra input column of instruction data (instruction/input/response, Dolly's context,
# SQuAD's context); it is put before the prompt in the user turn.
CONTEXT_NAMES = ("context", "passage", "input")
CONTEXT_TEMPLATE = "{context}\n\n{prompt}"

ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",  # OpenAI's legacy function-result turn
    "human": "user",
    "gpt": "assistant",
}

# OpenAI content parts: text parts are joined (in order) with this separator; any other
# part (image, audio, file) is refused, since the models trained here read text only.
TEXT_PART_TYPES = ("text", "input_text", "output_text")
PART_SEPARATOR = "\n\n"
PART_KINDS = {
    "image_url": "an image",
    "input_image": "an image",
    "image": "an image",
    "input_audio": "an audio",
    "audio": "an audio",
    "file": "a file",
    "input_file": "a file",
}

# How tool calls and tool definitions are written into the conversation when the chat
# template does not render them itself (see ``template_inputs``).
TOOLS_PREAMBLE = "You can call these tools:\n"



@dataclass
class LoadedData:
    """A data file converted to canonical records, with where each record came from."""

    path: str
    format: Format
    task: str  # "chat" | "pretrain" | "classify" | "preference" | "kto"
    records: list[dict]  # canonical rows, in file order
    rows: list[int]  # source row number of each record (same length as records)
    column_map: dict[str, str]  # canonical field -> source column, e.g. {"text": "query"}
    notes: list[str] = field(default_factory=list)  # how the file was read, for the user
    columns: list[str] = field(default_factory=list)  # every column of the file, in order of first appearance
    unused_columns: list[str] = field(default_factory=list)  # columns the conversion ignored (report them)

    def column_uses(self) -> list[tuple[str, str]]:
        """Each column of the file with what it became: a canonical field, or "not used"."""
        fields = {part: name for name, column in self.column_map.items() for part in _sources(column, self.columns)}
        return [(column, fields.get(column, "not used")) for column in self.columns]


# ---------------------------------------------------------------------------------------
# Public API


def load_data(
    path: str | Path | LoadedData,
    columns: dict[str, str] | None = None,
    format: Format | str | None = None,
    bad_rows: list[tuple[int, str]] | None = None,
) -> LoadedData:
    """Read a data file, detect its format and convert every row to the canonical shape.

    ``columns`` maps canonical fields to the file's column names (``{"text": "body",
    "label": "tag"}``) and overrides detection; ``format`` forces a format. Raises
    ``DataError`` naming the file and row when the file or a row cannot be used, unless
    ``bad_rows`` is given: then each unusable row is appended to it as ``(row, reason)``
    and left out, so the quality gate can report them all at once.

    Data already loaded (a ``LoadedData``, e.g. the training rows without the held-out test
    rows) is returned as it is, so every loader built on this accepts either.
    """
    if isinstance(path, LoadedData):
        return path
    notes: list[str] = []
    records = read_records(path, notes)
    fmt, column_map = _choose_format(records, path, columns, format)
    convert = CONVERTERS[fmt]
    canonical, rows = [], []
    for record in records:
        try:
            canonical.append(convert(record.data, column_map))
            rows.append(record.row)
        except _RowError as e:
            if bad_rows is None:
                raise DataError(f"{path}: row {record.row} {e}.") from None
            bad_rows.append((record.row, str(e)))
    keys = _all_keys(records)
    return LoadedData(
        path=str(path),
        format=fmt,
        task=fmt.task,
        records=canonical,
        rows=rows,
        column_map=column_map,
        notes=notes,
        columns=keys,
        unused_columns=[key for key in keys if not any(key in _sources(col, keys) for col in column_map.values())],
    )


def parse_columns(spec: str) -> dict[str, str]:
    """Parse a ``--columns`` value: ``"text=query,label=category"`` -> ``{"text": "query", "label": "category"}``.

    A text field may take several columns joined with ``+`` (``text=premise+hypothesis``):
    their values go to the model in that order, separated by a blank line (see ``JOINABLE``).
    """
    columns: dict[str, str] = {}
    for pair in spec.split(","):
        canonical, sep, column = (part.strip() for part in pair.partition("="))
        if not sep or not canonical or not column:
            raise DataError(
                f"--columns '{spec}' is not valid; write FIELD=COLUMN pairs separated by commas, "
                "like text=query,label=category."
            )
        if canonical not in CANONICAL_FIELDS:
            raise DataError(
                f"--columns names the unknown field '{canonical}'; use one of {', '.join(CANONICAL_FIELDS)}."
            )
        if canonical in columns:
            raise DataError(f"--columns gives the field '{canonical}' twice; give each field once.")
        if "+" in column and canonical not in JOINABLE:
            raise DataError(
                f"--columns joins columns with + for the field '{canonical}', which takes one column; join "
                f"columns only for {', '.join(sorted(JOINABLE))}."
            )
        columns[canonical] = column
    return columns


def detect_format(records: list[Record], path: str | Path) -> tuple[Format, dict[str, str]]:
    """Tell the format from the columns of all records; return it and its column map.

    Raises ``DataError`` when no format fits or when two fit equally (then ``--columns``
    decides).
    """
    keys = _all_keys(records)
    candidates = {fmt: cols for fmt, match in MATCHERS.items() if (cols := match(keys))}
    # A lone "text" column is the weakest hint (many instruction datasets carry a rendered
    # "text" column too), so it only counts when nothing more specific fits.
    if len(candidates) > 1:
        candidates.pop(Format.TEXT, None)
    # A format whose columns are a strict subset of another's is the weaker reading:
    # prompt+completion+label is KTO, not prompt_completion with an extra column.
    candidates = {
        fmt: cols
        for fmt, cols in candidates.items()
        if not any(set(cols.values()) < set(other.values()) for other in candidates.values())
    }
    if not candidates and len(keys) == 1:
        candidates = {Format.TEXT: {"text": keys[0]}}  # a file with a single column is plain text
    if not candidates:
        raise DataError(
            f"{path}: cannot tell which columns hold the data (found: {', '.join(keys)}); pass --columns, "
            "e.g. --columns text=COL,label=COL for classification or --columns prompt=COL,completion=COL "
            "for instruction data."
        )
    if len(candidates) > 1:
        fits = "; ".join(f"{fmt.value} using {', '.join(cols.values())}" for fmt, cols in candidates.items())
        choices = " or ".join(
            "--columns " + ",".join(f"{name}={col}" for name, col in cols.items()) for cols in candidates.values()
        )
        raise DataError(f"{path}: the columns fit more than one format ({fits}); pass {choices} to choose.")
    [(fmt, cols)] = candidates.items()
    if fmt is Format.OPENAI_CHAT and _uses_sharegpt_turns(records, cols["messages"]):
        fmt = Format.SHAREGPT
    return fmt, cols


def to_chat(data: LoadedData, system_prompt: str | None = None) -> list[dict]:
    """Chat records for SFT: chat data as is, text+label as user=text, assistant=label,
    preference pairs as prompt + chosen answer, KTO rows as prompt + completion where the
    label is good (SFT on the preferred answers is the usual first stage before DPO or RL).

    ``system_prompt`` is put first in every conversation that has no system turn.
    Raises ``DataError`` for pretraining data.
    """
    tools = [None] * len(data.records)
    if data.task == "chat":
        conversations = [record["messages"] for record in data.records]
        tools = [record.get("tools") for record in data.records]
    elif data.task == "classify":
        conversations = [
            [{"role": "user", "content": r["text"]}, {"role": "assistant", "content": r["label"]}] for r in data.records
        ]
    elif data.task == "preference":
        conversations = [r["prompt"] + r["chosen"] for r in data.records]
    elif data.task == "kto":
        conversations = [r["prompt"] + r["completion"] for r in data.records if r["label"]]
    else:
        raise DataError(
            f"{data.path}: supervised fine-tuning needs chat, instruction, text+label or preference data, but the "
            f"file holds {data.task} data (format {data.format.value}); train it with --method pretrain, "
            "or give a file with messages, prompt/completion or text/label columns."
        )
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [
        {"messages": (system if system and not any(m["role"] == "system" for m in conv) else []) + list(conv)}
        | ({"tools": row_tools} if row_tools else {})
        for conv, row_tools in zip(conversations, tools)
    ]


def token_lengths(records: list[dict], task: str, tokenizer) -> list[int]:
    """Token count of each canonical record as the model sees it.

    chat: the rendered chat template; pretrain/classify: the text; preference: the prompt
    with the longer of chosen/rejected; kto: prompt with completion.
    """
    if task in ("pretrain", "classify"):
        return [len(ids) for ids in tokenizer([r["text"] for r in records])["input_ids"]]
    if task == "chat":
        return [_chat_length(r["messages"], tokenizer, r.get("tools")) for r in records]
    if task == "preference":
        return [
            max(
                _chat_length(r["prompt"] + r["chosen"], tokenizer), _chat_length(r["prompt"] + r["rejected"], tokenizer)
            )
            for r in records
        ]
    if task == "kto":
        return [_chat_length(r["prompt"] + r["completion"], tokenizer) for r in records]
    if task == "prompt":  # RL prompts: the rendered prompt with the generation header
        texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in records]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    raise ValueError(f"unknown task {task!r}")


def length_percentiles(lengths: list[int]) -> dict[str, int]:
    """Summary of token lengths: min, p50, p90, p95, p99, max (percentiles rounded up)."""
    if not lengths:
        raise ValueError("length_percentiles needs at least one length")
    values = np.asarray(lengths)
    summary = {"min": int(values.min())}
    for q in (50, 90, 95, 99):
        # Rounded up: these values are used to pick a max length that fits the data.
        summary[f"p{q}"] = int(np.ceil(np.percentile(values, q)))
    summary["max"] = int(values.max())
    return summary


# ---------------------------------------------------------------------------------------
# Choosing the format


def _choose_format(records, path, columns, format) -> tuple[Format, dict[str, str]]:
    """Apply --format / --columns if given, else detect."""
    if format is None and not columns:
        return detect_format(records, path)

    keys = _all_keys(records)
    for canonical, column in (columns or {}).items():
        for part in _sources(column, keys):
            if part in keys:
                continue
            raise DataError(
                f"{path}: --columns maps {canonical} to the column '{part}', which the file does not have "
                f"(columns: {', '.join(keys)}); use one of those names."
            )
    if format is not None:
        fmt = _as_format(format)
        column_map = {**(MATCHERS[fmt](keys) or {}), **(columns or {})}
    else:
        fmt = _format_for_fields(set(columns), path)
        column_map = dict(columns)
        if fmt is Format.OPENAI_CHAT and _uses_sharegpt_turns(records, column_map["messages"]):
            fmt = Format.SHAREGPT

    required, optional = FIELDS[fmt]
    missing = [name for name in required if name not in column_map]
    if missing:
        raise DataError(
            f"{path}: format {fmt.value} needs the field(s) {', '.join(missing)}, which no column provides "
            f"(columns: {', '.join(keys)}); pass --columns {','.join(f'{m}=COL' for m in missing)}."
        )
    return fmt, {name: col for name, col in column_map.items() if name in required + optional}


def _as_format(format: Format | str) -> Format:
    try:
        return Format(format)
    except ValueError:
        raise DataError(f"unknown data format '{format}'; use one of {', '.join(f.value for f in Format)}.") from None


# The formats --columns can name by their fields. openai_dpo has the same fields as preference
# and converts the same way; sharegpt is openai_chat with {"from", "value"} turns.
FORMATS_BY_FIELDS = (
    Format.OPENAI_CHAT,
    Format.TEXT,
    Format.TEXT_LABEL,
    Format.PROMPT_COMPLETION,
    Format.PROMPT_ONLY,
    Format.KTO,
    Format.PREFERENCE,
    Format.HH_RLHF,
    Format.ALPACA,
)


def _format_for_fields(fields: set[str], path) -> Format:
    """The format whose fields are exactly the ones given to --columns."""
    for fmt in FORMATS_BY_FIELDS:
        required, optional = FIELDS[fmt]
        if set(required) <= fields <= set(required + optional):
            return fmt
    raise DataError(
        f"{path}: --columns gives the fields {', '.join(sorted(fields))}, which match no format; give "
        "text, text+label, messages, prompt, prompt+completion (+context), prompt+completion+label, prompt+chosen+rejected, "
        "chosen+rejected or instruction+output (+input, system)."
    )


def _sources(column: str, keys) -> list[str]:
    """The file columns a column-map entry reads: itself, or the parts of ``a+b`` joined with ``+``."""
    return [column] if column in keys or "+" not in column else [part.strip() for part in column.split("+")]


def _all_keys(records: list[Record]) -> list[str]:
    """Every column name that appears in any record, in order of first appearance."""
    return list(dict.fromkeys(key for record in records for key in record.data))


def _find(keys: list[str], names: str | tuple[str, ...]) -> str | None:
    """The file's column for the first of ``names`` present (exact name, then ignoring case)."""
    for name in (names,) if isinstance(names, str) else names:
        if name in keys:
            return name
        for key in keys:
            if key.lower() == name:
                return key
    return None


def _columns(keys: list[str], **wanted) -> dict[str, str] | None:
    """Map each canonical field to its column, or None if any is missing."""
    found = {canonical: _find(keys, names) for canonical, names in wanted.items()}
    return found if all(found.values()) else None


def _match_alpaca(keys):
    cols = _columns(keys, instruction="instruction", output="output")
    if cols:
        cols.update({name: col for name in ("input", "system") if (col := _find(keys, name))})
    return cols


def _match_prompt_completion(keys):
    for prompt, completion in PROMPT_COMPLETION_PAIRS:
        if cols := _columns(keys, prompt=prompt, completion=completion):
            if context := _find([k for k in keys if k not in cols.values()], CONTEXT_NAMES):
                cols["context"] = context
            return cols
    return None


def _match_openai_chat(keys):
    cols = _columns(keys, messages="messages")
    if cols:  # row-level tool definitions (and the legacy "functions") belong to the chat
        cols.update({name: col for name in ("tools", "functions") if (col := _find(keys, name))})
    return cols


MATCHERS = {
    Format.OPENAI_CHAT: _match_openai_chat,
    Format.OPENAI_DPO: lambda k: _columns(
        k, prompt="input", chosen="preferred_output", rejected="non_preferred_output"
    ),
    Format.ALPACA: _match_alpaca,
    Format.SHAREGPT: lambda k: _columns(k, messages="conversations"),
    Format.PROMPT_COMPLETION: _match_prompt_completion,
    Format.PROMPT_ONLY: lambda k: _columns(k, prompt="prompt"),
    Format.TEXT: lambda k: _columns(k, text="text"),
    Format.TEXT_LABEL: lambda k: _columns(k, text=TEXT_NAMES, label=LABEL_NAMES),
    Format.PREFERENCE: lambda k: _columns(k, prompt="prompt", chosen="chosen", rejected="rejected"),
    Format.HH_RLHF: lambda k: _columns(k, chosen="chosen", rejected="rejected"),
    Format.KTO: lambda k: _columns(k, prompt="prompt", completion="completion", label="label"),
}


def _uses_sharegpt_turns(records: list[Record], column: str) -> bool:
    """True if the first turn found in ``column`` is ShareGPT-style ({"from", "value"})."""
    for record in records:
        turns = record.data.get(column)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return "from" in turns[0] and "role" not in turns[0]
    return False


# ---------------------------------------------------------------------------------------
# Converting rows. Each converter takes a raw row and the column map and returns the
# canonical record, or raises _RowError with the reason (load_data adds file and row).


class _RowError(Exception):
    """Why a row does not fit its format; completes the sentence "FILE: row N ..."."""


# Fields whose value is text that may be joined from several columns (--columns text=a+b).
JOINABLE = frozenset({"text", "prompt", "context", "instruction", "input", "system"})
JOIN_SEPARATOR = "\n\n"


def _raw(row: dict, column: str):
    """The row's value in ``column``, or the joined text of the columns ``a+b``."""
    if column not in row and "+" in column:
        return _joined(row, column)
    return row.get(column)


def _value(row: dict, cols: dict, name: str):
    column = cols[name]
    value = _raw(row, column)
    if value is None:
        raise _RowError(f"has no value in the column '{column}'; fill it in or remove the row")
    return value


def _joined(row: dict, column: str) -> str | None:
    """The non-empty values of the columns ``a+b+...`` joined by a blank line; None if all are empty."""
    parts = []
    for part in _sources(column, ()):
        value = row.get(part)
        if value is not None and not isinstance(value, str):
            raise _RowError(f"has a {type(value).__name__} in the column '{part}' where text is expected; make it a string")
        if value and value.strip():
            parts.append(value)
    return JOIN_SEPARATOR.join(parts) if parts else None


def _string(row: dict, cols: dict, name: str) -> str:
    value = _value(row, cols, name)
    if not isinstance(value, str):
        raise _RowError(
            f"has a {type(value).__name__} in the column '{cols[name]}' where text is expected; make it a string"
        )
    return value


def _nonempty_text(row: dict, cols: dict, name: str) -> str:
    text = _string(row, cols, name)
    if not text.strip():
        raise _RowError(f"has empty text in the column '{cols[name]}'; fill it in or remove the row")
    return text


def _optional_string(row: dict, cols: dict, name: str) -> str:
    return _string(row, cols, name) if name in cols and _raw(row, cols[name]) is not None else ""


def _messages(value, column: str, default_role: str) -> list[dict]:
    """A string (one turn by ``default_role``) or a list of turns, as canonical messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise _RowError(f"has no list of messages in the column '{column}'; give a non-empty list of turns")
    return [_turn(turn, i, column) for i, turn in enumerate(value, start=1)]


def _turn(turn, number: int, column: str) -> dict:
    """One turn, OpenAI style {"role", "content"} or ShareGPT style {"from", "value"}.

    OpenAI's fine-tuning fields are kept: ``weight`` (0 or 1, assistant turns), ``name``,
    ``tool_calls`` (assistant), ``tool_call_id`` (tool turns); the legacy ``function_call``
    becomes ``tool_calls`` and the legacy ``function`` role becomes ``tool``. Content given
    as a list of parts is the text of its text parts; any other part is refused. An
    assistant turn that only calls tools (content null) gets the content "".
    """
    where = f"message {number} in the column '{column}'"
    if not isinstance(turn, dict):
        raise _RowError(f'has {where} that is not an object; write each turn as {{"role": ..., "content": ...}}')
    sharegpt = "role" not in turn and "from" in turn
    role = turn.get("from" if sharegpt else "role")
    content = turn.get("value" if sharegpt else "content")
    if not isinstance(role, str) or role not in ROLES:  # a list or object as role is not hashable
        raise _RowError(
            f"has {where} with the unknown role {_short_repr(role)}; use system, user, assistant or tool "
            "(human or gpt in ShareGPT)"
        )
    role = ROLES[role]
    message: dict = {"role": role}
    if not sharegpt:
        calls = _tool_calls(turn, role, where)
        if calls:
            message["tool_calls"] = calls
    if isinstance(content, list):
        content = _content_parts(content, where)
    if content is None and "tool_calls" in message:
        content = ""  # a turn that only calls tools
    if content is None:
        raise _RowError(f'has {where} with no content; give every turn a "content" string')
    if not isinstance(content, str):
        raise _RowError(f"has {where} whose content is a {type(content).__name__}, not text; make the content a string")
    message["content"] = content
    if sharegpt:
        return message
    if turn.get("name") is not None:
        if not isinstance(turn["name"], str):
            raise _RowError(f"has {where} whose name is a {type(turn['name']).__name__}; make the name a string")
        message["name"] = turn["name"]
    if turn.get("tool_call_id") is not None:
        if role != "tool" or not isinstance(turn["tool_call_id"], str):
            raise _RowError(
                f"has {where} with a tool_call_id on the {role} turn or not as text; give tool_call_id "
                "as a string on tool turns only"
            )
        message["tool_call_id"] = turn["tool_call_id"]
    if "weight" in turn:
        weight = turn["weight"]
        if role != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
            raise _RowError(
                f"has {where} with the weight {_short_repr(weight)} on the {role} turn; OpenAI's weight is 0 or 1 "
                "on assistant turns only, so use 0 (context, not learned) or 1 (learned) there or remove it"
            )
        message["weight"] = int(weight)
    return message


def _content_parts(parts: list, where: str) -> str:
    """The text of OpenAI content parts, joined in order; a non-text part is an error."""
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PART_TYPES and isinstance(part.get("text"), str):
            texts.append(part["text"])
            continue
        if not isinstance(kind, str) or kind in TEXT_PART_TYPES:
            raise _RowError(
                f"has {where} whose content is a list with the part {_short_repr(part)}, which is not an OpenAI "
                'content part; give the content as a string or a list of {"type": "text", "text": ...} parts'
            )
        what = PART_KINDS.get(kind, f"a {_short_repr(kind)}")
        raise _RowError(
            f"has {what} part in {where}; this model reads text only, so give the content as text "
            '(a string or {"type": "text", "text": ...} parts) or remove the row'
        )
    return PART_SEPARATOR.join(texts)


def _tool_calls(turn: dict, role: str, where: str) -> list[dict]:
    """An assistant turn's tool calls (OpenAI's ``tool_calls`` or the legacy ``function_call``)."""
    calls, legacy = turn.get("tool_calls"), turn.get("function_call")
    if calls is None and legacy is None:
        return []
    if role != "assistant" or (calls is not None and legacy is not None):
        raise _RowError(
            f"has {where} with tool calls on the {role} turn or with both tool_calls and function_call; "
            "give tool calls on assistant turns only, in one of the two fields"
        )
    if legacy is not None:
        calls = [{"type": "function", "function": legacy}]
    if not isinstance(calls, list) or not all(_is_function(c.get("function") if isinstance(c, dict) else None) for c in calls):
        raise _RowError(
            f"has {where} with tool calls that are not a list of "
            '{"type": "function", "function": {"name": ..., "arguments": ...}}; write them the way OpenAI does'
        )
    return calls


def _is_function(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str) and bool(value["name"])


def _row_tools(row: dict, cols: dict) -> list[dict]:
    """A chat row's tool definitions: OpenAI's ``tools`` or the legacy ``functions``."""
    tools = []
    for name in ("tools", "functions"):
        value = row.get(cols[name]) if name in cols else None
        if value is None:
            continue
        if name == "functions" and isinstance(value, list):
            value = [{"type": "function", "function": f} for f in value]
        if not isinstance(value, list) or not all(isinstance(t, dict) and _is_function(t.get("function")) for t in value):
            raise _RowError(
                f"has tool definitions in the column '{cols[name]}' that are not a list of "
                '{"type": "function", "function": {"name": ..., "parameters": ...}}; write them the way OpenAI does'
            )
        tools += value
    return tools


def _short_repr(value) -> str:
    """A value from the file for an error message: its repr, cut to keep the sentence short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _prompt(value, column: str) -> list[dict]:
    """A prompt: a string, a list of turns, or OpenAI's DPO input object {"messages": [...]}."""
    if isinstance(value, dict) and "messages" in value:
        value, column = value["messages"], f"{column}.messages"
    messages = _messages(value, column, "user")
    if messages[-1]["role"] != "user":
        raise _RowError(
            f"has a prompt in the column '{column}' that ends with a {messages[-1]['role']} turn; "
            "end it with a user turn"
        )
    return messages


def _label(row: dict, cols: dict) -> str:
    value = _value(row, cols, "label")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 3.0 (e.g. from a Parquet float column) is the class "3"
    if not isinstance(value, (str, int, float)):
        raise _RowError(
            f"has a {type(value).__name__} as label in the column '{cols['label']}'; make it a string or number"
        )
    if not str(value).strip():
        raise _RowError(f"has an empty label in the column '{cols['label']}'; fill it in or remove the row")
    return str(value)


def _kto_label(row: dict, cols: dict) -> bool:
    value = _value(row, cols, "label")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)) and str(value).strip().lower() in ("true", "1"):
        return True
    if isinstance(value, (int, str)) and str(value).strip().lower() in ("false", "0"):
        return False
    raise _RowError(
        f"has the label {_short_repr(value)} in the column '{cols['label']}'; use true or false (or 1 or 0)"
    )


def _convert_chat(row, cols):
    record = {"messages": _messages(_value(row, cols, "messages"), cols["messages"], "user")}
    if tools := _row_tools(row, cols):
        record["tools"] = tools
    return record


def _convert_alpaca(row, cols):
    instruction = _string(row, cols, "instruction")
    extra_input = _optional_string(row, cols, "input")
    system = _optional_string(row, cols, "system")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra_input}" if extra_input else instruction})
    messages.append({"role": "assistant", "content": _string(row, cols, "output")})
    return {"messages": messages}


def _convert_prompt_completion(row, cols):
    prompt = _prompt(_value(row, cols, "prompt"), cols["prompt"])
    context = _optional_string(row, cols, "context")
    if context:  # the context goes into the (last) user turn, before the question
        prompt[-1] = {"role": "user", "content": CONTEXT_TEMPLATE.format(context=context, prompt=prompt[-1]["content"])}
    completion = _messages(_value(row, cols, "completion"), cols["completion"], "assistant")
    return {"messages": prompt + completion}


def _convert_prompt_only(row, cols):
    return {"messages": _prompt(_value(row, cols, "prompt"), cols["prompt"])}


def _convert_text(row, cols):
    return {"text": _nonempty_text(row, cols, "text")}


def _convert_text_label(row, cols):
    return {"text": _nonempty_text(row, cols, "text"), "label": _label(row, cols)}


def _convert_preference(row, cols):
    prompt = _prompt(_value(row, cols, "prompt"), cols["prompt"])
    chosen = _messages(_value(row, cols, "chosen"), cols["chosen"], "assistant")
    rejected = _messages(_value(row, cols, "rejected"), cols["rejected"], "assistant")
    # Some datasets (e.g. UltraFeedback) repeat the prompt at the start of chosen/rejected.
    if chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
        chosen, rejected = chosen[len(prompt) :], rejected[len(prompt) :]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _convert_hh_rlhf(row, cols):
    """Two whole conversations; the shared part up to the last common user turn is the prompt."""
    chosen = _dialogue(_value(row, cols, "chosen"), cols["chosen"])
    rejected = _dialogue(_value(row, cols, "rejected"), cols["rejected"])
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared - 1]["role"] != "user":
        shared -= 1  # the prompt ends with the last shared user turn
    if shared == 0:
        raise _RowError(
            f"has conversations in '{cols['chosen']}' and '{cols['rejected']}' that share no opening Human turn; "
            "start both with the same prompt"
        )
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


_SPEAKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def _dialogue(value, column: str) -> list[dict]:
    """A "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript (or a list of turns) as messages."""
    if not isinstance(value, str):
        return _messages(value, column, "assistant")
    parts = _SPEAKER.split(value)  # [text before the first speaker, speaker, text, speaker, text, ...]
    if len(parts) < 3 or parts[0].strip():
        raise _RowError(
            f"has text in the column '{column}' that is not a transcript starting with \"Human:\"; "
            'write it as "\\n\\nHuman: ...\\n\\nAssistant: ..."'
        )
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": text.strip()} for speaker, text in zip(parts[1::2], parts[2::2])]


def _convert_kto(row, cols):
    prompt = _prompt(_value(row, cols, "prompt"), cols["prompt"])
    completion = _messages(_value(row, cols, "completion"), cols["completion"], "assistant")
    return {"prompt": prompt, "completion": completion, "label": _kto_label(row, cols)}


CONVERTERS = {
    Format.OPENAI_CHAT: _convert_chat,
    Format.SHAREGPT: _convert_chat,
    Format.OPENAI_DPO: _convert_preference,
    Format.ALPACA: _convert_alpaca,
    Format.PROMPT_COMPLETION: _convert_prompt_completion,
    Format.PROMPT_ONLY: _convert_prompt_only,
    Format.TEXT: _convert_text,
    Format.TEXT_LABEL: _convert_text_label,
    Format.PREFERENCE: _convert_preference,
    Format.HH_RLHF: _convert_hh_rlhf,
    Format.KTO: _convert_kto,
}


# ---------------------------------------------------------------------------------------
# Token lengths


def template_inputs(messages: list[dict], tools: list[dict] | None, tokenizer) -> tuple[list[dict], list[dict] | None]:
    """The messages and tools to give ``tokenizer.apply_chat_template`` for a canonical chat.

    A conversation without tools or tool calls goes as it is. Otherwise tool calls go to
    the template (arguments as objects, as Hugging Face templates expect) when it renders
    them, that is when the rendered text names each called function; if it does not, each
    assistant turn's calls are written as JSON text ``[{"name": ..., "arguments": ...}]``
    after its content, and tool turns keep their result as content. Tool definitions go to
    the template when it renders them (the text changes with ``tools``); if not, they are
    written as JSON after ``TOOLS_PREAMBLE`` in the system turn (one is added first if the
    conversation has none).
    """
    if not tools and not any(m.get("tool_calls") for m in messages):
        return messages, None
    templated = [{**m, "tool_calls": [_template_call(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]
    names = [c["function"]["name"] for m in messages for c in m.get("tool_calls") or []]
    plain = _render_or_none(tokenizer, templated, None)
    if plain is None or not all(name in plain for name in names):
        templated = [_serialised_calls(m) for m in messages]
    if tools and _render_or_none(tokenizer, templated, tools) in (None, _render_or_none(tokenizer, templated, None)):
        listing = TOOLS_PREAMBLE + json.dumps([t["function"] for t in tools], ensure_ascii=False)
        if templated[0]["role"] == "system":
            templated = [{**templated[0], "content": f"{templated[0]['content']}\n\n{listing}"}] + templated[1:]
        else:
            templated = [{"role": "system", "content": listing}] + templated
        tools = None
    return templated, tools or None


def _render_or_none(tokenizer, messages, tools) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception:  # noqa: BLE001 - any template error (jinja, TypeError on None, a raise_exception) means: fall back to text
        return None


def _template_call(call: dict) -> dict:
    """A tool call for a chat template: arguments as an object when the file gives JSON text."""
    function = dict(call["function"])
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except ValueError:
            pass
    return {**call, "function": function}


def _serialised_calls(message: dict) -> dict:
    """An assistant turn with its tool calls written as JSON text after its content."""
    if not message.get("tool_calls"):
        return message
    calls = [_template_call(c)["function"] for c in message["tool_calls"]]
    text = json.dumps([{"name": c["name"], "arguments": c.get("arguments")} for c in calls], ensure_ascii=False)
    content = f"{message['content']}\n{text}" if message["content"] else text
    return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": content}


def _chat_length(messages: list[dict], tokenizer, tools: list[dict] | None = None) -> int:
    messages, tools = template_inputs(messages, tools, tokenizer)
    ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)
    # transformers 5 returns a BatchEncoding (a mapping) here; older versions a list of ids.
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return len(ids)
