"""Read a data file into raw records, each tagged with the row number a user would look up.

Row numbers are 1-based and mean:

- JSONL, TXT: the line the record starts on, as an editor shows it.
- CSV, TSV: the line the record starts on; the header is line 1, so the first data row is
  row 2 (a quoted field spanning several lines makes the next row start further down).
  Quoting follows the CSV rules strictly: a quote that opens a value must close it, since a
  stray one would silently swallow the lines up to the next quote. A TSV file that does not
  quote (GLUE's, where a value may start with a quote) is read line by line when every line
  has the header's number of tab-separated fields and quoted reading fails or merges lines.
- JSON, Parquet, a ``datasets`` folder: the record's position in the list/table
  (the first object is row 1).

Nothing here changes the file, and nothing is skipped silently: blank lines are the only
thing left out, and a row that cannot be read is a ``DataError`` naming file, row and reason.
That holds for hostile files too (uploads reach this module): nesting deeper than
``MAX_DEPTH``, numbers too long for Python, text that is not valid Unicode and files too
large for memory are each one such sentence, never a traceback.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet")

# 64 levels: real records nest a handful (a conversation is 3: row, message list, message);
# deeper rows only serve to exhaust the stack of whatever walks them later.
MAX_DEPTH = 64
# Python refuses to turn longer digit strings into an int (CVE-2020-10735 limit).
MAX_INT_DIGITS = 4300
# One UTF-16 half of a character without its other half: JSON's "\ud83d" escape alone. It
# cannot be written as UTF-8, so every later step (tokenizer, JSON output) would fail on it.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class Record:
    """One row of a file: its user-visible row number and its fields."""

    row: int
    data: dict


def read_records(path: str | Path, notes: list[str] | None = None) -> list[Record]:
    """Read a data file or a ``datasets.save_to_disk`` folder into records, in file order.

    Supports .jsonl, .json, .csv, .tsv, .txt (each optionally gzipped as ``.gz``), .parquet
    and a saved ``Dataset``/``DatasetDict`` folder (a DatasetDict gives its "train" split).
    Remarks on how the file was read (the split or list used) are appended to ``notes`` if
    a list is given. Raises ``DataError`` for a missing, empty or unreadable file.
    """
    path = Path(path)
    notes = notes if notes is not None else []
    try:
        if path.is_dir():
            records = _read_dataset_folder(path, notes)
        elif not path.exists():
            raise DataError(f"{path}: file not found; check the path.")
        else:
            records = _read_file(path, notes)
    except MemoryError:
        raise DataError(
            f"{path}: the file is too large to read into this machine's memory; split it into smaller files."
        ) from None
    if not records:
        raise DataError(f"{path}: the file holds no records; add at least one row of data.")
    return records


def _read_file(path: Path, notes: list[str]) -> list[Record]:
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    suffix = Path(name[:-3] if gzipped else name).suffix
    if suffix not in SUFFIXES or (gzipped and suffix == ".parquet"):
        raise DataError(
            f"{path}: unknown file type '{suffix or path.name}'; use .jsonl, .json, .csv, .tsv, "
            ".txt (each optionally .gz), .parquet or a folder saved with datasets.save_to_disk."
        )
    if suffix == ".parquet":
        return _read_parquet(path)

    text = _decode(_read_bytes(path, gzipped), path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; add at least one row of data.")
    if suffix == ".jsonl":
        return _parse_jsonl(text, path)
    if suffix == ".json":
        return _parse_json(text, path, notes)
    if suffix == ".txt":
        return _parse_txt(text)
    if suffix == ".tsv":
        return _parse_tsv(text, path, notes)
    return _parse_csv(text, path, delimiter=",")


def _read_bytes(path: Path, gzipped: bool) -> bytes:
    try:
        if gzipped:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a bad block is zlib.error
        raise DataError(f"{path}: cannot read the file ({e}); check that it is intact and readable.") from None


def _decode(raw: bytes, path: Path) -> str:
    """Decode UTF-8 (a leading byte-order mark is allowed), naming the line of a bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file with UTF-8 encoding."
        ) from None


def _lines(text: str) -> list[str]:
    # Split on "\n" only (not str.splitlines, which also splits on form feeds and the like)
    # so that line numbers agree with what an editor shows.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _parse_jsonl(text: str, path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = _json_loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({e.msg} at column {e.colno}); fix or remove that line."
            ) from None
        except RecursionError:
            raise DataError(f"{path}: line {number} {_TOO_DEEP}.") from None
        if not isinstance(value, dict):
            raise DataError(
                f"{path}: line {number} holds a JSON {_json_kind(value)}, not an object; "
                'each line must be one object like {"text": "..."}.'
            )
        if _may_fail_check(line):
            _check_value(value, path, f"line {number}")
        records.append(Record(number, value))
    return records


_TOO_DEEP = f"nests lists or objects more than {MAX_DEPTH} levels deep; flatten that row"


class _HugeInt(str):
    """A JSON integer too long for Python's int(); _check_value names its row."""


def _parse_int(digits: str) -> int | _HugeInt:
    # int() raises a bare ValueError past the limit, which json.loads would pass on with no
    # line; keep the digits and let _check_value report the row.
    return _HugeInt(digits) if len(digits.lstrip("-")) > MAX_INT_DIGITS else int(digits)


# One decoder, built once: json.loads(..., parse_int=) would build one per line.
_DECODER = json.JSONDecoder(parse_int=_parse_int)


def _json_loads(text: str):
    return _DECODER.decode(text)


_LONG_DIGITS = re.compile(rf"(?<!\d)\d{{{MAX_INT_DIGITS + 1}}}")


def _may_fail_check(line: str) -> bool:
    """False when a JSON line surely passes _check_value: no \\u escape (the only way to
    write a lone surrogate), fewer brackets than MAX_DEPTH and no long digit run. These
    scans run at C speed; the walk they spare would double the time to read a large file."""
    return (
        "\\u" in line
        or line.count("[") + line.count("{") >= MAX_DEPTH
        or _LONG_DIGITS.search(line) is not None
    )


def _check_value(value, path: Path, where: str) -> None:
    """Refuse a row that later steps cannot handle: deeper than MAX_DEPTH, an integer
    too long for Python, or a string (key or value) holding a lone surrogate.

    ``where`` is "line N" or "row N". Iterative, so a deep row cannot exhaust the stack here.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _HugeInt):
            raise DataError(
                f"{path}: {where} holds a number with more than {MAX_INT_DIGITS} digits; write it as a string."
            )
        if isinstance(item, str):
            if _LONE_SURROGATE.search(item):
                raise DataError(
                    f"{path}: {where} holds half of a UTF-16 surrogate pair (an escape like \\ud83d without "
                    "its partner), which is not valid text; write the character itself or its full pair."
                )
            continue
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple)):
            children = list(item)
        else:
            continue
        if depth > MAX_DEPTH:
            raise DataError(f"{path}: {where} {_TOO_DEEP}.")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (str, dict, list, tuple)))


def _parse_json(text: str, path: Path, notes: list[str]) -> list[Record]:
    try:
        value = _json_loads(text)
    except RecursionError:
        raise DataError(f"{path}: line {_deep_line(text)} {_TOO_DEEP}.") from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            # Many ".json" files are really JSON Lines (one object per line); read them as such.
            notes.append(f"{path.name} holds one JSON object per line; read it as JSON Lines.")
            return _parse_jsonl(text, path)
        raise DataError(
            f"{path}: line {e.lineno} is not valid JSON ({e.msg} at column {e.colno}); fix the file there."
        ) from None

    if isinstance(value, dict) and _is_one_conversation(value):
        notes.append(f"{path.name} holds one conversation, not a list of rows; read it as one row.")
        value = [value]
    if isinstance(value, dict):
        value = _list_inside(value, path, notes)
    if not isinstance(value, list):
        raise DataError(
            f"{path}: the file holds a JSON {_json_kind(value)}; it must hold a list of objects "
            'like [{"text": "..."}] or an object with one such list like {"data": [...]}.'
        )
    records = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataError(
                f"{path}: row {number} (item {number} of the list) is a JSON {_json_kind(item)}, "
                "not an object; make every item an object with named fields."
            )
        _check_value(item, path, f"row {number}")
        records.append(Record(number, item))
    return records


# What matters for nesting: brackets, quotes, escapes (a backslash and the character it
# escapes, as one token) and line ends.
_JSON_SYNTAX = re.compile(r'\\[\s\S]|[\[\]{}"\n]')


def _deep_line(text: str) -> int:
    """The line where ``text``'s JSON first nests deeper than MAX_DEPTH (1 if it never does).

    Only used after json.loads ran out of stack; it steps over string contents so brackets
    inside strings do not count.
    """
    depth, line, in_string = 0, 1, False
    for m in _JSON_SYNTAX.finditer(text):
        token = m.group()
        if token[-1] == "\n":
            line += 1
        elif token == '"':
            in_string = not in_string
        elif not in_string and len(token) == 1:
            depth += 1 if token in "[{" else -1
            if depth > MAX_DEPTH + 1:  # the top-level list is one level more than a row
                return line
    return 1


def _is_one_conversation(obj: dict) -> bool:
    """True for a top-level object that is itself a row: its only list is a conversation
    ("messages" or "conversations" holding turns, beside its "tools"), as in Axolotl's
    single-example fixtures."""
    lists = [key for key, v in obj.items() if isinstance(v, list) and key != "tools"]
    if lists not in (["messages"], ["conversations"]) or not obj[lists[0]]:
        return False
    return all(isinstance(turn, dict) and ("role" in turn or "from" in turn) for turn in obj[lists[0]])


def _list_inside(obj: dict, path: Path, notes: list[str]) -> list:
    """The list of records inside a top-level JSON object like {"data": [...]}."""
    lists = [key for key, v in obj.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if len(lists) == 1:
        key = lists[0]
    elif "train" in lists:
        key = "train"
    else:
        found = ", ".join(lists) if lists else "none"
        raise DataError(
            f"{path}: the top-level JSON object must hold exactly one list of records "
            f"(lists of objects found: {found}); keep one list or save the records as a JSON list."
        )
    notes.append(f"{path.name}: using the list of records under the key '{key}'.")
    return obj[key]


def _json_kind(value) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number", dict: "object"}.get(
        type(value), "null"
    )


def _parse_txt(text: str) -> list[Record]:
    """Documents separated by blank lines; with no blank lines, each line is a document."""
    lines = _lines(text)
    blank = [not line.strip() for line in lines]
    # Only blank lines *between* content count as separators (not trailing newlines).
    first = blank.index(False)
    last = len(blank) - 1 - blank[::-1].index(False)
    if not any(blank[first : last + 1]):
        return [Record(n, {"text": line}) for n, line in enumerate(lines, start=1) if line.strip()]

    records, start, current = [], 0, []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            if not current:
                start = number
            current.append(line)
        elif current:
            records.append(Record(start, {"text": "\n".join(current)}))
            current = []
    if current:
        records.append(Record(start, {"text": "\n".join(current)}))
    return records


def _parse_tsv(text: str, path: Path, notes: list[str]) -> list[Record]:
    """A TSV file, quoted as CSV (pandas, the csv module) or not at all (GLUE's benchmarks)."""
    plain = _unquoted_lines(text)
    try:
        quoted = _parse_csv(text, path, delimiter="\t")
    except DataError:
        if plain is None:
            raise
        quoted = None
    if plain is not None and (quoted is None or len(quoted) != len(plain)):
        notes.append(f"{path.name} does not quote its values; read each line as one row, quotes as text.")
        return plain
    return quoted


def _unquoted_lines(text: str) -> list[Record] | None:
    """Each line split on tabs, if every line has the header's number of fields (else None)."""
    # Empty lines are left out, as the csv module does; a line of spaces is a row (of one field).
    lines = [(number, line.split("\t")) for number, line in enumerate(_lines(text), start=1) if line]
    (_, header), rows = lines[0], lines[1:]
    if any(len(fields) != len(header) for _, fields in rows) or len(set(header)) != len(header):
        return None
    return [Record(number, dict(zip(header, fields))) for number, fields in rows]


def _parse_csv(text: str, path: Path, delimiter: str) -> list[Record]:
    """CSV/TSV with a header line; every value stays a string ("NA" is text, not missing)."""
    # The default limit (128 KiB per field) is too small for long documents.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # strict: a quote that opens a value but does not end it (text after the closing quote)
    # is an error, not a value that silently runs on over the following lines.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, records, end_of_previous = None, [], 0
    try:
        for fields in reader:
            start, end_of_previous = end_of_previous + 1, reader.line_num
            if not fields:  # a blank line
                continue
            if header is None:
                header = _check_header(fields, start, path)
                continue
            if len(fields) != len(header):
                sep = "tab" if delimiter == "\t" else "comma"
                raise DataError(
                    f"{path}: row {start} has {len(fields)} fields but the header has {len(header)}; "
                    f"put quotes around values that contain a {sep} or fix the row."
                )
            records.append(Record(start, dict(zip(header, fields))))
    except csv.Error as e:
        raise DataError(
            f"{path}: row {end_of_previous + 1} cannot be read ({e}, by line {reader.line_num}); a value that starts "
            'with a quote must end with one, with quotes inside it doubled (""): fix the quoting there.'
        ) from None
    return records


def _check_header(fields: list[str], line: int, path: Path) -> list[str]:
    seen = set()
    for name in fields:
        if name in seen:
            raise DataError(f"{path}: the header (line {line}) names the column '{name}' twice; rename one of them.")
        seen.add(name)
    return fields


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq  # imported here: only Parquet files need it

    try:
        table = pq.read_table(path)
        names = table.column_names
        rows = table.to_pylist()
    except MemoryError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(
            f"{path}: cannot read the Parquet file ({_one_line(e)}); check that it is a complete Parquet file."
        ) from None
    _check_columns(names, path)
    return _checked_rows(rows, path)


def _one_line(error: Exception) -> str:
    """An error's message on one line, cut short: pyarrow's can span many lines."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_columns(names: list[str], path: Path) -> None:
    # Rows become dicts, so a second column of the same name would silently replace the first.
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: the table has two columns named '{name}'; rename one of them.")
        seen.add(name)


def _checked_rows(rows: list[dict], path: Path) -> list[Record]:
    records = []
    for number, row in enumerate(rows, start=1):
        _check_value(row, path, f"row {number}")
        records.append(Record(number, row))
    return records


def _read_dataset_folder(path: Path, notes: list[str]) -> list[Record]:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    if not any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise DataError(
            f"{path}: this folder is not a dataset saved with datasets.save_to_disk; give a data file or such a folder."
        )
    import datasets  # imported here: slow to import and only needed for saved folders

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(
            f"{path}: cannot load the saved dataset ({_one_line(e)}); save it again with save_to_disk."
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        dataset = _pick_split(dataset, path, notes)

    try:
        rows = dataset.to_list()
    except MemoryError:
        raise
    except Exception as e:  # the Arrow files under the folder are damaged
        raise DataError(
            f"{path}: cannot read the saved dataset's rows ({_one_line(e)}); save it again with save_to_disk."
        ) from None
    # Class-label columns are stored as ids; give the user's label names instead.
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):
            notes.append(f"column '{column}' holds class ids; using their names.")
            for number, row in enumerate(rows, start=1):
                class_id = row[column]
                # -1 is how datasets marks a missing label; None makes it an error later.
                if class_id is not None and class_id >= feature.num_classes:
                    raise DataError(
                        f"{path}: row {number} has the class id {class_id} in the column '{column}', which has only "
                        f"{feature.num_classes} classes; fix the id or the column's class names."
                    )
                row[column] = feature.int2str(class_id) if class_id is not None and class_id >= 0 else None
    return _checked_rows(rows, path)


def _pick_split(dataset_dict, path: Path, notes: list[str]):
    splits = list(dataset_dict.keys())
    if "train" in splits:
        split = "train"
    elif len(splits) == 1:
        split = splits[0]
    else:
        raise DataError(
            f"{path}: the saved DatasetDict has no 'train' split (splits: {', '.join(splits)}); "
            "save the split to use as 'train' or point to that split's folder."
        )
    notes.append(f"DatasetDict folder: using the '{split}' split.")
    return dataset_dict[split]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write `rows` as JSON Lines (one object per line, non-ASCII kept as is)."""
    with Path(path).open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
