"""Is an answer supported by its context? Deterministic checks that need no model, so they run
offline, on every row, and give the same verdict every time.

An answer is split into statements (sentences, list items). A statement is supported by a
passage when

- every number in it (digits or number words: "90", "ninety", "1,500", "12.50%") occurs in
  the passage,
- a negation in it ("not", "never", "no", "cannot", "without") has one in the passage too,
- and at least `MIN_COVERAGE` of its content words (stop words and framing such as
  "according to the passage" left out; words compared by a crude stem: plural "s" dropped,
  first five letters) occur in the passage.

Citations are `[1]`-style references (a number is the passage's position in the context,
1-based), passage ids (`[p-3f2a91c0d1e2]`), and quoted spans (three words or more in double
quotes). A reference to no given passage, or a quote that is not in the context word for word
(case and spacing aside), is an invented citation.

These checks catch an answer that brings in facts, figures or sources the context does not
hold; they cannot catch a statement that reuses the context's words to say something else
(beyond a dropped or added negation). Thresholds were set on CUAD and TAT-QA reference
answers (supported by their own context) against the same answers paired with another
row's context (see tests/test_documents.py for the figures).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Share of a statement's content words the passage must hold. 0.6 keeps paraphrases that
# swap a word or two ("get" for "receive") and drops statements about something else.
MIN_COVERAGE = 0.6

STOPWORDS = frozenset((
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at",
    "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do",
    "does", "doing", "down", "during", "each", "else", "etc", "few", "for", "from", "further", "get", "gets", "got",
    "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how",
    "however", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "let", "may", "me", "might", "more",
    "most", "must", "my", "myself", "now", "of", "off", "on", "once", "only", "or", "other", "ought", "our", "ours",
    "ourselves", "out", "over", "own", "per", "same", "shall", "she", "should", "so", "some", "such", "than", "that",
    "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through",
    "thus", "to", "too", "under", "until", "up", "upon", "us", "very", "via", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "whose", "why", "will", "with", "within", "would", "yes", "you",
    "your", "yours", "yourself", "yourselves", "according", "answer", "based", "context", "document", "documents",
    "given", "passage", "passages", "provided", "says", "source", "state", "states", "stated", "text", "mentioned",
    "mention", "mentions", "following", "above-mentioned", "one's",
))
NEGATIONS = frozenset({"not", "no", "never", "cannot", "nor", "none", "neither", "without", "nothing", "nobody"})

_UNITS = {w: i for i, w in enumerate((
    "_", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen",
    "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")) if w != "_"}
_TENS = {w: 10 * i for i, w in enumerate(("_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
                                          "ninety")) if w != "_"}
_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")
_NUMBER_WORD = re.compile(r"\b(" + "|".join(sorted(_TENS, key=len, reverse=True)) + r")(?:[-\s](" +
                          "|".join(w for w in _UNITS if _UNITS[w] < 10) + r"))?\b|\b(" +
                          "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b")
_WORD = re.compile(r"[a-z0-9]+")
_REF = re.compile(r"\[([^\[\]\n]{1,80})\](?!\()")  # [1], [1, 2], [p-...]; not a Markdown link [text](url)
_BARE_ID = re.compile(r"\bp-[0-9a-f]{12}\b")
_QUOTE = re.compile(r"\"([^\"\n]+)\"|\u201c([^\u201d\n]+)\u201d")
_REF_ITEM = re.compile(r"^(?:(?:source|passage|doc|document|ref|reference|context)\s*[:#]?\s*)?#?\s*([\w.\-]+)$", re.IGNORECASE)
_ABBREVIATIONS = ("e.g", "i.e", "etc", "mr", "mrs", "ms", "dr", "no", "vs", "inc", "ltd", "co", "corp", "art", "sec",
                  "fig", "approx", "u.s", "st", "p", "pp")


@dataclass
class Citations:
    """What an answer cites: references (passage numbers or ids) and quoted spans."""

    refs: list[str]
    quotes: list[str]


def normalise(text: str) -> str:
    """Lowercase, Unicode forms folded, curly quotes and dashes made plain, "n't" spelled
    "not", spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                                         "\u2013": "-", "\u2014": "-", "\u2212": "-"}))
    text = re.sub(r"\bcan't\b|\bcannot\b", "can not", text)
    text = re.sub(r"(\w)n't\b", r"\1 not", text)
    return re.sub(r"\s+", " ", text).strip()


def numbers(text: str, spelled_one: bool = True) -> set[str]:
    """The numbers in `text` in one spelling: "1,500" and "1500" -> "1500", "12.50" -> "12.5",
    "ninety" and "twenty-five" -> "90" and "25"; signs, currency and % are left aside. With
    `spelled_one` false the word "one" is not a number ("one of the parties")."""
    norm = normalise(text)
    found = set()
    for whole, fraction in _NUMBER.findall(norm):
        whole = whole.replace(",", "").lstrip("0") or "0"
        fraction = (fraction or "").rstrip("0")
        found.add(f"{whole}.{fraction}" if fraction else whole)
    for tens, unit, alone in _NUMBER_WORD.findall(norm):
        if alone == "one" and not spelled_one:
            continue
        found.add(str(_TENS[tens] + (_UNITS[unit] if unit else 0)) if tens else str(_UNITS[alone]))
    return found


def stem(word: str) -> str:
    """A crude stem: a plural "s" dropped, then the first five letters ("approval" and
    "approves" -> "appro")."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word[:5]


def content_words(text: str) -> set[str]:
    """Stems of the words that carry meaning: no stop words, no numbers (checked apart)."""
    norm = normalise(_NUMBER_WORD.sub(" ", normalise(text)))
    return {stem(w) for w in _WORD.findall(norm) if w not in STOPWORDS and w not in NEGATIONS and not w.isdigit()
            and len(w) > 1}


def _negated(text: str) -> bool:
    return any(w in NEGATIONS for w in _WORD.findall(normalise(text)))


def supported(statement: str, passage: str, min_coverage: float = MIN_COVERAGE) -> bool:
    """Whether `passage` supports `statement` (see the module docstring): its numbers are in
    the passage, a negation in it has one there too, and `min_coverage` of its content words
    occur there. A statement with no content word and no number ("Yes.") is supported."""
    statement = strip_citations(statement)
    if not numbers(statement, spelled_one=False) <= numbers(passage):
        return False
    if _negated(statement) and not _negated(passage):
        return False
    words = content_words(statement)
    if not words:
        return True
    return len(words & content_words(passage)) / len(words) >= min_coverage


def split_statements(answer: str) -> list[str]:
    """The statements of an answer: its sentences and list items, citations removed, each
    with at least one letter or digit."""
    out: list[str] = []
    for line in answer.splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", "", line).strip()
        if not line:
            continue
        start = 0
        for m in re.finditer(r"[.!?](?=\s+[\"'(\[]?[A-Z0-9])", line):
            before = line[start:m.start()].split()
            last = before[-1].lower().strip("(\"'") if before else ""
            if last in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last):
                continue  # "e.g. Paris", "No. 5", "J. Smith"
            out.append(line[start:m.end()])
            start = m.end()
        out.append(line[start:])
    statements = [strip_citations(s).strip() for s in out]
    return [s for s in statements if re.search(r"\w", s)]


def citations(answer: str) -> Citations:
    """The references (`[1]`, `[2, 3]`, `[source: 2]`, `[p-3f2a91c0d1e2]`, or a bare passage id)
    and the quoted spans of three words or more in `answer`."""
    refs: list[str] = []
    for group in _REF.findall(answer):
        items = [i.strip() for i in re.split(r"[,;]|\band\b", group) if i.strip()]
        parsed = [_REF_ITEM.match(i) for i in items]
        if items and all(parsed) and all(len(p.group(1)) <= 40 for p in parsed):
            refs.extend(p.group(1) for p in parsed)
    refs += [i for i in _BARE_ID.findall(_REF.sub(" ", answer))]
    quotes = [a or b for a, b in _QUOTE.findall(answer)]
    return Citations(refs=list(dict.fromkeys(refs)), quotes=[q.strip() for q in quotes if len(q.split()) >= 3])


def strip_citations(text: str) -> str:
    """`text` without its bracketed references and bare passage ids."""
    def drop(m: re.Match) -> str:
        items = [i.strip() for i in re.split(r"[,;]|\band\b", m.group(1)) if i.strip()]
        return "" if items and all(_REF_ITEM.match(i) for i in items) else m.group(0)

    return re.sub(r"\s+([.,;:!?])", r"\1", _BARE_ID.sub("", _REF.sub(drop, text))).strip()


def grounding_report(answer: str, context: str | list[str], passage_ids: list[str] | None = None,
                     min_coverage: float = MIN_COVERAGE) -> dict:
    """Check `answer` against `context` (one text or a list of passages): `statements` (the
    answer's statements), `unsupported` (those the context does not support) and
    `invented_citations` (references to no given passage: a number is valid from 1 to the
    number of passages, an id when it is in `passage_ids`; quotes not found in the context)."""
    passages = [context] if isinstance(context, str) else list(context)
    joined = "\n\n".join(passages)
    cited = citations(answer)
    valid = {str(i) for i in range(1, len(passages) + 1)} | {str(p) for p in passage_ids or []}
    invented = [r for r in cited.refs if r not in valid]
    in_context = _squash(joined)
    invented += [f'"{q}"' for q in cited.quotes if _squash(q) not in in_context]
    statements = split_statements(answer)
    unsupported = [s for s in statements if not supported(s, joined, min_coverage)]
    return {"statements": statements, "unsupported": unsupported, "invented_citations": invented}


def _squash(text: str) -> str:
    return " ".join(_WORD.findall(normalise(text)))
