"""Grounded question-answer pairs from document passages, for supervised fine-tuning.

For each passage a generator (a teacher model, passed in as `generate(conversations) ->
texts`, built by the caller from `inference/`) is asked for `per_passage` question-answer
pairs taken from the passage alone, in a plain `Q: ... / A: ...` form (JSON lists of
`{"question", "answer"}` objects and `Question:`/`Answer:` labels are read too). A pair is kept
only when the passage supports its answer (`grounding.grounding_report`: every statement
supported, no invented citation); the rest is dropped and counted, with the reason:

- unparseable: a reply, or a question without an answer, that is not in the asked form, or
  an "answer" that is itself a question;
- unsupported: the passage does not support the answer (new facts or figures, a flipped
  negation, a citation of no given passage), judged on the whole answer and again on the
  words it adds to its question, so that restating the question's words cannot carry an
  unsupported claim ("The leave policy is a requirement of the HR policy");
- uninformative: the answer adds no word or figure to its question ("Yes.");
- duplicate: the same question (case and punctuation aside) was kept already;
- surplus: pairs beyond `per_passage` in one reply.

Each kept pair is a row `{"question", "passage", "answer", "source", "page", "section",
"passage_id"}`: the loader reads question/answer with the passage as context (the user turn
is the passage, a blank line, then the question), so training teaches the model to answer
from the context it is given; `source`, `page`, `section` and `passage_id` cite the passage.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.load import write_jsonl
from tunesmith.domains.documents import Passage
from tunesmith.domains.grounding import (
    MIN_COVERAGE,
    content_words,
    grounding_report,
    normalise,
    numbers,
)
from tunesmith.errors import DataError

Generate = Callable[[list[list[dict]]], list[str]]  # conversations -> one reply each

SYSTEM_PROMPT = "You write question-answer pairs that teach a model the facts of an organisation's documents."
QA_PROMPT = (
    "Passage{where}:\n{passage}\n\n"
    "Write {n} different questions that this passage answers, each followed by its answer. Take every "
    "answer from the passage alone: use its facts and figures and add nothing. Write exactly in this form:\n"
    "Q: <question>\nA: <answer>"
)
# Pairs per passage: 3 covers a 2,000-character passage's main facts without near-repeats.
PER_PASSAGE = 3
# Passages per generate() call: a batch for a local model, requests in flight for an endpoint.
BATCH_SIZE = 8
MAX_EXAMPLES = 3  # dropped pairs kept per reason for the report

_Q = re.compile(r"^\s*(?:[-*\u2022]\s*|\d+[.)]\s*)?(?:\*\*|__)?\s*(?:Q|Question)\s*\d*\s*[:.)\-]\s*(?:\*\*|__)?\s*(.*)$",
                re.IGNORECASE)
_A = re.compile(r"^\s*(?:[-*\u2022]\s*)?(?:\*\*|__)?\s*(?:A|Answer)\s*\d*\s*[:.)\-]\s*(?:\*\*|__)?\s*(.*)$", re.IGNORECASE)


@dataclass
class QAStats:
    """Counts of one run: passages asked about, pairs generated (parsed), kept and dropped by
    reason, with a few dropped examples per reason."""

    passages: int = 0
    generated: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, list] = field(default_factory=dict)  # reason -> a few dropped pairs

    @property
    def dropped_unsupported(self) -> int:
        return self.dropped["unsupported"]

    @property
    def dropped_unparseable(self) -> int:
        return self.dropped["unparseable"]

    def to_dict(self) -> dict:
        return {"passages": self.passages, "generated": self.generated, "kept": self.kept,
                "dropped": dict(self.dropped.most_common()), "dropped_examples": self.examples}

    def drop(self, reason: str, example: dict | str, n: int = 1) -> None:
        self.dropped[reason] += n
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)


def qa_prompt(passage: Passage, n: int) -> list[dict]:
    """The conversation that asks for `n` pairs about `passage`."""
    where = ", ".join(x for x in (Path(passage.source).name, f"page {passage.page}" if passage.page else "",
                                  passage.section or "") if x)
    text = QA_PROMPT.format(where=f" ({where})" if where else "", passage=passage.text, n=n)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


def parse_pairs(reply: str) -> tuple[list[tuple[str, str]], int]:
    """(question, answer) pairs in a reply, and how many parts could not be read (a reply
    with no pair at all counts one; so does each question left without an answer). Reads
    `Q:`/`A:` lines (numbered, bulleted or in bold too; an answer may run over several
    lines) and JSON lists of {"question", "answer"} objects."""
    text = re.sub(r"```(?:json)?", "", reply).strip()
    pairs = _json_pairs(text)
    if pairs is not None:
        return pairs, 0 if pairs else 1
    pairs, bad = [], 0
    question: str | None = None
    answer: list[str] | None = None

    def close() -> None:
        nonlocal bad, question, answer
        if question is not None:
            if answer and " ".join(answer).strip():
                pairs.append((_unnumbered(question), _unnumbered(" ".join(answer))))
            else:
                bad += 1
        question, answer = None, None

    for line in text.splitlines():
        q, a = _Q.match(line), _A.match(line)
        if q:
            close()
            question = q.group(1).strip()
        elif a and question is not None and answer is None:
            answer = [a.group(1).strip()]
        elif answer is not None and line.strip():
            answer.append(line.strip())
        elif question is not None and answer is None and line.strip():
            question += " " + line.strip()  # a question over two lines
    close()
    if not pairs and not bad:
        bad = 1
    return pairs, bad


def _unnumbered(text: str) -> str:
    """Without a list number a model put inside the text ("Q: 1. What ...")."""
    return re.sub(r"^\s*\d+[.)]\s+", "", text).strip()


def _json_pairs(text: str) -> list[tuple[str, str]] | None:
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        value = next((v for v in value.values() if isinstance(v, list)), [value])
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if isinstance(item, dict):
            q = item.get("question") or item.get("q")
            a = item.get("answer") or item.get("a")
            if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                out.append((q.strip(), a.strip()))
    return out


def generate_qa(
    passages: list[Passage],
    generate: Generate,
    per_passage: int = PER_PASSAGE,
    batch_size: int = BATCH_SIZE,
    min_coverage: float = MIN_COVERAGE,
    on_progress: Callable[[int, int, QAStats], None] | None = None,
) -> tuple[list[dict], QAStats]:
    """Ask `generate` for `per_passage` pairs about each passage and keep those the passage
    supports. Returns the kept rows (see the module docstring) and the counts.
    `on_progress(done, total, stats)` is called after each batch of passages."""
    if per_passage < 1:
        raise DataError(f"per_passage must be at least 1, got {per_passage}.")
    stats = QAStats(passages=len(passages))
    rows: list[dict] = []
    seen: set[str] = set()
    for begin in range(0, len(passages), max(1, batch_size)):
        batch = passages[begin : begin + batch_size]
        replies = generate([qa_prompt(p, per_passage) for p in batch])
        if len(replies) != len(batch):
            raise DataError(f"the generator answered {len(replies)} of {len(batch)} prompts; it must answer each one.")
        for passage, reply in zip(batch, replies):
            pairs, bad = parse_pairs(reply or "")
            if bad:
                stats.drop("unparseable", (reply or "")[:300], bad)
            stats.generated += len(pairs)
            for i, (question, answer) in enumerate(pairs):
                example = {"question": question, "answer": answer, "passage_id": passage.id}
                if i >= per_passage:
                    stats.drop("surplus", example)
                    continue
                if answer.rstrip().endswith("?"):
                    stats.drop("unparseable", example)
                    continue
                report = grounding_report(answer, passage.text, [passage.id], min_coverage)
                added = content_words(answer) - content_words(question)
                if not added and not numbers(answer) - numbers(question):
                    stats.drop("uninformative", example)
                    continue
                if not report["unsupported"] and added and len(added & content_words(passage.text)) < min_coverage * len(added):
                    report["unsupported"] = [answer]
                if report["unsupported"] or report["invented_citations"]:
                    stats.drop("unsupported", example | {"unsupported": report["unsupported"],
                                                         "invented_citations": report["invented_citations"]})
                    continue
                key = " ".join(re.findall(r"\w+", normalise(question)))
                if key in seen:
                    stats.drop("duplicate", example)
                    continue
                seen.add(key)
                rows.append({"question": question, "passage": passage.text, "answer": answer, "source": passage.source,
                             "page": passage.page, "section": passage.section, "passage_id": passage.id})
                stats.kept += 1
        if on_progress:
            on_progress(min(begin + len(batch), len(passages)), len(passages), stats)
    return rows, stats


def write_qa(rows: list[dict], out: str | Path, stats: QAStats | None = None) -> tuple[Path, Path | None]:
    """Write the kept rows to OUT (JSONL) and, with `stats`, the counts and dropped examples
    to OUT's `.report.json`. Returns both paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows)
    if stats is None:
        return out, None
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    report = out.with_name(stem + ".report.json")
    report.write_text(json.dumps(stats.to_dict(), indent=2, ensure_ascii=False))
    return out, report
