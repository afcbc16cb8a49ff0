"""Detect a data file's format and convert every row to one of tunesmith's canonical shapes.

Canonical shapes (TRL's, see DESIGN.md "Canonical data shapes"):

- chat:       {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
              OpenAI chat rows keep the rest of OpenAI's fine-tuning format: "tools" on the
              row, and on messages "weight" (0 or 1, assistant), "name", "tool_calls"
              (assistant; content "" when it only calls tools) and "tool_call_id" (role
              "tool"). Legacy "functions" / "function_call" / role "function" become tools /
              tool_calls / "tool"; text content parts are joined, other parts refused. An
              assistant turn with no content but a "refusal" says that refusal. The role
              "developer" (OpenAI's newer name for the system role) is a system turn.
              An assistant turn's reasoning ("reasoning_content", TRL's "thinking" or
              LLaMA-Factory v1's "reasoning" parts) is kept in its content as
              "<think>\n{reasoning}\n</think>\n\n{answer}", the way reasoning models write it.
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
``LoadedData.unused_columns``, and every key inside a turn that it does not read (like
``messages[].timestamp``) in ``LoadedData.unused_keys``.

LLaMA-Factory's formats (its data/README.md) load too: alpaca with ``history`` ([instruction,
response] pairs before the current turn) and ``system``, and as preference data (``chosen``/
``rejected`` strings) or KTO data (a boolean ``kto_tag``); sharegpt with the roles human, gpt,
observation (a tool turn), function_call (JSON text ``{"name", "arguments"}``, an assistant turn
with OpenAI-style tool_calls) and system, a row-level ``system`` and ``tools`` (JSON text of
function definitions, made OpenAI's ``{"type": "function", "function": ...}``), and as
preference data (``chosen``/``rejected`` turns) or KTO data. Its v1 rows (``messages`` whose content
is a list of ``{"type": "text"|"reasoning"|"tool_call", "value": ...}`` parts, a ``loss_weight`` of 0
or 1 per turn, preference pairs as ``chosen_messages``/``rejected_messages``) read as OpenAI chat rows
and implicit-prompt pairs. A ``dataset_info.json`` beside the
file whose entry names it decides the format, columns and role tags (``--columns`` or a given
format still win). Images, videos and audios (columns or ``<image>`` placeholders) are refused by row:
the models here read text only.

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
from functools import partial
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
    # LLaMA-Factory's ranking and kto_tag variants of its alpaca and sharegpt formats
    ALPACA_PREFERENCE = "alpaca_preference"
    ALPACA_KTO = "alpaca_kto"
    SHAREGPT_PREFERENCE = "sharegpt_preference"
    SHAREGPT_KTO = "sharegpt_kto"

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
    Format.ALPACA_PREFERENCE: "preference",
    Format.ALPACA_KTO: "kto",
    Format.SHAREGPT_PREFERENCE: "preference",
    Format.SHAREGPT_KTO: "kto",
}

# Canonical fields of each format: (required, optional). These are the names --columns uses.
FIELDS: dict[Format, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Format.OPENAI_CHAT: (("messages",), ("tools", "functions", "system")),
    Format.OPENAI_DPO: (("prompt", "chosen", "rejected"), ()),
    Format.ALPACA: (("instruction", "output"), ("input", "system", "history", "tools")),
    Format.SHAREGPT: (("messages",), ("system", "tools")),
    Format.PROMPT_COMPLETION: (("prompt", "completion"), ("context",)),
    Format.PROMPT_ONLY: (("prompt",), ()),
    Format.TEXT: (("text",), ()),
    Format.TEXT_LABEL: (("text", "label"), ()),
    Format.PREFERENCE: (("prompt", "chosen", "rejected"), ()),
    Format.HH_RLHF: (("chosen", "rejected"), ()),
    Format.KTO: (("prompt", "completion", "label"), ()),
    Format.ALPACA_PREFERENCE: (("instruction", "chosen", "rejected"), ("input", "system", "history")),
    Format.ALPACA_KTO: (("instruction", "output", "kto_tag"), ("input", "system", "history")),
    Format.SHAREGPT_PREFERENCE: (("messages", "chosen", "rejected"), ("system",)),
    Format.SHAREGPT_KTO: (("messages", "kto_tag"), ("system",)),
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
    "observation": "tool",  # LLaMA-Factory's tool result
    "function_call": "function_call",  # LLaMA-Factory's call: an assistant turn whose content is the call's JSON
    "developer": "system",  # OpenAI's name for the system role since its o1 models (reinforcement fine-tuning rows)
}
FUNCTION_CALL = "function_call"
# The keys of an OpenAI turn the conversion reads besides role and content ("refusal" only
# where it becomes the content, "audio" to refuse it; LLaMA-Factory v1's "loss_weight" and the
# reasoning keys of Hugging Face templates); any other key is reported unread.
REASONING_KEYS = ("reasoning_content", "thinking")
OPENAI_TURN_KEYS = frozenset(
    {"name", "tool_calls", "tool_call_id", "weight", "loss_weight", "function_call", "audio", *REASONING_KEYS}
)
# Reasoning goes before the answer in the assistant's content, as reasoning models write it
# (Qwen3's and DeepSeek-R1's templates read it back from there; other templates see it as text).
THINK_TEMPLATE = "<think>\n{reasoning}\n</think>\n\n{content}"
# Fields whose values are turns: their unread keys are collected into LoadedData.unused_keys.
MESSAGE_FIELDS = ("messages", "prompt", "completion", "chosen", "rejected")

# OpenAI content parts: text parts are joined (in order) with this separator; any other
# part (image, audio, file) is refused, since the models trained here read text only. The text
# is under "text" (OpenAI), "value" (LLaMA-Factory v1) or "content" (Oumi); LLaMA-Factory v1
# also has "reasoning" parts and "tool_call" parts (JSON text of {"name", "arguments"}).
TEXT_PART_TYPES = ("text", "input_text", "output_text")
PART_TEXT_KEYS = ("text", "value", "content")
PART_SEPARATOR = "\n\n"
PART_KINDS = {
    "image_url": "an image",
    "video_url": "a video",
    "audio_url": "an audio",
    "input_image": "an image",
    "image": "an image",
    "input_audio": "an audio",
    "audio": "an audio",
    "file": "a file",
    "input_file": "a file",
}

# Media inputs (LLaMA-Factory's column names and placeholders): refused by row, since the
# models trained here read text only and dropping them would change what a row says.
MEDIA_COLUMNS = {"images": "image", "videos": "video", "audios": "audio"}
_PLACEHOLDER = re.compile(r"<(image|video|audio)>")

# LLaMA-Factory's dataset list (data/README.md): an entry whose "file_name" is the data file
# says how to read it. An entry with one of REMOTE_KEYS loads from elsewhere, not that file.
DATASET_INFO = "dataset_info.json"
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# Its "columns" names -> tunesmith's fields, and the columns it reads when "columns" is absent.
LF_FIELDS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
               "system": "system", "tools": "tools", "chosen": "chosen", "rejected": "rejected", "kto_tag": "kto_tag"},
    "sharegpt": {"messages": "messages", "system": "system", "tools": "tools", "chosen": "chosen",
                 "rejected": "rejected", "kto_tag": "kto_tag"},
}
LF_DEFAULT_COLUMNS = {"alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
                      "sharegpt": {"messages": "conversations"}}
# Its "tags" with their defaults, and the role each role tag stands for.
LF_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
           "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
LF_TAG_ROLES = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "tool",
                "function_tag": FUNCTION_CALL, "system_tag": "system"}

# How tool calls and tool definitions are written into the conversation when the chat
# template does not render them itself (see ``template_inputs``).
TOOLS_PREAMBLE = "You can call these tools:\n"


@dataclass
class Tags:
    """How a file's turns name their role and content, and which role each role value is
    (LLaMA-Factory's "tags" in dataset_info.json)."""

    role: str = "from"
    content: str = "value"
    roles: dict[str, str] = field(default_factory=dict)  # role value -> user|assistant|tool|system|function_call


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
    unused_keys: list[str] = field(default_factory=list)  # keys inside turns it did not read, e.g. "messages[].timestamp"

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
    keys = _all_keys(records)
    media = {key: kind for key, kind in MEDIA_COLUMNS.items() if key in keys}
    tags = None
    entry = _dataset_info_entry(Path(path), notes)
    if entry and (columns or format):
        given = "--columns says" if columns else f"the format {_as_format(format).value} was given, which says"
        notes.append(f"{DATASET_INFO}: the entry '{entry[0]}' is not applied, since {given} how to read the file.")
    if entry and not (columns or format):
        fmt, column_map, tags, mapped_media = _dataset_info_format(*entry, keys, Path(path), notes)
        media.update(mapped_media)
    else:
        fmt, column_map = _choose_format(records, path, columns, format)
    convert = CONVERTERS[fmt]
    if tags is not None:  # only the sharegpt converters read turns under the entry's tags
        convert = partial(convert, tags=tags)
    used = [part for column in column_map.values() for part in _sources(column, keys)]
    # Placeholders are looked for in conversations only, where LLaMA-Factory puts them: in a
    # document or a text to classify "<image>" is more likely HTML or code than a media slot.
    placeholders = used if fmt.task in ("chat", "preference", "kto") else []
    canonical, rows = [], []
    for record in records:
        try:
            _refuse_media(record.data, media, placeholders)
            canonical.append(convert(record.data, column_map))
            rows.append(record.row)
        except _RowError as e:
            if bad_rows is None:
                raise DataError(f"{path}: row {record.row} {e}.") from None
            bad_rows.append((record.row, str(e)))
    return LoadedData(
        path=str(path),
        format=fmt,
        task=fmt.task,
        records=canonical,
        rows=rows,
        column_map=column_map,
        notes=notes,
        columns=keys,
        unused_columns=[key for key in keys if key not in used],
        unused_keys=_unread_keys(records, column_map, tags),
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
    # Conversations with a boolean "label" are unpaired feedback (LLaMA-Factory's kto_en_demo);
    # a label of any other kind (a topic, a category) stays an unused column.
    label = _find(keys, "label")
    if fmt in (Format.OPENAI_CHAT, Format.SHAREGPT) and label and _all_booleans(records, label):
        fmt, cols = Format.SHAREGPT_KTO, {name: col for name, col in cols.items() if name in ("messages", "system")}
        cols["kto_tag"] = label
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


def _dataset_info_entry(path: Path, notes: list[str]) -> tuple[str, dict] | None:
    """The entry of a LLaMA-Factory ``dataset_info.json`` beside the file that names the file, if any."""
    info_path = path.parent / DATASET_INFO
    if path.is_dir() or not info_path.is_file():  # a saved datasets folder has its own dataset_info.json
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # a UnicodeDecodeError is a ValueError
        notes.append(f"{info_path} cannot be read ({e}); the format was detected from the columns instead.")
        return None
    names = [
        name for name, entry in (info.items() if isinstance(info, dict) else ())
        if isinstance(entry, dict) and _names_file(entry, path)
    ]
    if len(names) > 1:
        notes.append(f"{DATASET_INFO}: the entries {', '.join(names)} all name {path.name}; using the first, '{names[0]}'.")
    return (names[0], info[names[0]]) if names else None


def _names_file(entry: dict, path: Path) -> bool:
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or any(key in entry for key in REMOTE_KEYS):
        return False
    try:
        return (path.parent / file_name).resolve() == path.resolve()
    except (OSError, ValueError):  # a name the file system cannot take (a NUL byte) names no file
        return False


def _dataset_info_format(
    name: str, entry: dict, keys: list[str], path: Path, notes: list[str]
) -> tuple[Format, dict[str, str], Tags | None, dict[str, str]]:
    """The format, column map, role tags and media columns a dataset_info.json entry gives.

    As in LLaMA-Factory, an entry with "columns" reads only the columns it names (without,
    alpaca reads instruction/input/output and sharegpt conversations); "ranking" makes
    preference data and a kto_tag column KTO data; alpaca naming no response is pretraining
    text (its prompt, and query if named). Raises ``DataError`` naming the entry when it is
    malformed or names a column the file does not have.
    """
    where = f"{path.parent / DATASET_INFO}: the entry '{name}'"
    formatting = entry.get("formatting", "alpaca")
    if formatting == "openai":  # LLaMA-Factory's openai formatting reads like sharegpt with role/content turns
        formatting = "sharegpt"
    if formatting not in LF_FIELDS:
        raise DataError(f"{where} has the formatting {_short_repr(formatting)}; use alpaca or sharegpt.")
    lf_columns = entry.get("columns", LF_DEFAULT_COLUMNS[formatting])
    lf_tags = entry.get("tags", {})
    for what, value in (("columns", lf_columns), ("tags", lf_tags)):
        if not isinstance(value, dict) or not all(isinstance(v, str) or v is None for v in value.values()):
            raise DataError(f'{where} has "{what}" that is not an object of names; write it as {{"name": "column", ...}}.')
    mapped = {field: lf_columns[lf] for lf, field in LF_FIELDS[formatting].items() if lf_columns.get(lf)}
    media = {lf_columns[lf]: kind for lf, kind in MEDIA_COLUMNS.items() if lf_columns.get(lf)}
    if "columns" not in entry:  # the default columns count where the file has them
        mapped = {field: column for field, column in mapped.items() if column in keys}
    for column in [*mapped.values(), *media]:
        if column not in keys:
            raise DataError(
                f"{where} names the column '{column}', which {path.name} does not have (columns: {', '.join(keys)}); "
                "fix the entry's columns."
            )
    fmt = _lf_format(formatting, mapped, entry.get("ranking") is True)
    if fmt is Format.TEXT:  # the prompt, and the query after it, are the document
        parts = [mapped[field] for field in ("instruction", "input") if field in mapped]
        mapped = {"text": "+".join(parts)} if "instruction" in mapped else {}
    required, optional = FIELDS[fmt]
    missing = [f for f in required if f not in mapped]
    if missing:
        lf_names = {field: lf for lf, field in LF_FIELDS[formatting].items()} | {"text": "prompt"}
        raise DataError(
            f"{where} is {fmt.value} data but names no column for {', '.join(lf_names.get(f, f) for f in missing)}; "
            "add it to the entry's columns."
        )
    tags = None
    if formatting == "sharegpt" and "tags" in entry:
        names = {**LF_TAGS, **{k: v for k, v in lf_tags.items() if v}}
        tags = Tags(names["role_tag"], names["content_tag"], {names[tag]: role for tag, role in LF_TAG_ROLES.items()})
    column_map = {f: col for f, col in mapped.items() if f in required + optional}
    read = ", ".join(f"{f}={col}" for f, col in column_map.items())
    extra = f"; role tags: {tags.role}/{tags.content} with {', '.join(tags.roles)}" if tags else ""
    if entry.get("num_samples"):
        extra += f"; its num_samples ({entry['num_samples']}) is not applied: every row is read"
    notes.append(f"{DATASET_INFO}: read {path.name} as its entry '{name}' ({fmt.value}: {read}{extra}).")
    return fmt, column_map, tags, media


def _lf_format(formatting: str, mapped: dict[str, str], ranking: bool) -> Format:
    """The format of a dataset_info.json entry with these fields mapped."""
    if formatting == "sharegpt":
        return Format.SHAREGPT_KTO if "kto_tag" in mapped else Format.SHAREGPT_PREFERENCE if ranking else Format.SHAREGPT
    if "kto_tag" in mapped:
        return Format.ALPACA_KTO
    if ranking:
        return Format.ALPACA_PREFERENCE
    return Format.ALPACA if "output" in mapped else Format.TEXT  # LLaMA-Factory's pretraining text is a prompt alone


def _refuse_media(row: dict, media: dict[str, str], placeholders: list[str]) -> None:
    """Refuse a row with images, videos or audios (in a media column, or as placeholders in
    the columns ``placeholders``): the models trained here read text only."""
    for column, kind in media.items():
        value = row.get(column)
        if value is not None and value != "" and value != [] and value != {}:
            count = len(value) if isinstance(value, list) else 1
            raise _RowError(
                f"has {count} {kind}{'s' if count > 1 else ''} in the column '{column}'; the models here read text "
                f"only, so remove the {kind} inputs (and their <{kind}> placeholders) or the row"
            )
    for column in placeholders:
        if found := next((m for text in _texts(row.get(column)) if (m := _PLACEHOLDER.search(text))), None):
            raise _RowError(
                f"has the placeholder {found.group()} in the column '{column}', which stands for {found.group(1)} "
                "input; the models here read text only, so remove the placeholder (and its media) or the row"
            )


def _texts(value) -> list[str]:
    """Every string inside a raw value (lists and objects walked; rows are at most MAX_DEPTH deep)."""
    texts, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return texts


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
    Format.ALPACA_PREFERENCE,
    Format.ALPACA_KTO,
    Format.SHAREGPT_PREFERENCE,
    Format.SHAREGPT_KTO,
)


def _format_for_fields(fields: set[str], path) -> Format:
    """The format whose fields are exactly the ones given to --columns."""
    for fmt in FORMATS_BY_FIELDS:
        required, optional = FIELDS[fmt]
        if set(required) <= fields <= set(required + optional):
            return fmt
    raise DataError(
        f"{path}: --columns gives the fields {', '.join(sorted(fields))}, which match no format; give "
        "text, text+label, messages (+system, tools), messages+chosen+rejected, messages+kto_tag, prompt, "
        "prompt+completion (+context), prompt+completion+label, prompt+chosen+rejected, chosen+rejected or "
        "instruction with output, output+kto_tag or chosen+rejected (+input, system, history)."
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


def _match_alpaca(keys, **answer):
    """Alpaca columns with the answer columns given (output by default), and the optional ones."""
    cols = _columns(keys, instruction="instruction", **(answer or {"output": "output"}))
    if cols:
        optional = ("input", "system", "history") + (("tools",) if not answer else ())
        cols.update({name: col for name in optional if (col := _find(keys, name))})
    return cols


def _match_sharegpt(keys, **extra):
    """LLaMA-Factory's sharegpt preference or KTO columns: turns (conversations or messages) + ``extra``."""
    cols = _columns(keys, messages=("conversations", "messages"), **extra)
    if cols and (system := _find(keys, "system")):
        cols["system"] = system
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
    if cols:  # row-level tool definitions (and the legacy "functions") and a system prompt belong to the chat
        cols.update({name: col for name in ("tools", "functions", "system") if (col := _find(keys, name))})
    return cols


def _match_sharegpt_chat(keys):
    cols = _columns(keys, messages="conversations")
    if cols:
        cols.update({name: col for name in ("system", "tools") if (col := _find(keys, name))})
    return cols


MATCHERS = {
    Format.OPENAI_CHAT: _match_openai_chat,
    Format.OPENAI_DPO: lambda k: _columns(
        k, prompt="input", chosen="preferred_output", rejected="non_preferred_output"
    ),
    Format.ALPACA: _match_alpaca,
    Format.SHAREGPT: _match_sharegpt_chat,
    Format.PROMPT_COMPLETION: _match_prompt_completion,
    Format.PROMPT_ONLY: lambda k: _columns(k, prompt="prompt"),
    Format.TEXT: lambda k: _columns(k, text="text"),
    Format.TEXT_LABEL: lambda k: _columns(k, text=TEXT_NAMES, label=LABEL_NAMES),
    Format.PREFERENCE: lambda k: _columns(k, prompt="prompt", chosen="chosen", rejected="rejected"),
    # LLaMA-Factory v1 names its implicit-prompt pairs chosen_messages/rejected_messages
    Format.HH_RLHF: lambda k: _columns(k, chosen=("chosen", "chosen_messages"), rejected=("rejected", "rejected_messages")),
    Format.KTO: lambda k: _columns(k, prompt="prompt", completion="completion", label="label"),
    Format.ALPACA_PREFERENCE: lambda k: _match_alpaca(k, chosen="chosen", rejected="rejected"),
    Format.ALPACA_KTO: lambda k: _match_alpaca(k, output="output", kto_tag="kto_tag"),
    Format.SHAREGPT_PREFERENCE: lambda k: _match_sharegpt(k, chosen="chosen", rejected="rejected"),
    Format.SHAREGPT_KTO: lambda k: _match_sharegpt(k, kto_tag="kto_tag"),
}


def _all_booleans(records: list[Record], column: str) -> bool:
    """True if every value in ``column`` is true or false (rows without it aside), and one is."""
    values = [record.data[column] for record in records if record.data.get(column) is not None]
    return bool(values) and all(isinstance(value, bool) for value in values)


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


def _messages(value, column: str, default_role: str, tags: Tags | None = None) -> list[dict]:
    """A string (one turn by ``default_role``) or a list of turns, as canonical messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list) or not value:
        raise _RowError(f"has no list of messages in the column '{column}'; give a non-empty list of turns")
    return [_turn(turn, i, column, tags) for i, turn in enumerate(value, start=1)]


def _turn_keys(turn: dict, tags: Tags | None) -> tuple[str, str]:
    """The keys holding a turn's role and content: the tags', else OpenAI's or ShareGPT's."""
    if tags is not None:
        return tags.role, tags.content
    return ("from", "value") if "role" not in turn and "from" in turn else ("role", "content")


def _turn(turn, number: int, column: str, tags: Tags | None = None) -> dict:
    """One turn, OpenAI style {"role", "content"} or ShareGPT style {"from", "value"}, or
    under a dataset_info.json entry's ``tags``.

    OpenAI's fine-tuning fields are kept: ``weight`` (0 or 1, assistant turns), ``name``,
    ``tool_calls`` (assistant), ``tool_call_id`` (tool turns); the legacy ``function_call``
    becomes ``tool_calls`` and the legacy ``function`` role becomes ``tool``. Content given
    as a list of parts is the text of its text parts; any other part, and an ``audio``
    answer, is refused. An assistant turn that only calls tools (content null) gets the
    content "", one that refused (content null, a ``refusal`` text) says its refusal.
    LLaMA-Factory's ``observation`` is a tool turn and its ``function_call`` an assistant
    turn calling the tools its content names as JSON. Its v1 turns give ``loss_weight`` (0 or
    1 on assistant turns: the ``weight``; ignored on others, as LLaMA-Factory learns only
    assistant turns) and parts with ``reasoning`` and ``tool_call``; reasoning (those parts,
    ``reasoning_content`` or ``thinking``) goes into the content (``THINK_TEMPLATE``).
    """
    where = f"message {number} in the column '{column}'"
    if not isinstance(turn, dict):
        raise _RowError(f'has {where} that is not an object; write each turn as {{"role": ..., "content": ...}}')
    role_key, content_key = _turn_keys(turn, tags)
    names = ROLES if tags is None else {**ROLES, **tags.roles}
    role, content = turn.get(role_key), turn.get(content_key)
    if not isinstance(role, str) or role not in names:  # a list or object as role is not hashable
        if tags is None:
            known = "system, user, assistant or tool (human, gpt, observation or function_call in ShareGPT)"
        else:
            known = f"one of the role tags of {DATASET_INFO} ({', '.join(tags.roles)}) in '{role_key}'"
        raise _RowError(f"has {where} with the unknown role {_short_repr(role)}; use {known}")
    kind = names[role]
    role = "assistant" if kind == FUNCTION_CALL else kind
    message: dict = {"role": role}
    openai = role_key == "role"  # OpenAI's other fields are read on role/content turns
    if openai:
        if turn.get("audio") is not None:
            raise _RowError(
                f'has an audio answer in {where}; this model reads text only, so remove the "audio" field '
                "(keeping its transcript as the content) or the row"
            )
        calls = _tool_calls(turn, role, where)
        if calls:
            message["tool_calls"] = calls
        if _says_refusal(turn, role, content):
            content = turn["refusal"]  # what the assistant said instead of an answer
    if kind == FUNCTION_CALL:
        if "tool_calls" in message:
            raise _RowError(f"has {where} that is a function_call turn with tool_calls as well; give the calls once")
        message["tool_calls"] = _function_calls(content, where)
        content = ""
    reasoning = ""
    if isinstance(content, list):
        content, reasoning, part_calls = _content_parts(content, where)
        if part_calls:
            if role != "assistant" or "tool_calls" in message:
                raise _RowError(
                    f"has {where} with tool_call parts on the {role} turn or with tool_calls as well; give tool "
                    "calls on assistant turns only, once"
                )
            message["tool_calls"] = part_calls
    if openai:
        reasoning = PART_SEPARATOR.join(filter(None, [reasoning, *(_reasoning(turn, key, where) for key in REASONING_KEYS)]))
    if reasoning and role != "assistant":
        raise _RowError(f"has reasoning in {where}, a {role} turn; give reasoning on assistant turns only")
    if content is None and "tool_calls" in message:
        content = ""  # a turn that only calls tools
    if content is None:
        raise _RowError(f'has {where} with no content; give every turn a "{content_key}" string')
    if not isinstance(content, str):
        raise _RowError(f"has {where} whose content is a {type(content).__name__}, not text; make the content a string")
    message["content"] = THINK_TEMPLATE.format(reasoning=reasoning, content=content) if reasoning else content
    if not openai:
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
    # LLaMA-Factory v1 writes a loss_weight on every turn but learns assistant turns only.
    key = "weight" if "weight" in turn else "loss_weight" if "loss_weight" in turn and role == "assistant" else None
    if key:
        weight = turn[key]
        if role != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
            whose = "OpenAI's weight is" if key == "weight" else "a turn is learned whole or not at all here, so loss_weight is"
            raise _RowError(
                f"has {where} with the {key} {_short_repr(weight)} on the {role} turn; {whose} 0 or 1 "
                "on assistant turns only, so use 0 (context, not learned) or 1 (learned) there or remove it"
            )
        message["weight"] = int(weight)
    return message


def _reasoning(turn: dict, key: str, where: str) -> str:
    """A turn's reasoning under ``key``: text, or text parts as Axolotl writes them ("" when there is none)."""
    value = turn.get(key)
    if isinstance(value, list):
        text, reasoning, calls = _content_parts(value, f"the {key} of {where}")
        if calls:
            raise _RowError(f"has tool_call parts in the {key} of {where}; give tool calls in the content")
        value = PART_SEPARATOR.join(filter(None, [reasoning, text]))
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise _RowError(f"has {where} whose {key} is a {type(value).__name__}, not text; make it text")
    return value


def _says_refusal(turn: dict, role: str | None, content) -> bool:
    """True for an OpenAI assistant turn whose only text is its ``refusal``."""
    return role == "assistant" and content in (None, "") and isinstance(turn.get("refusal"), str)


def _read_keys(turn: dict, tags: Tags | None) -> set[str]:
    """The keys of a raw turn that ``_turn`` reads (the rest are reported as unused keys)."""
    role_key, content_key = _turn_keys(turn, tags)
    if role_key != "role":
        return {role_key, content_key}
    names = ROLES if tags is None else {**ROLES, **tags.roles}
    role = turn.get("role")
    says = isinstance(role, str) and _says_refusal(turn, names.get(role), turn.get(content_key))
    refusal = {"refusal"} if says else set()
    return {role_key, content_key} | OPENAI_TURN_KEYS | refusal


def _unread_keys(records: list[Record], column_map: dict[str, str], tags: Tags | None) -> list[str]:
    """Keys inside the file's turns that the conversion does not read, like "messages[].timestamp"
    or a content part's "messages[].content[].train" (a null value holds nothing, so it does not count)."""
    found: dict[str, None] = {}
    for name in MESSAGE_FIELDS:
        column = column_map.get(name)
        for record in records if column else ():
            value, where = record.data.get(column), column
            if isinstance(value, dict) and "messages" in value:  # OpenAI's DPO input object
                found.update({f"{column}.{k}": None for k, v in value.items() if k != "messages" and v is not None})
                value, where = value["messages"], f"{column}.messages"
            turns = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
            where += "" if isinstance(value, dict) else "[]"
            for turn in turns:
                if isinstance(turn, dict):
                    read = _read_keys(turn, tags)
                    found.update({f"{where}.{k}": None for k, v in turn.items() if v is not None and k not in read})
                    found.update(dict.fromkeys(_unread_part_keys(turn, where, _turn_keys(turn, tags)[1])))
    return list(found)


def _unread_part_keys(turn: dict, where: str, content_key: str) -> list[str]:
    """Keys of a turn's text, reasoning and tool_call parts besides their type and text (like
    Axolotl's per-part "train"), which the conversion does not read. Other parts refuse the row."""
    keys = []
    for key in (content_key, *REASONING_KEYS):
        for part in turn.get(key) if isinstance(turn.get(key), list) else ():
            if isinstance(part, dict) and part.get("type") in (*TEXT_PART_TYPES, "reasoning", "tool_call"):
                keys += [f"{where}.{key}[].{k}" for k, v in part.items() if v is not None and k not in ("type", *PART_TEXT_KEYS)]
    return keys


def _content_parts(parts: list, where: str) -> tuple[str, str, list[dict]]:
    """The text, reasoning and tool calls of content given as parts, each in order: OpenAI's
    (and Oumi's) text parts, LLaMA-Factory v1's text, reasoning and tool_call parts. Any other
    part (an image, an audio, a file) is an error."""
    texts, reasoning, calls = [], [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        text = next((part[key] for key in PART_TEXT_KEYS if isinstance(part.get(key), str)), None) if kind else None
        if text is not None and kind in (*TEXT_PART_TYPES, "reasoning", "tool_call"):
            if kind == "tool_call":
                calls += _function_calls(text, where)
            else:
                (reasoning if kind == "reasoning" else texts).append(text)
            continue
        if not isinstance(kind, str) or kind in (*TEXT_PART_TYPES, "reasoning", "tool_call"):
            raise _RowError(
                f"has {where} whose content is a list with the part {_short_repr(part)}, which is not an OpenAI "
                'content part; give the content as a string or a list of {"type": "text", "text": ...} parts'
            )
        what = PART_KINDS.get(kind, f"a {_short_repr(kind)}")
        raise _RowError(
            f"has {what} part in {where}; this model reads text only, so give the content as text "
            '(a string or {"type": "text", "text": ...} parts) or remove the row'
        )
    return PART_SEPARATOR.join(texts), PART_SEPARATOR.join(reasoning), calls


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


def _function_calls(content, where: str) -> list[dict]:
    """LLaMA-Factory's function_call turn: JSON text of one call ``{"name", "arguments"}`` or a
    list of them, as OpenAI tool calls (arguments as JSON text, the way OpenAI gives them)."""
    try:
        value = json.loads(content) if isinstance(content, str) else content
    except (ValueError, RecursionError):
        value = None
    calls = value if isinstance(value, list) and value else [value]
    if not all(_is_function(call) for call in calls):
        raise _RowError(
            f'has {where}, a function call, whose content is not JSON like {{"name": ..., "arguments": {{...}}}}; '
            "write the call (or a list of calls) as that JSON text"
        )
    return [{"type": "function", "function": {**call, "arguments": _json_text(call.get("arguments", {}))}} for call in calls]


def _json_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _row_tools(row: dict, cols: dict) -> list[dict]:
    """A chat row's tool definitions: OpenAI's ``tools`` or the legacy ``functions``."""
    tools = []
    for name in ("tools", "functions"):
        value = _raw(row, cols[name]) if name in cols else None
        if value is not None:
            tools += _tool_definitions(value, cols[name])
    return tools


def _tool_definitions(value, column: str) -> list[dict]:
    """Tools as OpenAI writes them, from those, from bare function definitions (OpenAI's legacy
    ``functions``, LLaMA-Factory's ``tools``) or from the JSON text of either ("" is none)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except (ValueError, RecursionError):
            value = None
    tools = []
    for tool in value if isinstance(value, list) else [None]:
        if isinstance(tool, dict) and _is_function(tool.get("function")):
            tools.append(tool)
        elif _is_function(tool):
            tools.append({"type": "function", "function": tool})
        else:
            raise _RowError(
                f"has tool definitions in the column '{column}' that are not a list of functions; write them "
                'the way OpenAI does, [{"type": "function", "function": {"name": ..., "parameters": ...}}], '
                'or as a list of {"name": ..., "parameters": ...} (the list or its JSON text)'
            )
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


def _kto_label(row: dict, cols: dict, name: str = "label") -> bool:
    value = _value(row, cols, name)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)) and str(value).strip().lower() in ("true", "1"):
        return True
    if isinstance(value, (int, str)) and str(value).strip().lower() in ("false", "0"):
        return False
    raise _RowError(
        f"has the label {_short_repr(value)} in the column '{cols[name]}'; use true or false (or 1 or 0)"
    )


def _with_system(messages: list[dict], row: dict, cols: dict) -> list[dict]:
    """The conversation with the row's system column (if any) as its first turn."""
    system = _optional_string(row, cols, "system")
    if not system:
        return messages
    if messages[0]["role"] == "system":  # LLaMA-Factory lets a first system turn win; one is lost then
        if messages[0]["content"] == system:
            return messages
        raise _RowError(
            f"has a system prompt in the column '{cols['system']}' and a different one as its first message; "
            "keep one of them"
        )
    return [{"role": "system", "content": system}, *messages]


def _convert_chat(row, cols, tags=None):
    messages = _messages(_value(row, cols, "messages"), cols["messages"], "user", tags)
    record = {"messages": _with_system(messages, row, cols)}
    if tools := _row_tools(row, cols):
        record["tools"] = tools
    return record


def _alpaca_prompt(row: dict, cols: dict) -> list[dict]:
    """An alpaca row's system prompt, history turns and instruction (with its input) as messages."""
    instruction = _string(row, cols, "instruction")
    extra_input = _optional_string(row, cols, "input")
    system = _optional_string(row, cols, "system")
    messages = [{"role": "system", "content": system}] if system else []
    messages += _history(row, cols)
    # An empty instruction (the question is in input, as in Unsloth's samples) adds no blank lines.
    messages.append({"role": "user", "content": "\n\n".join(t for t in (instruction, extra_input) if t) or instruction})
    return messages


def _history(row: dict, cols: dict) -> list[dict]:
    """LLaMA-Factory's ``history``: [instruction, response] pairs before the current turn."""
    value = _raw(row, cols["history"]) if "history" in cols else None
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise _RowError(
            f"has a {type(value).__name__} in the column '{cols['history']}' where a list of [instruction, response] "
            'pairs is expected; write the history as [["question", "answer"], ...]'
        )
    turns = []
    for number, pair in enumerate(value, start=1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(text, str) for text in pair)):
            raise _RowError(
                f"has the history item {number} {_short_repr(pair)} in the column '{cols['history']}', which is not "
                'an [instruction, response] pair of strings; write the history as [["question", "answer"], ...]'
            )
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _convert_alpaca(row, cols):
    record = {"messages": _alpaca_prompt(row, cols) + [{"role": "assistant", "content": _string(row, cols, "output")}]}
    if tools := _row_tools(row, cols):
        record["tools"] = tools
    return record


def _convert_alpaca_preference(row, cols):
    return {
        "prompt": _alpaca_prompt(row, cols),
        "chosen": _messages(_value(row, cols, "chosen"), cols["chosen"], "assistant"),
        "rejected": _messages(_value(row, cols, "rejected"), cols["rejected"], "assistant"),
    }


def _convert_alpaca_kto(row, cols):
    return {
        "prompt": _alpaca_prompt(row, cols),
        "completion": [{"role": "assistant", "content": _string(row, cols, "output")}],
        "label": _kto_label(row, cols, "kto_tag"),
    }


def _sharegpt_prompt(prompt: list[dict], column: str) -> list[dict]:
    """A prompt taken from a conversation: it must end where the answer starts (a user or tool turn)."""
    if prompt[-1]["role"] not in ("user", "tool"):
        raise _RowError(
            f"has a conversation in the column '{column}' whose prompt ends with a {prompt[-1]['role']} turn; "
            "end the prompt with a user (human) or tool (observation) turn"
        )
    return prompt


def _answer(value, column: str, tags: Tags | None) -> list[dict]:
    """LLaMA-Factory's chosen or rejected answer: one turn object (or a list of turns, or text)."""
    answer = _messages([value] if isinstance(value, dict) else value, column, "assistant", tags)
    if answer[0]["role"] != "assistant":
        raise _RowError(
            f"has an answer in the column '{column}' that starts with a {answer[0]['role']} turn; "
            "give the answer as an assistant (gpt or function_call) turn"
        )
    return answer


def _convert_sharegpt_preference(row, cols, tags=None):
    conversation = _messages(_value(row, cols, "messages"), cols["messages"], "user", tags)
    return {
        "prompt": _sharegpt_prompt(_with_system(conversation, row, cols), cols["messages"]),
        "chosen": _answer(_value(row, cols, "chosen"), cols["chosen"], tags),
        "rejected": _answer(_value(row, cols, "rejected"), cols["rejected"], tags),
    }


def _convert_sharegpt_kto(row, cols, tags=None):
    """A conversation and a verdict on its last turn: the answer, the rest its prompt."""
    conversation = _with_system(_messages(_value(row, cols, "messages"), cols["messages"], "user", tags), row, cols)
    if len(conversation) < 2 or conversation[-1]["role"] != "assistant":
        raise _RowError(
            f"has a conversation in the column '{cols['messages']}' that does not end with an assistant answer after "
            f"a prompt; end it with the answer that '{cols['kto_tag']}' judges"
        )
    return {
        "prompt": _sharegpt_prompt(conversation[:-1], cols["messages"]),
        "completion": conversation[-1:],
        "label": _kto_label(row, cols, "kto_tag"),
    }


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
    """Two whole conversations; the shared part up to the last common user turn is the prompt.
    Two plain texts (TRL's standard implicit-prompt pair) share their opening words instead."""
    chosen, rejected = _value(row, cols, "chosen"), _value(row, cols, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str) and not _is_transcript(chosen) and not _is_transcript(rejected):
        return _split_common_text(chosen, rejected, cols)
    chosen = _dialogue(chosen, cols["chosen"])
    rejected = _dialogue(rejected, cols["rejected"])
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


def _is_transcript(text: str) -> bool:
    parts = _SPEAKER.split(text)
    return len(parts) >= 3 and not parts[0].strip()


def _split_common_text(chosen: str, rejected: str, cols: dict) -> dict:
    """Like TRL's ``extract_prompt``: the longest common start, cut back to the last whitespace
    in it so no word is split, is the prompt; the two rests (from that whitespace) are the answers."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    cut = max((i for i in range(shared) if chosen[i].isspace()), default=0)
    if not chosen[:cut].strip():
        raise _RowError(
            f"has texts in '{cols['chosen']}' and '{cols['rejected']}' that share no opening words to use as the "
            f"prompt; add a prompt column and pass --columns prompt=COL,chosen={cols['chosen']},rejected={cols['rejected']}"
        )
    return {
        "prompt": [{"role": "user", "content": chosen[:cut]}],
        "chosen": [{"role": "assistant", "content": chosen[cut:]}],
        "rejected": [{"role": "assistant", "content": rejected[cut:]}],
    }


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
    Format.ALPACA_PREFERENCE: _convert_alpaca_preference,
    Format.ALPACA_KTO: _convert_alpaca_kto,
    Format.SHAREGPT_PREFERENCE: _convert_sharegpt_preference,
    Format.SHAREGPT_KTO: _convert_sharegpt_kto,
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
