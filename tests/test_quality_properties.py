"""Property tests: the loader and the data gate report problems, they never crash.

Random bytes and random JSON shapes must either load or raise ``TunesmithError`` (the
CLI prints that as one sentence); random chat rows must give a ``DataCard`` whose
findings name real row numbers, and ``fix_data`` must keep exactly the rows it does
not drop.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.formats import load_data
from tunesmith.data.quality import DataCard, check_data, fix_data
from tunesmith.errors import TunesmithError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_or_user_error(path: Path) -> None:
    try:
        load_data(path)
    except TunesmithError:  # DataError and friends: a message for the user, not a crash
        pass


# Bytes that look a little like data files, mixed with arbitrary bytes.
_chunks = st.sampled_from(
    [b"{", b"}", b"[", b"]", b'"', b",", b":", b"\n", b"\r\n", b"\t", b"text", b"label", b"messages", b"null",
     b'"role"', b'"content"', b"\xef\xbb\xbf", b"\xff", b"\x00", b"a", b"1", b"'", b";"]
)
_bytes = st.one_of(st.binary(max_size=300), st.lists(_chunks, max_size=60).map(b"".join))


@SETTINGS
@given(data=_bytes, suffix=st.sampled_from([".jsonl", ".csv", ".txt", ".tsv", ".json"]))
def test_random_bytes_load_or_raise_user_error(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(data)
        _load_or_user_error(path)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["user", "assistant", "system", "text", "label", "messages", "prompt", "chosen", "rejected"]),
)
_keys = st.one_of(
    st.sampled_from(["text", "label", "messages", "role", "content", "prompt", "completion", "chosen", "rejected",
                     "instruction", "input", "output", "question", "answer", "conversations", "from", "value"]),
    st.text(max_size=8),
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)),
    max_leaves=12,
)


@SETTINGS
@given(values=st.lists(st.one_of(_json, st.dictionaries(_keys, _json, min_size=1, max_size=4)), min_size=1,
                       max_size=6))
def test_random_json_shapes_load_or_raise_user_error(values: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        path.write_text("\n".join(json.dumps(v) for v in values) + "\n", encoding="utf-8")
        _load_or_user_error(path)
        # The same values as one JSON document.
        path = Path(tmp) / "data.json"
        path.write_text(json.dumps(values), encoding="utf-8")
        _load_or_user_error(path)


# Arbitrary text, plus pieces that trigger the checks: control characters, HTML, PII, blanks.
_text = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.sampled_from(["", " ", "\x00", "\x1b", "\u200b", "\ufffd", "Ã©", "<p>", "</div>", "&amp;", "&nbsp;",
                         "a@b.com", "4111 1111 1111 1111", "+1 415 555 0123", "hello", "world", "?", "\n",
                         "é", "日本", "🙂", "\r"]),
        max_size=8,
    ).map("".join),
)
_turn = st.builds(lambda role, content: {"role": role, "content": content},
                  st.sampled_from(["user", "assistant", "system"]), _text)
_chat_row = st.one_of(
    st.builds(lambda u, a: {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]},
              _text, _text),
    st.lists(_turn, min_size=1, max_size=4).map(lambda turns: {"messages": turns}),
)


@SETTINGS
@given(rows=st.lists(_chat_row, min_size=1, max_size=25).flatmap(
    # Repeat some rows so duplicates and conflicts occur often.
    lambda rows: st.lists(st.sampled_from(rows), min_size=0, max_size=5).map(lambda extra: rows + extra)
))
def test_gate_never_crashes_and_names_real_rows(rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chat.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        try:
            data = load_data(path)
        except TunesmithError:
            return  # e.g. a row the converter rejects: reported, not a crash
        card = check_data(path)
        assert isinstance(card, DataCard)
        assert card.rows == len(data.records)
        valid = set(data.rows)
        # JSONL rows are line numbers; every line holds one record here.
        assert valid <= set(range(1, len(rows) + 1))
        for finding in card.findings:
            assert finding.count >= len(finding.rows)
            assert set(finding.rows) <= valid, finding
        card.to_markdown()
        json.dumps(card.to_json(), ensure_ascii=False)

        result = fix_data(path, Path(tmp) / "out" / "fixed.jsonl")
        written = [line for line in Path(result.out_path).read_text(encoding="utf-8").split("\n") if line]
        assert result.rows_in == len(data.records)
        assert len(written) == result.rows_out == result.rows_in - result.dropped
        log = [json.loads(line) for line in Path(result.log_path).read_text(encoding="utf-8").splitlines()]
        dropped_rows = [entry["row"] for entry in log if entry["action"] == "dropped"]
        assert len(dropped_rows) == len(set(dropped_rows)) == result.dropped
        assert set(dropped_rows) <= valid
