"""Hypothesis fuzzing of every data loader and of the data gate (uploads reach both).

Each loader entry point (`read_records`, `load_data`) is given arbitrary bytes and
structured-but-weird rows in every format it reads (JSONL, JSON, CSV, TSV, TXT, Parquet,
gzipped text): it must return rows in a canonical shape or raise a `TunesmithError` whose
message is one line naming the file; any other exception is a crash. The gate
(`check_data`, label check off, as the API runs it) is fuzzed on small weird files the same
way, and its card must serialize as the API sends it (strict JSON, UTF-8).

Examples are bounded and derandomized so CI runs the same inputs every time, in well under
a minute on 2 cores.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tunesmith.data.formats import LoadedData, load_data
from tunesmith.data.load import MAX_DEPTH, read_records
from tunesmith.data.quality import check_data
from tunesmith.errors import TunesmithError

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GATE = settings(FUZZ, max_examples=40)

TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")
ALL_SUFFIXES = TEXT_SUFFIXES + (".parquet",) + tuple(s + ".gz" for s in TEXT_SUFFIXES)
ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------- checks


def _load(path: Path) -> LoadedData | None:
    """Run both loader entry points; None when they refuse the file with a user error."""
    try:
        records = read_records(path)
    except TunesmithError as e:
        _assert_user_message(e, path)
        return None
    rows = [r.row for r in records]
    assert all(isinstance(r.data, dict) for r in records)
    assert rows == sorted(rows) and len(set(rows)) == len(rows) and rows[0] >= 1
    try:
        data = load_data(path)
    except TunesmithError as e:
        _assert_user_message(e, path)
        return None
    _assert_canonical(data)
    assert set(data.rows) <= set(rows)
    return data


def _assert_user_message(error: TunesmithError, path: Path) -> None:
    message = str(error)
    assert message and "Traceback" not in message
    assert str(path) in message or "--columns" in message, message
    assert len(message) < 2000, message


def _messages_ok(messages, allow_empty: bool = False) -> bool:
    return (isinstance(messages, list) and (allow_empty or bool(messages))
            and all(isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES
                    and isinstance(m["content"], str) for m in messages))


def _assert_canonical(data: LoadedData) -> None:
    """Every record has exactly the shape of its task (DESIGN.md, "Canonical data shapes")."""
    assert len(data.records) == len(data.rows)
    for record in data.records:
        if data.task == "chat":
            assert set(record) == {"messages"} and _messages_ok(record["messages"]), record
        elif data.task == "pretrain":
            assert set(record) == {"text"} and isinstance(record["text"], str) and record["text"].strip()
        elif data.task == "classify":
            assert set(record) == {"text", "label"} and isinstance(record["text"], str)
            assert isinstance(record["label"], str) and record["label"].strip()
        elif data.task == "preference":
            assert set(record) == {"prompt", "chosen", "rejected"} and _messages_ok(record["prompt"])
            # An empty side is kept: judging content is the gate's job, not the loader's.
            assert _messages_ok(record["chosen"], True) and _messages_ok(record["rejected"], True), record
        else:
            assert data.task == "kto" and set(record) == {"prompt", "completion", "label"}
            assert _messages_ok(record["prompt"]) and _messages_ok(record["completion"], True)
            assert isinstance(record["label"], bool)


def _write(tmp: str, name: str, data: bytes) -> Path:
    path = Path(tmp) / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


# --------------------------------------------------------------------------- strategies

_KEYS = ("text", "label", "messages", "role", "content", "prompt", "completion", "chosen", "rejected",
         "instruction", "input", "output", "system", "question", "answer", "conversations", "from", "value",
         "query", "category", "response", "preferred_output", "non_preferred_output", "data", "train")
_keys = st.one_of(st.sampled_from(_KEYS), st.text(max_size=6))
# Text that exercises the decoders and the gate: control characters, a BOM, surrogate
# pairs, HTML, PII, transcripts, lone newlines and carriage returns.
_text = st.one_of(
    st.text(max_size=24),
    st.lists(st.sampled_from(["", " ", "\n", "\r", "\t", "\x00", "\x1b", "\ufeff", "\u2028", "\ufffd", "🙂", "é", "日本",
                              "<p>", "&amp;", "a@b.com", "4111 1111 1111 1111", "sk-abc123def456ghi789jkl0",
                              "\n\nHuman: hi", "\n\nAssistant: yo", "user", "assistant", "true", "0", "NaN"]),
             max_size=8).map("".join),
)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text,
                     st.integers(min_value=10**30, max_value=10**40), st.sampled_from(ROLES + ("human", "gpt", "tool")))
_json_value = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)),
    max_leaves=16,
)
# Turns with every field possibly wrong: roles that are lists, content that is an object...
_turn = st.dictionaries(st.sampled_from(["role", "content", "from", "value"]),
                        st.one_of(st.sampled_from(ROLES + ("human", "gpt")), st.sampled_from([[], ["user"], {}]),
                                  _json_value), max_size=3)
_messages = st.one_of(st.lists(_turn, max_size=4), _text, _json_value)
_row = st.one_of(
    st.dictionaries(_keys, _json_value, max_size=5),
    st.fixed_dictionaries({"messages": _messages}),
    st.fixed_dictionaries({"conversations": _messages}),
    st.fixed_dictionaries({"prompt": _messages, "chosen": _messages, "rejected": _messages}),
    st.fixed_dictionaries({"prompt": _messages, "completion": _messages, "label": _json_value}),
    st.fixed_dictionaries({"text": _json_value, "label": _json_value}),
    st.fixed_dictionaries({"input": st.one_of(_json_value, st.fixed_dictionaries({"messages": _messages})),
                           "preferred_output": _messages, "non_preferred_output": _messages}),
    st.fixed_dictionaries({"instruction": _json_value, "output": _json_value},
                          optional={"input": _json_value, "system": _json_value}),
    st.fixed_dictionaries({"chosen": _text, "rejected": _text}),
)
_rows = st.lists(_row, min_size=1, max_size=6)
# Bytes that look a little like data files, mixed with arbitrary bytes.
_chunk = st.sampled_from([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\n", b"\r\n", b"\r", b"\t", b"\\", b"\\u",
                          b"\\ud800", b"text", b"label", b"messages", b"null", b'"role"', b'"content"', b"NaN",
                          b"1e999", b"9" * 4400, b"-", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\x00", b"a", b"1", b"'", b";", b" "])
_bytes = st.one_of(st.binary(max_size=400), st.lists(_chunk, max_size=80).map(b"".join))


def _json_dumps(value) -> str:
    # allow_nan: NaN and Infinity are what many JSON writers emit; the loader must cope.
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def _encode(rows: list[dict], suffix: str) -> bytes:
    """Rows in the file format of ``suffix`` (.gz excluded): JSON values become cells."""
    if suffix == ".jsonl":
        return "".join(_json_dumps(r) + "\n" for r in rows).encode("utf-8", "surrogatepass")
    if suffix == ".json":
        return _json_dumps(rows).encode("utf-8", "surrogatepass")
    if suffix == ".txt":
        return "\n\n".join(str(v) for r in rows for v in r.values()).encode("utf-8", "surrogatepass")
    header = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t" if suffix == ".tsv" else ",")
    writer.writerow(header)
    for r in rows:
        writer.writerow([v if isinstance(v, str) else _json_dumps(v) for v in (r.get(k, "") for k in header)])
    return out.getvalue().encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- loaders


@FUZZ
@given(data=_bytes, suffix=st.sampled_from(ALL_SUFFIXES))
def test_arbitrary_bytes_load_or_raise_a_user_error(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _load(_write(tmp, f"data{suffix}", data))


@FUZZ
@given(data=_bytes)
def test_damaged_gzip_and_parquet_raise_a_user_error(data: bytes) -> None:
    """Not compressed (or cut short) .gz files and arbitrary .parquet bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, raw in (("a.jsonl.gz", data), ("b.csv.gz", gzip.compress(data)[: max(1, len(data) // 2)]),
                          ("c.parquet", data), ("d.parquet", b"PAR1" + data + b"PAR1")):
            path = Path(tmp) / name
            path.write_bytes(raw)
            _load(path)


@FUZZ
@given(rows=_rows, suffix=st.sampled_from(ALL_SUFFIXES[:5] + ALL_SUFFIXES[6:]))
def test_weird_rows_load_in_canonical_shape_or_raise_a_user_error(rows: list[dict], suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _load(_write(tmp, f"data{suffix}", _encode(rows, suffix.removesuffix(".gz"))))


@FUZZ
@given(turns=st.lists(st.lists(_turn, min_size=1, max_size=3), min_size=1, max_size=3),
       column=st.sampled_from(["messages", "conversations", "chosen"]), suffix=st.sampled_from([".jsonl", ".parquet"]))
def test_weird_turns_load_or_raise_a_user_error(turns: list[list[dict]], column: str, suffix: str) -> None:
    """Conversations whose turns have roles that are lists or objects, content that is not text..."""
    rows = [{column: t, **({"rejected": t} if column == "chosen" else {})} for t in turns]
    with tempfile.TemporaryDirectory() as tmp:
        if suffix == ".jsonl":
            _load(_write(tmp, "data.jsonl", _encode(rows, ".jsonl")))
            return
        try:  # Parquet: Arrow must find one type per column, or there is no file to read
            pq.write_table(pa.Table.from_pylist(rows), Path(tmp) / "data.parquet")
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            assume(False)
        _load(Path(tmp) / "data.parquet")


@FUZZ
@given(values=st.lists(st.one_of(_json_value, _row), min_size=1, max_size=5))
def test_any_json_values_load_or_raise_a_user_error(values: list) -> None:
    """Top-level values that are not rows (lists, strings, numbers, wrappers like {"data": [...]})."""
    with tempfile.TemporaryDirectory() as tmp:
        _load(_write(tmp, "a.jsonl", "\n".join(_json_dumps(v) for v in values).encode("utf-8", "surrogatepass")))
        _load(_write(tmp, "b.json", _json_dumps(values[0]).encode("utf-8", "surrogatepass")))
        _load(_write(tmp, "c.json", _json_dumps({"data": values, "other": values[:1]}).encode("utf-8", "surrogatepass")))


def _parquet_value(value):
    """A JSON value Arrow can store in a column whatever the other rows hold: nested
    structures as JSON text, scalars as they are."""
    return _json_dumps(value) if isinstance(value, (dict, list)) else value


@FUZZ
@given(rows=_rows, nested=st.booleans())
def test_weird_parquet_tables_load_or_raise_a_user_error(rows: list[dict], nested: bool) -> None:
    if nested:  # Arrow infers struct and list columns; rows it cannot type are not a file anyone can write
        table_rows = rows
    else:
        table_rows = [{k: _parquet_value(v) for k, v in r.items()} for r in rows]
    try:
        table = pa.Table.from_pylist(table_rows)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        try:
            pq.write_table(table, path)
        except (pa.ArrowException, TypeError, ValueError):
            assume(False)
        _load(path)


@FUZZ
@given(depth=st.integers(min_value=MAX_DEPTH - 2, max_value=5000), kind=st.sampled_from("[{"),
       suffix=st.sampled_from([".jsonl", ".json"]), line=st.integers(min_value=1, max_value=4))
def test_deep_nesting_is_a_user_error_naming_the_line(depth: int, kind: str, suffix: str, line: int) -> None:
    deep = '{"a": ' * depth + "1" + "}" * depth if kind == "{" else "[" * depth + "]" * depth
    good = ['{"text": "fine"}'] * (line - 1)
    body = "\n".join(good + ['{"text": ' + deep + "}"])
    if suffix == ".json":
        body = "[" + ",\n".join(good + ['{"text": ' + deep + "}"]) + "]"
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, f"deep{suffix}", body.encode())
        if depth + 1 <= MAX_DEPTH:  # the row object is the first level
            assert _load(path) is None  # a nested "text" is not text: a row error, still a user error
            return
        with pytest.raises(TunesmithError) as caught:
            read_records(path)
        message = str(caught.value)
        assert f"{MAX_DEPTH} levels" in message
        # JSON: the row, or the line where json itself ran out of stack (row N is on line N here).
        wheres = [f"line {line}"] if suffix == ".jsonl" else [f"row {line}", f"line {line}"]
        assert any(where in message for where in wheres), message


def test_numbers_surrogates_and_bad_gzip_blocks_are_user_errors(tmp_path: Path) -> None:
    """The crashes fuzzing found, kept as plain examples."""
    cases = {
        "huge.jsonl": b'{"text": "a"}\n{"text": ' + b"9" * 5000 + b"}\n",
        "huge.json": b'[{"text": "a"}, {"text": ' + b"9" * 5000 + b"}]",
        "surrogate.jsonl": b'{"text": "\\ud800 alone"}\n',
        "role.jsonl": b'{"messages": [{"role": ["user"], "content": "hi"}]}\n',
        "role2.jsonl": b'{"messages": [{"from": {"a": 1}, "value": "hi"}]}\n',
        "label.jsonl": b'{"prompt": "p", "completion": "c", "label": [1]}\n',
    }
    expected = {"huge.jsonl": "line 2", "huge.json": "row 2", "surrogate.jsonl": "line 1", "role.jsonl": "row 1",
                "role2.jsonl": "row 1", "label.jsonl": "row 1"}
    for name, raw in cases.items():
        path = _write(str(tmp_path), name, raw)
        with pytest.raises(TunesmithError) as caught:
            load_data(path)
        assert expected[name] in str(caught.value), str(caught.value)
    bad_block = bytearray(gzip.compress(b'{"text": "hello"}\n' * 200))
    bad_block[30:40] = b"\xff" * 10
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(bad_block))
    with pytest.raises(TunesmithError):
        load_data(path)


# --------------------------------------------------------------------------- the gate


def _gate(path: Path) -> None:
    try:
        card = check_data(path, label_check=False)
    except TunesmithError as e:
        _assert_user_message(e, path)
        return
    assert card.rows >= 0 and isinstance(card.score(), int)
    # As the API sends it: strict JSON (no NaN), encodable as UTF-8.
    json.dumps(card.to_json(), allow_nan=False, ensure_ascii=False).encode("utf-8")
    for finding in card.findings:
        assert finding.message and not any(isinstance(v, float) and not math.isfinite(v) for v in (finding.count,))


@GATE
@given(rows=_rows, suffix=st.sampled_from(TEXT_SUFFIXES))
def test_gate_on_weird_rows_reports_or_raises_a_user_error(rows: list[dict], suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _gate(_write(tmp, f"data{suffix}", _encode(rows, suffix)))


@GATE
@given(data=_bytes, suffix=st.sampled_from(TEXT_SUFFIXES))
def test_gate_on_arbitrary_bytes_reports_or_raises_a_user_error(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _gate(_write(tmp, f"data{suffix}", data))


# --------------------------------------------------------------------------- linear-time detectors

# ~200 KB rows built to make a backtracking regex (or a per-hit copy of the row) quadratic:
# repeated near-matches of each detector. Before the fix, the PEM, JWT and many-hits rows
# took 11-21 s each in find_pii; a linear scan takes well under a second.
ADVERSARIAL = {
    "PEM headers with no END": "-----BEGIN PRIVATE KEY-----\n" * 7_150,
    "JWT starts in one run": "eyJ-" * 50_000,
    "many emails": "a@b.co " * 28_500,
    "many SSNs": "123-45-6789 " * 16_600,
    "email local parts": "a." * 100_000 + "@",
    "email domain labels": "a@" + "a." * 100_000,
    "digits and spaces": "1 " * 100_000,
    "IBAN-like groups": "AA11 " * 40_000,
    "dashes": "-" * 200_000,
    "openai key starts": "sk-" * 66_000,
    "assignments": "key=" * 50_000,
    "IPv6-like colons": "1:" * 100_000,
    "HTML tags left open": "<a " * 66_000,
    "toxic phrase starts": "kill " * 40_000,
    "transcript speakers": "\n\nHuman:" * 25_000,
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_every_detector_is_linear_on_adversarial_rows(name: str) -> None:
    import time

    from tunesmith.data import augment, formats, pii, quality, textcheck

    text = ADVERSARIAL[name]
    detectors = {
        "find_pii": pii.find_pii,
        "toxic_terms": textcheck.toxic_terms,
        "words": textcheck._has_min_words,
        "html": quality._has_html,
        "encoding": lambda t: [quality._CONTROL.search(t), quality._MOJIBAKE.search(t)],
        "html cleaning": lambda t: quality._HTML_TAG.sub("", quality._HTML_BREAK.sub("\n", t)),
        "speakers": formats._SPEAKER.split,
        "answer prefix": lambda t: augment._PREFIX.sub("", t, count=1),
    }
    for detector, run in detectors.items():
        start = time.perf_counter()
        run(text)
        took = time.perf_counter() - start
        assert took < 5, f"{detector} took {took:.1f} s on {name} ({len(text) // 1000} KB)"
