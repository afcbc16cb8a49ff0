"""Document ingestion: an organisation's own files (PDF, DOCX, HTML, Markdown, plain text)
turned into clean passages of bounded size, each with its provenance (file, page, section)
and a stable id, for continued pretraining (`corpus.jsonl`, read as `{"text"}` rows) and for
grounded question-answer pairs (`domains.grounded_qa`).

Readers, one per kind of file, give blocks of text (a paragraph, a heading, a table row set)
with their page and section:

| file | read with | page | section |
| --- | --- | --- | --- |
| .pdf | pypdf, text per page: lines re-joined into paragraphs, words hyphenated across a line break joined, page headers and footers that repeat on most pages and bare page numbers dropped | yes | the PDF outline (bookmarks) entry the page falls under, when it has one |
| .docx | python-docx, body in order: paragraphs (Heading/Title styles start sections) and tables (one line per row, cells joined with " | ") | no | nearest heading |
| .html .htm | beautifulsoup4: script, style, nav, footer, header, aside, noscript, form dropped; h1-h6 start sections | no | nearest heading (the <title> before the first) |
| .md .markdown | "#" and underlined headings start sections; fenced code kept as it is; link and emphasis markup removed | no | nearest heading |
| .txt .text | paragraphs on blank lines | no | none |

Blocks are then packed into passages on block boundaries, never across a page or a section
(a block longer than the bound is cut between sentences). A file that cannot be read (an
encrypted or scanned PDF, a corrupt DOCX, an empty file) is reported with one sentence naming
it and the reason, and the others still ingest: nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.errors import DataError

PDF_SUFFIXES = (".pdf",)
DOCX_SUFFIXES = (".docx",)
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
MARKDOWN_SUFFIXES = (".md", ".markdown")
TEXT_SUFFIXES = (".txt", ".text")
SUFFIXES = PDF_SUFFIXES + DOCX_SUFFIXES + HTML_SUFFIXES + MARKDOWN_SUFFIXES + TEXT_SUFFIXES

# 2,000 characters (~500 tokens of English): long enough to hold a policy clause with its
# context, short enough that a passage, a question and an answer fit a 1,024-token prompt.
MAX_CHARS = 2000
# A header or footer line must repeat on at least half of the pages (and on two) to be dropped.
REPEAT_SHARE = 0.5
# Lines at most this far from the top or bottom of a page can be running headers or footers.
EDGE_LINES = 2
# A PDF line shorter than this share of the document's usual full line ends its paragraph;
# one that ends a sentence, already below the higher share (ragged right margins make
# wrapped lines vary by about a fifth).
FULL_LINE = 0.75
FULL_SENTENCE_LINE = 0.9
# Elements of a web page that are not its content.
HTML_DROP = ("script", "style", "nav", "footer", "header", "aside", "noscript", "form", "template", "svg", "head")

_PAGE_NUMBER = re.compile(r"^(?:page\s*)?[-–—]?\s*\d{1,4}\s*[-–—]?(?:\s*(?:of|/)\s*\d{1,4})?$", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")


@dataclass(frozen=True)
class Passage:
    """A piece of a document with where it came from."""

    text: str
    source: str  # the file, as found (a path under a folder that was given, or the path given)
    page: int | None = None  # PDF: 1-based page number; other files: None
    section: str | None = None  # nearest heading (PDF: outline entry), None when there is none
    id: str = ""  # stable: the same file name, page and text give the same id on every run

    def __post_init__(self):
        if not self.id:
            object.__setattr__(self, "id", passage_id(self.source, self.page, self.text))

    def to_row(self) -> dict:
        """The row written to corpus.jsonl: `text` (what pretraining reads) and provenance."""
        return {"text": self.text, "source": self.source, "page": self.page, "section": self.section, "id": self.id}


@dataclass
class FileSummary:
    """One document that was read."""

    path: str
    kind: str  # pdf | docx | html | markdown | text
    pages: int | None  # PDFs only
    passages: int = 0
    characters: int = 0


@dataclass
class Corpus:
    """What `ingest` made: the passages in file order, each file read, each file skipped
    (with the reason, one sentence) and exact duplicate passages dropped."""

    passages: list[Passage] = field(default_factory=list)
    files: list[FileSummary] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    duplicates: int = 0  # passages dropped because an earlier one has the same text
    notes: list[str] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return sum(f.pages or 0 for f in self.files)

    def to_dict(self) -> dict:
        return {"files": [asdict(f) for f in self.files], "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "passages": len(self.passages), "pages": self.pages, "duplicates": self.duplicates, "notes": self.notes}


@dataclass
class Block:
    """A unit a reader gives: a paragraph, a heading or a group of table rows."""

    text: str
    page: int | None = None
    section: str | None = None


class UnreadableDocument(Exception):
    """A file that cannot be read; the message is the reason, without the file name."""


def passage_id(source: str, page: int | None, text: str) -> str:
    """`p-` and 12 hex digits of SHA-1 over the file name, the page and the text: the same
    passage gets the same id on every run and on every machine."""
    digest = hashlib.sha1(f"{Path(source).name}\n{page}\n{text}".encode()).hexdigest()
    return f"p-{digest[:12]}"


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    for kind, suffixes in (("pdf", PDF_SUFFIXES), ("docx", DOCX_SUFFIXES), ("html", HTML_SUFFIXES),
                           ("markdown", MARKDOWN_SUFFIXES), ("text", TEXT_SUFFIXES)):
        if suffix in suffixes:
            return kind
    return None


def find_documents(paths: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The documents under `paths` (files, or folders searched recursively, hidden entries
    left out), in a stable order, and the files that are not a kind tunesmith reads (with the
    reason). A path that does not exist is a `DataError`."""
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise DataError(f"{path} does not exist; give document files or folders that hold them.")
        if path.is_dir():
            children = sorted(p for p in path.rglob("*") if p.is_file()
                              and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            children = [path]
        for child in children:
            if kind_of(child):
                found.append(child)
            else:
                reason = (f"{child} is not a kind of document tunesmith reads ({child.suffix or 'no extension'}; "
                          f"it reads {', '.join(SUFFIXES)}).")
                skipped.append((str(child), reason))
    unique = list(dict.fromkeys(found))
    return unique, skipped


def ingest(
    paths: list[str | Path],
    max_chars: int = MAX_CHARS,
    on_file: Callable[[str, int, int], None] | None = None,
) -> Corpus:
    """Read every document under `paths` into passages of at most `max_chars` characters
    with provenance. `on_file(path, done, total)` is called after each file. Files that
    cannot be read are in `Corpus.skipped` with the reason; the others are still read."""
    if max_chars < 200:
        raise DataError(f"max_chars must be at least 200 characters, got {max_chars}.")
    documents, skipped = find_documents(paths)
    corpus = Corpus(skipped=skipped)
    seen: set[str] = set()
    for done, path in enumerate(documents, 1):
        kind = kind_of(path)
        try:
            blocks, pages = READERS[kind](path)
        except UnreadableDocument as exc:
            corpus.skipped.append((str(path), f"{path} {exc}"))
        except Exception as exc:  # noqa: BLE001 - a reader library failing on a hostile file: reported, never a traceback
            corpus.skipped.append((str(path), f"{path} cannot be read as {kind.upper()} ({_one_line(exc)})."))
        else:
            passages = chunk(blocks, str(path), max_chars)
            if not passages:
                reason = ("has no text layer (a scanned PDF?); run OCR on it first, e.g. `ocrmypdf in.pdf out.pdf`."
                          if kind == "pdf" else "holds no text.")
                corpus.skipped.append((str(path), f"{path} {reason}"))
            else:
                summary = FileSummary(str(path), kind, pages)
                for p in passages:
                    if p.text in seen:
                        corpus.duplicates += 1
                        continue
                    seen.add(p.text)
                    corpus.passages.append(p)
                    summary.passages += 1
                    summary.characters += len(p.text)
                corpus.files.append(summary)
        if on_file:
            on_file(str(path), done, len(documents))
    if corpus.duplicates:
        corpus.notes.append(f"{corpus.duplicates} passage(s) repeated an earlier passage word for word and were left out.")
    return corpus


def write_corpus(passages: list[Passage], out: str | Path) -> Path:
    """Write passages as JSONL rows `{"text", "source", "page", "section", "id"}`: a pretraining
    file (`tunesmith train --method pretrain` reads `text`; the other keys are provenance)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for p in passages:
            f.write(json.dumps(p.to_row(), ensure_ascii=False) + "\n")
    return out


def read_corpus(path: str | Path) -> list[Passage]:
    """Passages from a corpus JSONL (as `write_corpus` writes it; any rows with a `text` field
    work, with `source`, `page`, `section` and `id` when present)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; make it with `tunesmith data ingest DOCS --out {path}`.")
    passages = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {line_no}: not valid JSON ({exc.msg}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{path} line {line_no}: a corpus row needs a \"text\" string, as `tunesmith data ingest` writes.")
        if not row["text"].strip():
            continue
        page = row.get("page")
        passages.append(Passage(row["text"], str(row.get("source") or path.name),
                                page if isinstance(page, int) else None, row.get("section") or None, str(row.get("id") or "")))
    if not passages:
        raise DataError(f"{path} holds no passages with text.")
    return passages


# --------------------------------------------------------------------------- chunking


def chunk(blocks: list[Block], source: str, max_chars: int = MAX_CHARS) -> list[Passage]:
    """Pack consecutive blocks of one page and section into passages of at most `max_chars`
    characters, joined by blank lines; a longer block is cut between sentences (a sentence
    longer still, between words)."""
    passages: list[Passage] = []
    parts: list[str] = []
    key: tuple | None = None

    def flush() -> None:
        if parts:
            passages.append(Passage("\n\n".join(parts), source, key[0], key[1]))
            parts.clear()

    for block in blocks:
        text = block.text.strip()
        if not text:
            continue
        if (block.page, block.section) != key:
            # A lone heading right before a new section on the same page (a chapter title, then
            # its first subsection) goes with that section rather than make a passage of its own.
            carry = key is not None and key[0] == block.page and len(parts) == 1 and _is_heading(parts[0])
            if not carry:
                flush()
            key = (block.page, block.section)
        for piece in _pieces(text, max_chars):
            if parts and sum(len(p) + 2 for p in parts) + len(piece) > max_chars:
                flush()
            parts.append(piece)
    flush()
    return passages


def _is_heading(text: str) -> bool:
    return len(text) <= 120 and "\n" not in text and not text.endswith((".", "!", "?", ":", ";"))


def _pieces(text: str, max_chars: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    out: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        words = [sentence] if len(sentence) <= max_chars else _by_words(sentence, max_chars)
        for w in words:
            if current and len(current) + 1 + len(w) > max_chars:
                out.append(current)
                current = w
            else:
                current = f"{current} {w}" if current else w
    if current:
        out.append(current)
    return out


def _by_words(text: str, max_chars: int) -> list[str]:
    out, current = [], ""
    for word in text.split():
        while len(word) > max_chars:  # a run of characters with no space at all
            if current:
                out.append(current)
                current = ""
            out.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        out.append(current)
    return out


def clean(text: str) -> str:
    """Unicode compatibility forms folded (ligatures, full-width), soft hyphens, control
    characters and dot leaders removed, runs of spaces and tabs made one space."""
    text = unicodedata.normalize("NFKC", text).replace("\u00ad", "")
    text = re.sub(r"(?:\s?\.){4,}", " ", text)  # dot leaders of a table of contents
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")
    return re.sub(r"[ \t\u00a0]+", " ", text).strip()


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# --------------------------------------------------------------------------- PDF


def read_pdf(path: Path) -> tuple[list[Block], int]:
    """Blocks of a PDF's text layer, page by page (see the module docstring)."""
    from pypdf import PdfReader  # heavy: only when a PDF is read
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    # pypdf warns (by logging and warnings) about each repair it makes; the file's outcome is
    # reported instead, once.
    pdf_log = logging.getLogger("pypdf")
    level = pdf_log.level
    pdf_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(str(path))
            if reader.is_encrypted:
                try:
                    opened = reader.decrypt("")  # many PDFs are encrypted with an empty user password
                except DependencyError:
                    raise UnreadableDocument(
                        "is encrypted with AES, which needs the `cryptography` package; `pip install cryptography` "
                        "and ingest it again.") from None
                if not opened:
                    raise UnreadableDocument("is encrypted with a password; save an unprotected copy and ingest that.")
            raw_pages = [page.extract_text() or "" for page in reader.pages]
            outline = _outline(reader)
    except FileNotDecryptedError as exc:
        raise UnreadableDocument(f"is encrypted ({_one_line(exc)}); save an unprotected copy and ingest that.") from None
    except PdfReadError as exc:
        raise UnreadableDocument(f"is not a readable PDF ({_one_line(exc)}).") from None
    finally:
        pdf_log.setLevel(level)
    pages = [[clean(line) for line in text.splitlines()] for text in raw_pages]
    pages = _drop_running_lines([[line for line in lines if line] for lines in pages])
    # A full line's length: the 80th percentile of the longer lines (headings, table rows and
    # paragraph ends would pull a plain percentile down in a short document).
    lengths = sorted(len(line) for lines in pages for line in lines)
    longer = [n for n in lengths if n >= lengths[len(lengths) // 2]] if lengths else []
    full = longer[int(0.8 * (len(longer) - 1))] if longer else 0
    blocks: list[Block] = []
    section: str | None = None
    for index, lines in enumerate(pages):
        # Outline entries starting on this page: the section changes at the line that shows
        # the entry's title, or at the start of the page when no line shows it.
        titles = {_title_key(title): title for page, title in outline if page == index}
        shown = {_title_key(line) for line in lines} & set(titles)
        for key, title in titles.items():
            if key not in shown:
                section = title
        for paragraph in _pdf_paragraphs(lines, full, shown):
            section = titles.get(_title_key(paragraph), section)
            blocks.append(Block(paragraph, index + 1, section))
    return blocks, len(raw_pages)


def _title_key(text: str) -> str:
    """A heading compared without case, punctuation or leading numbering ("1.2. Scope" = "scope")."""
    return re.sub(r"\W+", "", re.sub(r"^\s*(?:\d+[.)]?\s*)+", "", text.casefold().replace(".", ". ")))


def _outline(reader) -> list[tuple[int, str]]:
    """(0-based page, title) of each outline (bookmark) entry, in page order."""
    starts: list[tuple[int, str]] = []

    def walk(items) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # noqa: BLE001, S112 - a broken bookmark: ignore it, the page numbers still hold
                continue
            title = clean(str(getattr(item, "title", "") or ""))
            if page is not None and page >= 0 and title:
                starts.append((page, title))

    try:
        walk(reader.outline)
    except Exception:  # noqa: BLE001 - an outline pypdf cannot read: pages without sections
        return []
    return sorted(starts, key=lambda s: s[0])


def _drop_running_lines(pages: list[list[str]]) -> list[list[str]]:
    """Remove page headers and footers: lines near the top or bottom of a page that repeat
    (digits ignored in lines of up to 12 words, so "Page 3" matches "Page 4") on at least half
    of the pages, short lines that end in a page number and open with the same two words on
    half of the pages ("Chapter 2: Usage 7", "Chapter 3: Reference 12"), and bare page
    numbers there."""
    def shape(line: str) -> str:  # digits ignored in a short line; a long one must repeat word for word
        return re.sub(r"\d+", "#", line.lower()) if len(line.split()) <= 12 else line.lower()

    def opening(line: str) -> str | None:  # "chapter #:" of "Chapter 2: Usage 7"
        short = len(line.split()) <= 12 and re.search(r"\D\s+\d{1,4}$", line)
        return "open:" + shape(" ".join(line.split()[:2])) if short else None

    counts: Counter = Counter()
    for lines in pages:
        edge = set(lines[:EDGE_LINES] + lines[-EDGE_LINES:])
        counts.update({shape(line) for line in edge} | {opening(line) for line in edge} - {None})
    needed = max(2, REPEAT_SHARE * len(pages))
    running = {s for s, c in counts.items() if c >= needed} if len(pages) > 1 else set()

    def is_running(line: str) -> bool:
        return shape(line) in running or opening(line) in running or bool(_PAGE_NUMBER.match(line))

    out = []
    for lines in pages:
        keep = []
        for i, line in enumerate(lines):
            at_edge = i < EDGE_LINES or i >= len(lines) - EDGE_LINES
            if at_edge and is_running(line):
                continue
            keep.append(line)
        out.append(keep)
    return out


def _pdf_paragraphs(lines: list[str], full: int, titles: set[str] = frozenset()) -> list[str]:
    """Re-join a page's lines into paragraphs: a line much shorter than a full line ends its
    paragraph, unless it ends in a hyphen followed by a lowercase word (a hyphenated word,
    joined without the hyphen). Consecutive lone short lines (a heading, table rows, list
    items) keep their own lines in one block. A line that shows one of `titles` (outline
    entries, compared by `_title_key`) is a paragraph of its own."""
    paragraphs: list[str] = []
    short_run: list[str] = []
    current, joined = "", 0

    def end_short_run() -> None:
        if short_run:
            paragraphs.append("\n".join(short_run))
            short_run.clear()

    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if titles and _title_key(line) in titles:
            if current:
                end_short_run()
                paragraphs.append(current)
            end_short_run()
            paragraphs.append(line)
            current, joined = "", 0
            continue
        if titles and _title_key(nxt) in titles:
            nxt = ""  # the paragraph ends before a title
        if current and re.search(r"[A-Za-z]-$", current) and line[:1].islower():
            current = current[:-1] + line  # "reimburse-" + "ment" -> "reimbursement"
        else:
            current = f"{current} {line}" if current else line
        joined += 1
        if re.search(r"[A-Za-z]-$", line) and nxt[:1].islower():
            continue  # a word hyphenated across the line break
        ends_sentence = line.endswith((".", "!", "?", ":", ";"))
        if full and nxt and len(line) >= (FULL_SENTENCE_LINE if ends_sentence else FULL_LINE) * full:
            continue  # a full line: the paragraph goes on
        if joined == 1 and (len(line) < 0.5 * full or not ends_sentence):
            short_run.append(current)
        else:
            end_short_run()
            paragraphs.append(current)
        current, joined = "", 0
    end_short_run()
    return paragraphs


# --------------------------------------------------------------------------- DOCX


def read_docx(path: Path) -> tuple[list[Block], None]:
    """Blocks of a Word document's body in order: paragraphs (a Heading or Title style starts
    a section) and tables (each row one line, cells joined with " | ")."""
    import docx  # heavy: only when a DOCX is read
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(str(path))
    except PackageNotFoundError:
        raise UnreadableDocument("is not a readable Word document (not a valid DOCX package: damaged, or an old "
                                 ".doc file, which needs saving as .docx first).") from None
    except (KeyError, ValueError, OSError) as exc:
        raise UnreadableDocument(f"is a damaged Word document ({_one_line(exc)}).") from None
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile, lxml's XMLSyntaxError
        raise UnreadableDocument(f"is a damaged Word document ({_one_line(exc)}).") from None
    blocks: list[Block] = []
    section: str | None = None
    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            text = clean(item.text)
            if not text:
                continue
            style = (item.style.name if item.style is not None else "") or ""
            if style.startswith(("Heading", "Title")):
                section = text
            blocks.append(Block(text, None, section))
        elif isinstance(item, Table):
            rows = []
            for row in item.rows:
                cells = []
                for cell in row.cells:
                    text = clean(" ".join(cell.text.split()))
                    if not cells or cells[-1] != text:  # a merged cell repeats in each grid column
                        cells.append(text)
                if any(cells):
                    rows.append(" | ".join(cells))
            if rows:
                blocks.append(Block("\n".join(rows), None, section))
    return blocks, None


# --------------------------------------------------------------------------- HTML

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_PARAGRAPHS = {"p", "li", "dt", "dd", "figcaption", "caption", "blockquote", "address", "summary"}
_CONTAINERS = {"div", "section", "article", "main", "body", "html", "ul", "ol", "dl", "table", "thead", "tbody",
               "tfoot", "figure", "details", "center", "fieldset"}


def read_html(path: Path) -> tuple[list[Block], None]:
    """Blocks of a web page's content: headings start sections (the <title> names the part
    before the first); navigation, scripts, styles, headers and footers are dropped."""
    return html_blocks(_decode(path)), None


def html_blocks(markup: str) -> list[Block]:
    # heavy: only when HTML is read
    from bs4 import BeautifulSoup, Comment, NavigableString, Tag

    soup = BeautifulSoup(markup, "html.parser")
    title = clean(soup.title.get_text(" ")) if soup.title else ""
    for tag in soup.find_all(HTML_DROP):
        tag.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    blocks: list[Block] = []
    state = {"section": title or None}
    buffer: list[str] = []

    def flush() -> None:
        text = clean(" ".join(buffer))
        buffer.clear()
        if text:
            blocks.append(Block(text, None, state["section"]))

    def walk(node) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                buffer.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name in _HEADINGS:
                flush()
                text = clean(child.get_text(" "))
                if text:
                    state["section"] = text
                    blocks.append(Block(text, None, text))
            elif name == "pre":
                flush()
                text = child.get_text().strip("\n")
                if text.strip():
                    blocks.append(Block(text, None, state["section"]))
            elif name == "tr":
                flush()
                cells = [clean(c.get_text(" ")) for c in child.find_all(["td", "th"])]
                if any(cells):
                    blocks.append(Block(" | ".join(cells), None, state["section"]))
            elif name == "br":
                buffer.append(" ")
            elif name in _PARAGRAPHS or name in _CONTAINERS:
                flush()
                walk(child)
                flush()
            else:  # inline: a, span, b, em, code...
                walk(child)

    walk(soup.body or soup)
    flush()
    return _join_rows(blocks)


def _join_rows(blocks: list[Block]) -> list[Block]:
    """Consecutive table rows (lines with " | ") of one section become one block."""
    out: list[Block] = []
    for b in blocks:
        if out and " | " in b.text and " | " in out[-1].text.splitlines()[-1] and out[-1].section == b.section:
            out[-1] = Block(out[-1].text + "\n" + b.text, b.page, b.section)
        else:
            out.append(b)
    return out


# --------------------------------------------------------------------------- Markdown and text

_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_LIST_OR_ROW = re.compile(r"^\s*(?:[-*+]\s|\d+[.)]\s|\|)")


def read_markdown(path: Path) -> tuple[list[Block], None]:
    """Blocks of a Markdown file: headings start sections, fenced code is kept line for line,
    link and emphasis markup is removed, list items and table rows keep their own lines."""
    return markdown_blocks(_decode(path)), None


def markdown_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    section: str | None = None
    paragraph: list[str] = []
    in_code = False
    code: list[str] = []

    def flush() -> None:
        if paragraph:
            joined = ""
            for line in paragraph:
                if not joined:
                    joined = line
                elif _LIST_OR_ROW.match(line):
                    joined += "\n" + line
                else:
                    joined += " " + line
            joined = "\n".join(_table_row(clean(_inline_markdown(x))) for x in joined.split("\n") if not _is_rule_row(x))
            if joined.strip():
                blocks.append(Block(joined, None, section))
            paragraph.clear()

    for i, line in enumerate(lines):
        if _FENCE.match(line):
            if in_code:
                if any(c.strip() for c in code):
                    blocks.append(Block("\n".join(code), None, section))
                code, in_code = [], False
            else:
                flush()
                in_code = True
            continue
        if in_code:
            code.append(line)
            continue
        heading = _ATX.match(line)
        if heading:
            flush()
            section = clean(_inline_markdown(heading.group(2))) or section
            blocks.append(Block(section, None, section))
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and not paragraph and _SETEXT.match(nxt) and not _LIST_OR_ROW.match(line):
            section = clean(_inline_markdown(line))
            blocks.append(Block(section, None, section))
            continue
        if _SETEXT.match(line) and blocks and blocks[-1].text == section and not paragraph:
            continue  # the underline of a setext heading
        if not line.strip():
            flush()
            continue
        paragraph.append(line.strip())
    flush()
    if in_code and any(c.strip() for c in code):
        blocks.append(Block("\n".join(code), None, section))
    return blocks


def _table_row(line: str) -> str:
    """A Markdown table row without its outer pipes: "| a | b |" -> "a | b"."""
    return line.strip().strip("|").strip() if line.lstrip().startswith("|") else line


def _is_rule_row(line: str) -> bool:
    """A Markdown table's |---|:---:| line."""
    return bool(re.fullmatch(r"\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*", line))


def _inline_markdown(text: str) -> str:
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # image -> alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # link -> its text
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?!\w)", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    return re.sub(r"^\s*>\s?", "", text)


def read_text(path: Path) -> tuple[list[Block], None]:
    """Paragraphs of a plain-text file (split on blank lines, lines re-joined)."""
    text = _decode(path)
    return [Block(clean(" ".join(p.split())), None, None) for p in re.split(r"\n\s*\n", text) if p.strip()], None


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if not raw.strip():
        raise UnreadableDocument("is empty.")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


READERS: dict[str, Callable[[Path], tuple[list[Block], int | None]]] = {
    "pdf": read_pdf, "docx": read_docx, "html": read_html, "markdown": read_markdown, "text": read_text,
}
