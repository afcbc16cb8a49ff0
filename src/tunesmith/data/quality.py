"""The data quality gate: check canonical records for problems, write a data card, fix
what is safe to fix.

``check_data`` loads a training file (and optional validation/test files) with
``formats.load_data`` and runs, in order: encoding, schema/content, length (with a
tokenizer), duplicates/conflicts/leakage (``dedup.py``), PII (``pii.py``), a domain's
compliance profile when one is given (``identifiers.py``), labels (classification) and
preference-pair checks. Each problem is a ``Finding`` with a
severity: an ``error`` blocks training, a ``warning`` is reported. Rows are the source
row numbers of ``LoadedData.rows`` (``load.py`` says what they mean per file type).

A file that cannot be read at all (invalid UTF-8, a broken JSON line, a missing field) is
not a finding: the loader raises ``DataError`` naming file, row and reason, because there
are no records to judge until it is fixed.

``fix_data`` writes a cleaned copy in the canonical shape plus ``fix_log.jsonl``; it only
applies safe fixes (drop exact duplicates and rows without an answer, strip control
characters and HTML, redact PII and a profile's identifiers) and never touches the input
file.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from html.entities import name2codepoint
from itertools import pairwise
from pathlib import Path

import numpy as np

from tunesmith.data import dedup, identifiers, pii, textcheck
from tunesmith.data import labels as label_check
from tunesmith.data.formats import (
    LoadedData,
    length_percentiles,
    load_data,
    parse_columns,
    to_chat,
    token_lengths,
)
from tunesmith.data.identifiers import Profile
from tunesmith.errors import DataError

__all__ = ["DataCard", "Finding", "FixResult", "check_data", "fix_data", "write_card"]

# 20 rows per finding: enough to open the file and see the pattern, small enough for a card.
MAX_ROWS = 20
# 3 example texts per finding in the markdown card; 160 characters each keeps the table readable.
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 160
# 0.85: dedup.py's default; on short texts it catches only very close copies (see dedup.py).
NEAR_THRESHOLD = 0.85
# Outliers: 3x the 99th percentile is far beyond the normal tail of any real data set.
OUTLIER_FACTOR = 3
# In a small file an outlier must also be 10x the median row: a few rows vary a lot.
SMALL_FILE_MEDIAN_FACTOR = 10
# Classes under 5 rows cannot be learned or evaluated reliably (not even one per CV fold).
RARE_CLASS_ROWS = 5
# max/min class ratio above 10: the model learns to ignore the small classes.
IMBALANCE_RATIO = 10
# One-word answers are suspicious only where the typical (median) answer is longer than 3 words.
TYPICAL_ANSWER_WORDS = 3

CHECKS = (
    "schema", "encoding", "length", "duplicates", "conflicts", "leakage", "pii", "identifiers", "labels", "preference", "language", "toxicity",
)

# C0 and C1 control characters except \t \n \r.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# UTF-8 read as Latin-1/cp1252: "Ã©" (é), "â€™" (’), "Â " (nbsp) and friends.
_MOJIBAKE = re.compile(r"Ã[\u0080-\u00ff]|â€|Â[\u00a0-\u00bf]")
_HTML_TAGS = (
    "a|abbr|b|blockquote|body|br|center|code|div|em|font|h[1-6]|head|hr|html|i|img|li|ol|p|pre|"
    "script|small|span|strong|style|sub|sup|table|tbody|td|th|thead|tr|u|ul"
)
_HTML_TAG = re.compile(rf"</?(?:{_HTML_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<(?:br|/p|/div|/li|/tr|hr)(?:\s[^<>]*)?/?>", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|([a-zA-Z][a-zA-Z0-9]{1,31}));")
_REPLACEMENT = "\ufffd"


# ---------------------------------------------------------------------------------------
# Results


@dataclass
class Finding:
    """One problem found in the data, with the rows it affects."""

    check: str  # one of CHECKS
    severity: str  # "error" (blocks training) | "warning"
    message: str  # one sentence for people
    rows: list[int]  # source row numbers, at most the first MAX_ROWS
    count: int  # how many rows are affected in all
    path: str = ""  # the file the rows belong to (the training file unless said otherwise)
    examples: list[dict] = field(default_factory=list)  # [{"row": N, "text": "..."}], for people


# One number for a dashboard; the findings say what to do. Errors weigh four times a warning
# because they are the problems that make a model learn the wrong thing.
SCORE_FORMULA = (
    "100 x (1 - sum over findings of weight x affected rows / rows), at least 0; "
    "weight 1 for an error, 0.25 for a warning"
)


@dataclass
class DataCard:
    """What the gate found in a data set: findings and statistics."""

    path: str
    format: str
    task: str
    rows: int
    findings: list[Finding]
    stats: dict  # token/character length percentiles, label counts for classify, ...
    notes: list[str] = field(default_factory=list)  # how the file was read (LoadedData.notes), for people
    profile: str | None = None  # the compliance profile enforced ("hipaa-safe-harbor: HIPAA ..."), if any

    def errors(self) -> list[Finding]:
        """Findings that block training."""
        return [f for f in self.findings if f.severity == "error"]

    def warnings(self) -> list[Finding]:
        """Findings that are reported but do not block training."""
        return [f for f in self.findings if f.severity == "warning"]

    def score(self) -> int:
        """Quality score from 0 to 100 (see ``SCORE_FORMULA``)."""
        if not self.rows:
            return 0
        penalty = sum((1.0 if f.severity == "error" else 0.25) * f.count / self.rows for f in self.findings)
        return max(0, round(100 * (1 - penalty)))

    def to_json(self) -> dict:
        """The card as a JSON-serialisable dict (``data_card.json``)."""
        card = asdict(self)
        card["summary"] = {
            "errors": len(self.errors()),
            "warnings": len(self.warnings()),
            "quality_score": self.score(),
            "score_formula": SCORE_FORMULA,
        }
        return card

    def to_html(self) -> str:
        """A self-contained HTML page of the card (``data_card.html``), no external assets."""
        esc = html.escape
        rows = "".join(
            f"<tr class='{esc(f.severity)}'><td>{esc(f.severity)}</td><td>{esc(f.check)}</td><td>{f.count}</td>"
            f"<td>{esc(f.message)}<br><small>rows: {esc(', '.join(map(str, f.rows)))}</small></td></tr>"
            for f in self.findings
        )
        table = (
            f"<table><tr><th>severity</th><th>check</th><th>rows</th><th>finding</th></tr>{rows}</table>"
            if self.findings
            else "<p>No problems found.</p>"
        )
        return (
            "<!doctype html><meta charset='utf-8'><title>Data card</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
            ".error td:first-child{color:#b00;font-weight:bold}.warning td:first-child{color:#a60}</style>"
            f"<h1>Data card: {esc(self.path)}</h1>"
            f"<p>{esc(self.format)} &middot; {esc(self.task)} &middot; {self.rows} rows &middot; "
            f"{len(self.errors())} errors (block training) &middot; {len(self.warnings())} warnings</p>"
            f"<p><b>Quality score {self.score()} / 100</b> <small>({esc(SCORE_FORMULA)})</small></p>"
            + (f"<p>Compliance profile: {esc(self.profile)}</p>" if self.profile else "")
            + "".join(f"<p><i>note: {esc(note)}</i></p>" for note in self.notes)
            + table
            + f"<h2>Statistics</h2><pre>{esc(json.dumps(self.stats, indent=2, ensure_ascii=False))}</pre>"
        )

    def to_markdown(self) -> str:
        """The card for people (``data_card.md``): a summary table, then each finding with example rows."""
        lines = [
            f"# Data card: {self.path}",
            "",
            f"- Format: {self.format}",
            f"- Task: {self.task}",
            f"- Rows: {self.rows}",
            f"- Errors: {len(self.errors())} (block training)",
            f"- Warnings: {len(self.warnings())}",
            f"- Quality score: {self.score()} / 100 ({SCORE_FORMULA})",
            *([f"- Compliance profile: {self.profile}"] if self.profile else []),
            *(f"- Note: {note}" for note in self.notes),
            "",
        ]
        if not self.findings:
            lines += ["No problems found.", ""]
        else:
            lines += ["| # | Check | Severity | Rows | Message |", "| --- | --- | --- | --- | --- |"]
            for i, f in enumerate(self.findings, start=1):
                lines.append(f"| {i} | {f.check} | {f.severity} | {f.count} | {_md_cell(f.message)} |")
            lines.append("")
            for i, f in enumerate(self.findings, start=1):
                lines += [f"## {i}. {f.check} ({f.severity})", "", f.message, ""]
                if f.path and f.path != self.path:
                    lines += [f"File: `{f.path}`", ""]
                if f.rows:
                    more = f" and {f.count - len(f.rows)} more" if f.count > len(f.rows) else ""
                    lines += [f"Rows: {', '.join(map(str, f.rows))}{more}", ""]
                for example in f.examples:
                    lines.append(f"- row {example['row']}: `{_md_cell(example['text'])}`")
                if f.examples:
                    lines.append("")
        if self.stats:
            lines += ["## Statistics", "", "```json", json.dumps(self.stats, indent=2, ensure_ascii=False), "```", ""]
        return "\n".join(lines)


@dataclass
class FixResult:
    """What ``fix_data`` did: where it wrote, and how many rows it dropped, redacted or changed."""

    out_path: str
    log_path: str
    rows_in: int
    rows_out: int
    dropped: int
    redacted: int
    changed: int


# ---------------------------------------------------------------------------------------
# Public API


def check_data(
    train_path,
    validation_path=None,
    test_path=None,
    tokenizer=None,
    max_length: int | None = None,
    columns=None,
    label_check: bool = True,
    on_batch=None,
    task: str | None = None,
    profile: Profile | None = None,
) -> DataCard:
    """Run every quality check on a training file (and leakage checks against validation
    and test files) and return a ``DataCard``.

    ``tokenizer`` enables the length checks (token counts as the model sees them);
    ``max_length`` flags rows that would be cut. ``columns`` is a mapping or a
    ``"text=body,label=tag"`` string, passed to ``load_data``. ``label_check`` runs the
    embedding-based label-error check on classification data (about 60 s per 10k rows on
    2 cores; ``on_batch(n)`` reports embedding progress). ``task`` says what the data will
    train ("chat", "classify", ...): text+label data checked as "chat" is checked as the
    chats `train` makes of it. ``profile`` (a domain's compliance profile) makes every
    identifier of its kinds an error, one finding per kind (check "identifiers"). Raises
    ``DataError`` when a file cannot be read (e.g. invalid UTF-8).
    """
    columns = parse_columns(columns) if isinstance(columns, str) else columns
    bad: list[tuple[int, str]] = []
    data = _as_task(load_data(train_path, columns=columns, bad_rows=bad), task)
    ctx = _Context(data)
    findings: list[Finding] = []
    if bad:
        row, reason = bad[0]
        findings.append(Finding(
            "schema", "error",
            f"{len(bad)} rows cannot be used as {data.format.value} data (e.g. row {row} {reason}); "
            "fix them (--fix drops them).",
            [r for r, _ in bad][:MAX_ROWS], len(bad), data.path,
        ))
    if data.unused_columns:
        # A file-level finding (no row is wrong, so the score is unchanged): nothing is dropped unseen.
        names = ", ".join(data.unused_columns)
        findings.append(Finding(
            "schema", "warning",
            f"Column(s) {names} are in the file but not used as {data.format.value} data; if they matter, map them "
            "with --columns (see `tunesmith data inspect FILE`), e.g. text=a+b joins two text columns.",
            [], 0, data.path,
        ))
    if data.unused_keys:
        # The same for keys inside the turns (e.g. a timestamp on each message): reported, not lost unseen.
        findings.append(Finding(
            "schema", "warning",
            f"Message key(s) {', '.join(data.unused_keys)} are in the file but not read as {data.format.value} data, "
            "so the model never sees them; if they matter, move their text into the message content.",
            [], 0, data.path,
        ))
    stats: dict = {"characters": _char_stats(data.records)} if data.records else {}
    findings += _check_encoding(ctx)
    findings += _check_schema(ctx)
    if tokenizer is not None and data.records:
        findings += _check_length(ctx, tokenizer, max_length, stats)
    findings += _check_duplicates(ctx)
    for other_path in (validation_path, test_path):
        if other_path is not None:
            findings += _check_leakage(ctx, _as_task(load_data(other_path, columns=columns), task))
    findings += _check_pii(ctx, skip=frozenset(profile.kinds) if profile else frozenset())
    if profile is not None:
        findings += _check_identifiers(ctx, profile)
    if data.records:
        findings += _check_language(ctx, stats)
        findings += _check_toxicity(ctx)
    if data.task == "classify":
        findings += _check_labels(ctx, stats)
        if label_check and len(data.records) >= 10:
            findings += _check_label_errors(ctx, on_batch)
    if data.task == "preference":
        findings += _check_preference(ctx)
    return DataCard(
        path=data.path,
        format=data.format.value,
        task=data.task,
        rows=len(data.records),
        findings=findings,
        stats=stats,
        notes=list(data.notes),
        profile=f"{profile.name}: {profile.regulation}" if profile else None,
    )


def _as_task(data: LoadedData, task: str | None) -> LoadedData:
    """Check the data as the task it will train: text+label rows meant for chat SFT become
    chats (text in, label out), as `train` converts them; any other mismatch is an error."""
    if task is None or task == data.task:
        return data
    if task == "chat" and data.task == "classify":
        return replace(data, records=to_chat(data), task="chat")
    raise DataError(
        f"{data.path} holds {data.task} data ({data.format.value}), not {task} data; pass --task {data.task}, "
        "or --columns to read other columns."
    )


def write_card(card: DataCard, out_dir) -> None:
    """Write ``data_card.json``, ``data_card.md`` and ``data_card.html`` into ``out_dir`` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_card.json").write_text(json.dumps(card.to_json(), indent=2, ensure_ascii=False) + "\n")
    (out / "data_card.md").write_text(card.to_markdown())
    (out / "data_card.html").write_text(card.to_html())


CONFLICT_POLICIES = ("keep-majority", "keep-first")


def fix_data(
    card_input_path, out_path, columns=None, test_path=None, conflicts: str | None = None, profile: Profile | None = None
) -> FixResult:
    """Write a cleaned copy of a data file as canonical JSONL, and ``fix_log.jsonl`` next to it.

    Safe fixes only: drop exact duplicates (the first copy stays), drop rows without an
    answer (empty assistant turn, no assistant turn, an empty preference side), drop rows
    whose prompt is also in ``test_path`` (the test set stays as it is), strip control
    characters and HTML tags (entities are unescaped), redact PII with typed placeholders
    such as ``[EMAIL]``. Conflicting answers (one prompt, different answers) stay unless
    ``conflicts`` says which to keep: "keep-majority" (the most common answer, the first
    on a tie) or "keep-first"; rows with the other answers are dropped. With a compliance
    ``profile`` every identifier of its kinds is replaced by a numbered placeholder, the
    same one throughout a row (``[PERSON_1]`` in every turn for one person, ``[PERSON_2]``
    for the next); the log names the kinds per row, never the values. Code spans are left
    alone. The input file is never modified.
    """
    if conflicts is not None and conflicts not in CONFLICT_POLICIES:
        raise DataError(f"--conflicts must be one of {', '.join(CONFLICT_POLICIES)}, not {conflicts!r}.")
    columns = parse_columns(columns) if isinstance(columns, str) else columns
    src, out = Path(card_input_path), Path(out_path)
    if out.resolve() == src.resolve():
        raise DataError(f"--fix would overwrite its input {src}; choose another output path.")
    bad: list[tuple[int, str]] = []
    data = load_data(src, columns=columns, bad_rows=bad)
    log: list[dict] = [{"row": row, "action": "dropped", "reason": reason} for row, reason in bad]
    drop: dict[int, str] = {}  # index -> reason
    for i, record in enumerate(data.records):
        reason = _missing_answer(record) or _identical_pair(record) or _empty_prompt(record)
        if reason:
            drop[i] = reason
    index_of = {row: i for i, row in enumerate(data.rows)}
    if test_path is not None:
        name = Path(test_path).name
        in_test = {key for record in load_data(test_path, columns=columns).records if (key := dedup.leak_key(record))}
        for i, record in enumerate(data.records):
            if dedup.leak_key(record) in in_test:
                drop.setdefault(i, f"also in the test file {name}")
    if conflicts is not None:
        for row in _conflict_losers(data.records, data.rows, conflicts):
            drop.setdefault(index_of[row], f"conflicting answer ({conflicts})")
    for group in dedup.exact_duplicates(data.records, data.rows):
        for row in group.rows[1:]:
            drop.setdefault(index_of[row], f"exact duplicate of row {group.rows[0]}")
    kept: list[dict] = []
    kept_rows: list[int] = []
    redacted = changed = 0
    found = _identifiers_by_text(data.records, drop, profile) if profile is not None else {}
    for i, (record, row) in enumerate(zip(data.records, data.rows)):
        if i in drop:
            log.append({"row": row, "action": "dropped", "reason": drop[i]})
            continue
        id_kinds: Counter = Counter()  # the profile's kinds redacted in this row
        redact = _row_redactor(profile, found, id_kinds) if profile is not None else None
        cleaned, fixes = _clean_record(record, redact)
        reason = _missing_answer(cleaned) or _identical_pair(cleaned) or _empty_prompt(cleaned)
        if reason:
            log.append({"row": row, "action": "dropped", "reason": f"{reason} after cleaning"})
            continue
        if fixes["changed"]:
            changed += 1
            log.append({"row": row, "action": "changed", "reason": ", ".join(sorted(fixes["changed"]))})
        if fixes["pii"] or id_kinds:
            redacted += 1
            kinds = dict(sorted((Counter(fixes["pii"]) + id_kinds).items()))
            line = {"row": row, "action": "redacted", "reason": "personal data or secrets", "kinds": kinds}
            if id_kinds:
                line["reason"] = f"identifiers under {profile.name}" + (" and personal data or secrets" if fixes["pii"] else "")
                line["profile"] = profile.name
            log.append(line)
        kept.append(cleaned)
        kept_rows.append(row)
    if conflicts is not None and profile is not None:
        # Redaction makes rows identical that differed only in a name or a number
        # ("[ORGANIZATION_1] may not assign ..."); where their answers differ, the policy applies again.
        losers = set(_conflict_losers(kept, kept_rows, conflicts))
        log += [{"row": row, "action": "dropped", "reason": f"conflicting answer once redacted ({conflicts})"}
                for row in sorted(losers)]
        kept = [record for record, row in zip(kept, kept_rows) if row not in losers]
    log.sort(key=lambda line: line["row"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for record in kept:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    log_path = out.parent / "fix_log.jsonl"
    with log_path.open("w", encoding="utf-8") as f:
        for line in log:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return FixResult(
        out_path=str(out),
        log_path=str(log_path),
        rows_in=len(data.records) + len(bad),
        rows_out=len(kept),
        dropped=sum(1 for line in log if line["action"] == "dropped"),
        redacted=redacted,
        changed=changed,
    )


def _conflict_losers(records: list[dict], rows: list[int], policy: str) -> list[int]:
    """The rows a conflict `policy` drops: in each group of one prompt with different answers,
    those whose answer is not the kept one (the most common, the first on a tie; or the first)."""
    at = {row: i for i, row in enumerate(rows)}
    losers = []
    for group in dedup.conflicting_answers(records, rows):
        answers = [_answer_key(records[at[row]]) for row in group.rows]
        keep = Counter(answers).most_common(1)[0][0] if policy == "keep-majority" else answers[0]
        losers += [row for row, answer in zip(group.rows, answers) if answer != keep]
    return losers


# ---------------------------------------------------------------------------------------
# Checks


class _Context:
    """The loaded training data with helpers to turn row lists into findings."""

    def __init__(self, data: LoadedData):
        self.data = data
        self.by_row = dict(zip(data.rows, data.records))

    def finding(self, check: str, severity: str, message: str, rows: list[int], data: LoadedData | None = None):
        data = data or self.data
        by_row = self.by_row if data is self.data else dict(zip(data.rows, data.records))
        rows = list(dict.fromkeys(rows))
        examples = [
            {"row": r, "text": _shorten(dedup.record_text(by_row[r]))} for r in rows[:MAX_EXAMPLES] if r in by_row
        ]
        return Finding(check, severity, message, rows[:MAX_ROWS], len(rows), data.path, examples)


def _text_fields(record: dict) -> Iterator[str]:
    """Every free-text string of a canonical record."""
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        for message in record.get(key) or []:
            yield message.get("content") or ""  # None: a turn that only calls tools
    if isinstance(record.get("text"), str):
        yield record["text"]
    if isinstance(record.get("label"), str):
        yield record["label"]


def _code_fields(record: dict, labels: bool = True) -> Iterator[tuple[str, list[tuple[int, int]]]]:
    """Every free-text string of a record with its code spans (``textcheck.code_spans``):
    an assistant turn that is all code is one span. ``labels=False`` leaves out a
    classification label (a category name: the identifier check reads prose)."""
    for key in ("messages", "prompt", "chosen", "rejected", "completion"):
        for message in record.get(key) or []:
            text = message.get("content") or ""
            answer = message["role"] == "assistant" or key == "completion"
            yield text, textcheck.code_spans(text, answer=answer)
    if isinstance(record.get("text"), str):
        yield record["text"], textcheck.code_spans(record["text"])
    if labels and isinstance(record.get("label"), str):
        yield record["label"], []


def _has_html(text: str) -> bool:
    if _HTML_TAG.search(text):
        return True
    return any(m.group(1) is None or m.group(1) in name2codepoint for m in _ENTITY.finditer(text))


_ENCODING_PROBLEMS = (
    ("control characters", lambda t: _CONTROL.search(t) is not None, "strip them (--fix does)"),
    (
        "mojibake (UTF-8 decoded as Latin-1, e.g. 'Ã©' for 'é')",
        lambda t: _MOJIBAKE.search(t) is not None,
        "re-export the source as UTF-8 or repair it with ftfy",
    ),
    ("leftover HTML tags or entities", _has_html, "strip them (--fix does)"),
    (
        "the replacement character U+FFFD (text was lost in a bad decode)",
        lambda t: _REPLACEMENT in t,
        "re-export the source as UTF-8",
    ),
)


def _check_encoding(ctx: _Context) -> list[Finding]:
    found: dict[str, list[int]] = {name: [] for name, _, _ in _ENCODING_PROBLEMS}
    for record, row in zip(ctx.data.records, ctx.data.rows):
        texts = list(_text_fields(record))
        # HTML in code is code (an answer that writes a web page), not leftover markup.
        prose = [textcheck.prose(t, spans) for t, spans in _code_fields(record)]
        for name, test, _ in _ENCODING_PROBLEMS:
            if any(test(t) for t in (prose if test is _has_html else texts)):
                found[name].append(row)
    return [
        ctx.finding("encoding", "warning", f"{len(found[name])} rows contain {name}; {fix}.", found[name])
        for name, _, fix in _ENCODING_PROBLEMS
        if found[name]
    ]


def _blank(text) -> bool:
    return text is None or not str(text).strip()


def _missing_answer(record: dict) -> str | None:
    """Why a record has no usable answer, or None. These rows are dropped by ``fix_data``."""
    if "messages" in record:
        roles = [m["role"] for m in record["messages"]]
        if "assistant" not in roles:
            return "no assistant turn"
        # A turn that calls tools answers with its calls, even with no text.
        if any(m["role"] == "assistant" and _blank(m.get("content")) and not m.get("tool_calls") for m in record["messages"]):
            return "empty assistant answer"
    elif "chosen" in record:
        for side in ("chosen", "rejected"):
            if all(_blank(m["content"]) and not m.get("tool_calls") for m in record[side]):
                return f"empty {side} side"
    elif "completion" in record:
        if all(_blank(m["content"]) and not m.get("tool_calls") for m in record["completion"]):
            return "empty completion"
    elif "label" in record and _blank(record["label"]):
        return "empty label"
    return None


def _answer_key(record: dict) -> str:
    """The answer that ``dedup.conflicting_answers`` compares (the label for KTO)."""
    pair = dedup.record_prompt_answer(record)
    answer = str(record["label"]) if "completion" in record else (pair[1] if pair else "")
    return dedup.normalize(answer)


def _empty_prompt(record: dict) -> str | None:
    """A user turn of nothing (or only whitespace); ``fix_data`` drops the row."""
    if any(m["role"] == "user" and _blank(m["content"]) for m in record.get("messages") or []):
        return "empty user turn"
    return None


def _identical_pair(record: dict) -> str | None:
    """A preference pair whose two sides say the same teaches nothing; ``fix_data`` drops it."""
    if "chosen" in record and _side_text(record["chosen"]) == _side_text(record["rejected"]):
        return "chosen identical to rejected"
    return None


def _check_schema(ctx: _Context) -> list[Finding]:
    empty, no_assistant, double, system_late, one_word, no_prompt = [], [], [], [], [], []
    answers: list[tuple[int, int]] = []  # (row, words of the last assistant answer)
    for record, row in zip(ctx.data.records, ctx.data.rows):
        if "chosen" in record:
            continue  # empty preference sides are the preference check's
        reason = _missing_answer(record)
        if reason == "no assistant turn":
            no_assistant.append(row)
        elif reason:
            empty.append(row)
        messages = record.get("messages")
        if not messages:
            continue
        if _empty_prompt(record):
            no_prompt.append(row)
        roles = [m["role"] for m in messages]
        if any(a == b == "assistant" for a, b in pairwise(roles)):
            double.append(row)
        if "system" in roles[1:]:
            system_late.append(row)
        pair = dedup.record_prompt_answer(record)
        if pair is not None and not _blank(pair[1]):
            answers.append((row, textcheck.word_count(pair[1])))
    findings = []
    if empty:
        findings.append(
            ctx.finding(
                "schema",
                "error",
                f"{len(empty)} rows have an empty answer or label; fill them in or drop them (--fix drops them).",
                empty,
            )
        )
    if no_assistant:
        findings.append(
            ctx.finding(
                "schema",
                "error",
                f"{len(no_assistant)} chats have no assistant turn, so there is nothing to learn; add an "
                "answer or drop them (--fix drops them).",
                no_assistant,
            )
        )
    if no_prompt:
        findings.append(
            ctx.finding(
                "schema",
                "error",
                f"{len(no_prompt)} chats have an empty user turn, so the answer replies to nothing; write the "
                "prompt or drop them (--fix drops them).",
                no_prompt,
            )
        )
    if double:
        findings.append(
            ctx.finding(
                "schema",
                "warning",
                f"{len(double)} chats have two assistant turns in a row; merge them or add the user turn between.",
                double,
            )
        )
    if system_late:
        findings.append(
            ctx.finding(
                "schema",
                "warning",
                f"{len(system_late)} chats have a system message that is not the first turn; move it to the start.",
                system_late,
            )
        )
    if answers and statistics.median(words for _, words in answers) > TYPICAL_ANSWER_WORDS:
        one_word = [row for row, words in answers if words == 1]
        if one_word:
            findings.append(
                ctx.finding(
                    "schema",
                    "warning",
                    f"{len(one_word)} answers are a single word where most answers are longer; check they "
                    "are complete.",
                    one_word,
                )
            )
    return findings


def _check_length(ctx: _Context, tokenizer, max_length: int | None, stats: dict) -> list[Finding]:
    lengths = token_lengths(ctx.data.records, ctx.data.task, tokenizer)
    summary = length_percentiles(lengths)
    stats["tokens"] = summary
    findings = []
    if max_length is not None:
        over = [(row, n) for row, n in zip(ctx.data.rows, lengths) if n > max_length]
        if over:
            cut = sum(n - max_length for _, n in over)
            findings.append(
                ctx.finding(
                    "length",
                    "warning",
                    f"{len(over)} rows are longer than max_length {max_length}; {cut} tokens in all would be cut.",
                    [row for row, _ in over],
                )
            )
    limit, basis = _outlier_limit(lengths)
    outliers = [row for row, n in zip(ctx.data.rows, lengths) if n > limit]
    if outliers:
        findings.append(
            ctx.finding(
                "length",
                "warning",
                f"{len(outliers)} rows are extreme length outliers (over {limit} tokens, {basis}); check "
                "they belong in the data.",
                outliers,
            )
        )
    return findings


def _outlier_limit(lengths: list[int]) -> tuple[int, str]:
    """The length above which a row is an extreme outlier, and how it was found.

    OUTLIER_FACTOR x the 99th percentile; in a file under 200 rows the 99th percentile is
    the outlier itself, so there the percentile leaves out the top two rows (1 - 2/n) and
    the limit is also at least SMALL_FILE_MEDIAN_FACTOR x the median, so that ordinary
    spread in a few rows is not an alarm.
    """
    q = 99.0 if len(lengths) >= 200 else max(0.0, 100 * (1 - 2 / len(lengths)))
    base = math.ceil(float(np.percentile(lengths, q)))
    if q == 99.0:
        return base * OUTLIER_FACTOR, f"{OUTLIER_FACTOR}x the 99th percentile"
    median = statistics.median(lengths)
    limit = max(base * OUTLIER_FACTOR, math.ceil(median * SMALL_FILE_MEDIAN_FACTOR))
    return limit, f"{OUTLIER_FACTOR}x the typical longest rows and {SMALL_FILE_MEDIAN_FACTOR}x the median"


def _check_duplicates(ctx: _Context) -> list[Finding]:
    records, rows = ctx.data.records, ctx.data.rows
    findings = []
    exact = dedup.exact_duplicates(records, rows)
    if exact:
        repeats = [row for g in exact for row in g.rows[1:]]
        first = exact[0]
        findings.append(
            ctx.finding(
                "duplicates",
                "warning",
                f"{len(repeats)} rows repeat an earlier row exactly (e.g. row {first.rows[1]} repeats row "
                f"{first.rows[0]}); --fix keeps the first copy.",
                repeats,
            )
        )
    near = dedup.near_duplicates(records, rows, threshold=NEAR_THRESHOLD)
    if near:
        members = [row for g in near for row in g.rows[1:]]
        first = near[0]
        findings.append(
            ctx.finding(
                "duplicates",
                "warning",
                f"{len(members)} rows nearly repeat an earlier row (similarity >= {NEAR_THRESHOLD}, e.g. rows "
                f"{', '.join(map(str, first.rows[:5]))}); check whether they add anything.",
                members,
            )
        )
    conflicts = dedup.conflicting_answers(records, rows)
    if conflicts:
        affected = [row for c in conflicts for row in c.rows]
        first = conflicts[0]
        what = "labels" if ctx.data.task == "classify" else "answers"
        findings.append(
            ctx.finding(
                "conflicts",
                "error",
                f"{len(conflicts)} prompts appear with different {what} ({len(affected)} rows, e.g. rows "
                f"{', '.join(map(str, first.rows[:5]))}); keep one {what[:-1]} per prompt: edit the rows, or "
                "`tunesmith data check FILE --fix OUT --conflicts keep-majority` (or keep-first) drops the others.",
                affected,
            )
        )
    return findings


def _check_leakage(ctx: _Context, other: LoadedData) -> list[Finding]:
    found = dedup.leakage(
        ctx.data.records, other.records, other.rows, threshold=NEAR_THRESHOLD, train_rows=ctx.data.rows
    )
    name = Path(other.path).name
    findings = []
    if found["exact"]:
        findings.append(
            ctx.finding(
                "leakage",
                "error",
                f"{len(found['exact'])} rows of {name} also appear in the training file, which inflates its "
                "scores; remove them from one side.",
                found["exact"],
                data=other,
            )
        )
    if found["near"]:
        row, train_row, _ = found["near"][0]
        findings.append(
            ctx.finding(
                "leakage",
                "warning",
                f"{len(found['near'])} rows of {name} nearly match a training row (e.g. row {row} and "
                f"training row {train_row}); check them.",
                [r for r, _, _ in found["near"]],
                data=other,
            )
        )
    return findings


def _check_pii(ctx: _Context, skip: frozenset[str] = frozenset()) -> list[Finding]:
    """PII warnings; ``skip`` holds kinds a compliance profile reports as errors instead."""
    rows_by_kind: dict[str, list[int]] = {}
    hits = Counter()
    for record, row in zip(ctx.data.records, ctx.data.rows):
        for text, code in _code_fields(record):
            for match in pii.find_pii(text, code):
                if match.kind in skip:
                    continue
                hits[match.kind] += 1
                found = rows_by_kind.setdefault(match.kind, [])
                if not found or found[-1] != row:
                    found.append(row)
    return [
        ctx.finding(
            "pii",
            "warning",
            f"{len(rows)} rows contain {hits[kind]} {_KIND_NAMES.get(kind, kind)}; --fix replaces them with "
            f"{pii.PLACEHOLDERS[kind]}.",
            rows,
        )
        for kind, rows in rows_by_kind.items()
    ]


_KIND_NAMES = {
    "email": "e-mail addresses",
    "phone": "phone numbers",
    "card": "credit-card numbers",
    "iban": "IBANs",
    "ssn": "US social security numbers",
    "ip": "IP addresses",
    "secret": "API keys or secrets",
}


def _check_identifiers(ctx: _Context, profile: Profile) -> list[Finding]:
    """One error per identifier kind of ``profile`` found, with examples that show where
    the identifier is but not the identifier itself."""
    # Labels are left out: they are the task's category names, which --fix does not redact, and
    # the named-entity model reads short title-case names as names ("Cap on Liability": a person).
    fields = [(row, text, code) for record, row in zip(ctx.data.records, ctx.data.rows)
              for text, code in _code_fields(record, labels=False)]
    found = identifiers.find_identifiers_batch([t for _, t, _ in fields], profile.kinds, [c for _, _, c in fields])
    rows_by_kind: dict[str, list[int]] = {}
    hits: Counter = Counter()
    examples: dict[str, list[dict]] = {}
    for (row, text, _), matches in zip(fields, found):
        for m in matches:
            hits[m.kind] += 1
            rows = rows_by_kind.setdefault(m.kind, [])
            if not rows or rows[-1] != row:
                rows.append(row)
                if len(examples.setdefault(m.kind, [])) < MAX_EXAMPLES:
                    examples[m.kind].append({"row": row, "text": _masked_example(text, matches, m)})
    file = ctx.data.path
    fix = f"`tunesmith data check {shlex.quote(file)} --fix {shlex.quote(Path(file).stem + '.clean.jsonl')}`"
    findings = []
    for kind in profile.kinds:
        if kind not in rows_by_kind:
            continue
        rows = rows_by_kind[kind]
        what = re.sub(r" [(].*[)]$", "", identifiers.KINDS[kind])  # "names of people", without the how
        message = (
            f"{len(rows)} rows contain {hits[kind]} {kind} identifiers ({what}), which the "
            f"{profile.name} profile ({profile.regulation}) requires removed; {fix} with the same --domain "
            f"replaces each with a numbered placeholder such as [{kind.upper()}_1]."
        )
        findings.append(Finding("identifiers", "error", message, rows[:MAX_ROWS], len(rows), file, examples[kind]))
    return findings


def _masked_example(text: str, matches: list, around) -> str:
    """The text near the identifier ``around``, every identifier in it shown as ``[KIND]``."""
    start = max(0, around.start - EXAMPLE_CHARS // 3)
    parts, pos = [], start
    for m in matches:
        if m.end <= start:
            continue
        parts += [text[pos : max(pos, m.start)], f"[{m.kind.upper()}]"]
        pos = max(pos, m.end)
    parts.append(text[pos:])
    return ("…" if start else "") + _shorten("".join(parts))


def _identifiers_by_text(records: list[dict], drop: dict[int, str], profile: Profile) -> dict[str, list]:
    """The identifiers in every prose piece ``fix_data`` will redact, found in one batch.

    A first cleaning pass only collects the pieces (after HTML is stripped, so the spans fit
    the text the redaction sees); the named-entity model then reads them all at once."""
    pieces: list[str] = []
    for i, record in enumerate(records):
        if i not in drop:
            _clean_record(record, lambda text: pieces.append(text) or text)
    unique = list(dict.fromkeys(pieces))
    return dict(zip(unique, identifiers.find_identifiers_batch(unique, profile.kinds)))


def _row_redactor(profile: Profile, found: dict[str, list], kinds: Counter):
    """A redaction for the prose of one row: one placeholder mapping for all its fields."""
    mapping: dict = {}

    def redact(text: str) -> str:
        redacted, matches = identifiers.redact_identifiers(text, profile.kinds, mapping, matches=found.get(text))
        kinds.update(m.kind for m in matches)
        return redacted

    return redact


def _check_labels(ctx: _Context, stats: dict) -> list[Finding]:
    labels = [record["label"] for record in ctx.data.records]
    counts = Counter(labels)
    stats["labels"] = dict(counts.most_common())
    findings = []
    if not counts:
        return findings
    rare = sorted(label for label, n in counts.items() if n < RARE_CLASS_ROWS)
    if rare:
        rows = [row for row, label in zip(ctx.data.rows, labels) if label in rare]
        shown = ", ".join(f"{label} ({counts[label]})" for label in rare[:10])
        findings.append(
            ctx.finding(
                "labels",
                "warning",
                f"{len(rare)} classes have fewer than {RARE_CLASS_ROWS} rows ({shown}); add examples or merge them.",
                rows,
            )
        )
    (top, most), (bottom, least) = counts.most_common()[0], counts.most_common()[-1]
    ratio = most / least
    stats["imbalance_ratio"] = round(ratio, 2)
    if ratio > IMBALANCE_RATIO:
        rows = [row for row, label in zip(ctx.data.rows, labels) if label == bottom]
        findings.append(
            ctx.finding(
                "labels",
                "warning",
                f"The classes are imbalanced: '{top}' has {most} rows and '{bottom}' {least} (ratio "
                f"{ratio:.1f}); balance them or weight the loss.",
                rows,
            )
        )
    return findings


def _check_label_errors(ctx: _Context, on_batch=None) -> list[Finding]:
    """Rows whose label a cross-validated classifier on MiniLM embeddings confidently
    disagrees with (cleanlab's confident learning)."""
    try:
        label_check.embedding_model_path()
    except DataError as exc:  # the embedding model is an optional install: say the check did not run
        return [ctx.finding("labels", "warning", f"The label-error check did not run: {exc}", [])]
    texts = [record["text"] for record in ctx.data.records]
    given = [record["label"] for record in ctx.data.records]
    embeddings = label_check.embed(texts, on_batch=on_batch)
    issues = label_check.suspected_label_errors(texts, given, embeddings=embeddings)
    if not issues:
        return []
    first = issues[0]
    row = ctx.data.rows[first.index]
    return [
        ctx.finding(
            "labels",
            "warning",
            f"{len(issues)} rows may carry the wrong label (most suspicious: row {row}, labelled '{first.given}', "
            f"looks like '{first.suggested}'); review them, most suspicious first.",
            [ctx.data.rows[issue.index] for issue in issues],
        )
    ]


def _check_language(ctx: _Context, stats: dict) -> list[Finding]:
    texts = [" ".join(_text_fields(record)) for record in ctx.data.records]
    mix = textcheck.language_mix(texts)
    stats["languages"] = mix["counts"]
    if not mix["other_rows"]:
        return []
    others = Counter(mix["counts"])
    others.pop(mix["main"], None)
    shown = ", ".join(f"{lang}: {n}" for lang, n in others.most_common(5))
    return [
        ctx.finding(
            "language",
            "warning",
            f"{len(mix['other_rows'])} rows are not in the main language '{mix['main']}' ({shown}); "
            "check that the mix is intended.",
            [ctx.data.rows[i] for i in mix["other_rows"]],
        )
    ]


def _check_toxicity(ctx: _Context) -> list[Finding]:
    rows, terms = [], Counter()
    for record, row in zip(ctx.data.records, ctx.data.rows):
        found = [t for text in _text_fields(record) for t in textcheck.toxic_terms(text)]
        if found:
            rows.append(row)
            terms.update(found)
    if not rows:
        return []
    return [
        ctx.finding(
            "toxicity",
            "warning",
            f"{len(rows)} rows contain abusive terms from the built-in lexicon ({len(terms)} distinct); "
            "review them unless the data is meant to hold such text (e.g. red-teaming).",
            rows,
        )
    ]


def _check_preference(ctx: _Context) -> list[Finding]:
    same, empty, context = [], [], []
    for record, row in zip(ctx.data.records, ctx.data.rows):
        if _missing_answer(record):
            empty.append(row)
        elif _side_text(record["chosen"]) == _side_text(record["rejected"]):
            same.append(row)
        # Both sides must answer the same prompt: user or system turns inside a side that
        # differ from the other side's mean the two replies answer different conversations.
        if _context_turns(record["chosen"]) != _context_turns(record["rejected"]):
            context.append(row)
    findings = []
    if context:
        findings.append(
            ctx.finding(
                "preference",
                "error",
                f"{len(context)} pairs have different prompts on the chosen and the rejected side, so the "
                "replies are not comparable; give both sides the same conversation.",
                context,
            )
        )
    if same:
        findings.append(
            ctx.finding(
                "preference",
                "error",
                f"{len(same)} pairs have chosen identical to rejected, which teaches nothing; fix or drop them "
                "(--fix drops them).",
                same,
            )
        )
    if empty:
        findings.append(
            ctx.finding(
                "preference",
                "error",
                f"{len(empty)} pairs have an empty chosen or rejected side; fill it in or drop them (--fix "
                "drops them).",
                empty,
            )
        )
    return findings


# ---------------------------------------------------------------------------------------
# Fixes and helpers


def _context_turns(messages: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], (m.get("content") or "").strip()) for m in messages if m["role"] != "assistant"]


def _side_text(messages: list[dict]) -> str:
    """A side's text for comparing the two sides, its tool calls included (an answer may be only calls)."""
    calls = [json.dumps(m["tool_calls"], sort_keys=True) if m.get("tool_calls") else "" for m in messages]
    return dedup.normalize("\n".join(f"{m['role']}: {m['content']} {c}" for m, c in zip(messages, calls)))


def _clean_text(text: str, changed: set[str], pii_kinds: Counter, answer: bool = False, redact=None) -> str:
    """Clean prose; code spans keep their HTML and lose only distinctive secrets and control
    characters, so a fix never rewrites code. ``redact(prose) -> prose`` (a compliance
    profile's redaction) runs on the prose only."""
    parts, pos = [], 0
    for start, end in textcheck.code_spans(text, answer=answer):
        parts.append(_clean_prose(text[pos:start], changed, pii_kinds, redact))
        code = text[start:end]
        cleaned = _CONTROL.sub("", code)
        if cleaned != code:
            changed.add("stripped control characters")
        cleaned, matches = pii.redact(cleaned, [(0, len(cleaned))])
        pii_kinds.update(m.kind for m in matches)
        parts.append(cleaned)
        pos = end
    parts.append(_clean_prose(text[pos:], changed, pii_kinds, redact))
    return "".join(parts)


def _clean_prose(text: str, changed: set[str], pii_kinds: Counter, redact=None) -> str:
    cleaned = _CONTROL.sub("", text)
    if cleaned != text:
        changed.add("stripped control characters")
    if _has_html(cleaned):
        before = cleaned
        cleaned = _HTML_BREAK.sub("\n", cleaned)
        cleaned = _HTML_TAG.sub("", cleaned)
        cleaned = html.unescape(cleaned).replace("\xa0", " ")
        if cleaned != before:
            changed.add("stripped HTML")
    if redact is not None and cleaned:
        cleaned = redact(cleaned)  # before pii.redact: the profile's kinds get numbered placeholders
    cleaned, matches = pii.redact(cleaned)
    pii_kinds.update(m.kind for m in matches)
    return cleaned


def _clean_record(record: dict, redact=None) -> tuple[dict, dict]:
    changed: set[str] = set()
    kinds: Counter = Counter()
    cleaned = {}
    for key, value in record.items():
        if isinstance(value, list) and key != "tools":  # tool definitions are not text to clean
            cleaned[key] = [
                {**m, "content": _clean_text(m["content"], changed, kinds, m["role"] == "assistant" or key == "completion", redact)}
                if m.get("content") is not None
                else m
                for m in value
            ]
        elif key == "text":
            cleaned[key] = _clean_text(value, changed, kinds, redact=redact)
        else:
            cleaned[key] = value
    return cleaned, {"changed": changed, "pii": dict(kinds)}


def _char_stats(records: list[dict]) -> dict[str, int]:
    return length_percentiles([len(dedup.record_text(r)) for r in records])


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")
