"""Knowledge from documents: real PDF and DOCX files made here (fpdf2, python-docx), HTML and
Markdown, ingested into passages with provenance; grounded question-answer pairs; the
grounding checks, on their own and in evaluation."""

import csv
import json
from pathlib import Path

import pytest
from conftest import tiny_run_config
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.domains.documents import Passage, ingest, read_corpus, write_corpus
from tunesmith.domains.grounded_qa import generate_qa, parse_pairs, write_qa
from tunesmith.domains.grounding import (
    citations,
    grounding_report,
    numbers,
    split_statements,
    supported,
)

runner = CliRunner()
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")

LEAVE = ("Employees receive twenty-five days of paid leave per year. Unused leave can be carried over for a maximum "
         "of five days into the next calendar year.")
REQUESTS = ("Requests for leave must be submitted through the HR portal at least two weeks in advance. The manager "
            "approves or declines within three working days.")
EXPENSES = "Expense claims above 500 euros need a receipt and approval by the finance team within 30 days."
BADGES = "Visitors must wear a red badge and be accompanied by an employee at all times inside the building."


# --------------------------------------------------------------------------- documents made here


def make_pdf(path: Path, password: str | None = None) -> Path:
    """A 4-page handbook: a running header and a page-number footer on every page, outline
    sections (Leave policy p1, Expenses p2-3, Security p4), a word hyphenated across a line
    break, and a table."""
    from fpdf import FPDF

    class Handbook(FPDF):
        def header(self):
            self.set_font("Helvetica", "", 9)
            self.cell(0, 8, "ACME Corp - Staff Handbook", align="C")
            self.ln(10)

        def footer(self):
            self.set_y(-15)
            self.set_font("Helvetica", "", 9)
            self.cell(0, 8, f"Page {self.page_no()}", align="C")

    pdf = Handbook()

    def text(body: str) -> None:
        pdf.set_font("Helvetica", size=11)
        pdf.multi_cell(0, 6, body, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)

    def heading(title: str) -> None:
        pdf.set_font("Helvetica", "B", 14)
        pdf.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")

    pdf.add_page()
    pdf.start_section("Leave policy")
    heading("1. Leave policy")
    text(LEAVE)
    text(REQUESTS)
    text("The reimburse-\nment of travel costs follows the travel policy.")
    pdf.add_page()
    pdf.start_section("Expenses")
    heading("2. Expenses")
    text(EXPENSES)
    pdf.set_font("Helvetica", size=11)
    with pdf.table() as table:
        for cells in (("Item", "Limit"), ("Hotel", "150 EUR"), ("Meals", "40 EUR")):
            row = table.row()
            for c in cells:
                row.cell(c)
    pdf.add_page()
    text("Mileage is paid at 0.30 euros per kilometre for private cars used on company business.")
    pdf.add_page()
    pdf.start_section("Security")
    heading("3. Security")
    text(BADGES)
    if password is not None:
        from fpdf.enums import EncryptionMethod

        pdf.set_encryption(owner_password="owner", user_password=password, encryption_method=EncryptionMethod.RC4)
    pdf.output(str(path))
    return path


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Travel Policy", 0)
    document.add_paragraph("This policy applies to all staff who travel for work.")
    document.add_heading("Flights", level=1)
    document.add_paragraph("Economy class is used for flights under six hours.")
    table = document.add_table(rows=3, cols=2)
    for i, cells in enumerate((("Region", "Daily allowance"), ("Europe", "60 EUR"), ("Asia", "75 EUR"))):
        for j, value in enumerate(cells):
            table.cell(i, j).text = value
    document.add_heading("Hotels", level=2)
    document.add_paragraph("Hotels are booked through the travel desk.")
    document.save(str(path))
    return path


HTML = """<html><head><title>Support FAQ</title><style>p {color: red}</style><script>var tracking = 1;</script></head>
<body><nav><a href="/">Home</a> | <a href="/faq">FAQ</a></nav><header>Site banner</header>
<p>Answers to common questions.</p>
<h1>Returns</h1><p>Items can be returned within <b>30 days</b> of delivery.</p>
<ul><li>Keep the receipt.</li><li>Use the original box.</li></ul>
<h2>Refunds</h2><div>Refunds are paid to the original card within 5 working days.</div>
<table><tr><th>Plan</th><th>Price</th></tr><tr><td>Basic</td><td>10 USD</td></tr></table>
<footer>Copyright 2024 ACME</footer></body></html>"""

MARKDOWN = """# Onboarding

New staff get a laptop on the **first day**.
See [the portal](http://intranet/portal) for details.

## Accounts

- Email is set up by IT.
- VPN access needs a manager's approval.

| System | Owner |
|---|---|
| CRM | Sales |

```
ssh user@host
# not a heading
```

Security
--------

Badges must be worn at all times.
"""


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    make_pdf(folder / "handbook.pdf")
    make_docx(folder / "travel.docx")
    (folder / "faq.html").write_text(HTML)
    (folder / "onboarding.md").write_text(MARKDOWN)
    (folder / "notes.txt").write_text("Parking is free for staff.\n\nThe canteen opens at 8 am.\n")
    return folder


def by_source(corpus, name):
    return [p for p in corpus.passages if Path(p.source).name == name]


def test_pdf_pages_sections_headers_and_hyphens(tmp_path):
    corpus = ingest([make_pdf(tmp_path / "handbook.pdf")])
    assert not corpus.skipped
    assert [(f.kind, f.pages) for f in corpus.files] == [("pdf", 4)]
    text = "\n".join(p.text for p in corpus.passages)
    assert "ACME Corp" not in text and "Page " not in text  # running header and footer dropped
    assert "reimbursement of travel costs" in text and "reimburse-" not in text
    where = {p.page: p for p in corpus.passages}
    assert set(where) == {1, 2, 3, 4}
    assert where[1].section == "Leave policy" and LEAVE in where[1].text and REQUESTS in where[1].text
    assert where[1].text.startswith("1. Leave policy")
    assert where[2].section == "Expenses" and EXPENSES in where[2].text
    assert "Hotel 150 EUR" in where[2].text and "Meals 40 EUR" in where[2].text  # the table, a row per line
    assert where[3].section == "Expenses"  # no new bookmark on page 3: the section goes on
    assert where[4].section == "Security" and BADGES in where[4].text


def test_docx_headings_paragraphs_and_tables(tmp_path):
    corpus = ingest([make_docx(tmp_path / "travel.docx")])
    assert [(f.kind, f.pages) for f in corpus.files] == [("docx", None)]
    sections = {p.section: p.text for p in corpus.passages}
    assert set(sections) == {"Travel Policy", "Flights", "Hotels"}
    assert "all staff who travel" in sections["Travel Policy"]
    assert "Region | Daily allowance\nEurope | 60 EUR\nAsia | 75 EUR" in sections["Flights"]
    assert sections["Hotels"] == "Hotels\n\nHotels are booked through the travel desk."
    assert all(p.page is None for p in corpus.passages)


def test_html_and_markdown_sections(docs):
    corpus = ingest([docs])
    html = {p.section: p.text for p in by_source(corpus, "faq.html")}
    assert html == {
        "Support FAQ": "Answers to common questions.",  # before the first heading: the page title
        "Returns": "Returns\n\nItems can be returned within 30 days of delivery.\n\nKeep the receipt.\n\nUse the original box.",
        "Refunds": "Refunds\n\nRefunds are paid to the original card within 5 working days.\n\nPlan | Price\nBasic | 10 USD",
    }
    joined = " ".join(html.values())
    assert "tracking" not in joined and "Home" not in joined and "Copyright" not in joined and "banner" not in joined
    md = {p.section: p.text for p in by_source(corpus, "onboarding.md")}
    assert md["Onboarding"] == "Onboarding\n\nNew staff get a laptop on the first day. See the portal for details."
    assert "- VPN access needs a manager's approval." in md["Accounts"] and "CRM | Sales" in md["Accounts"]
    assert "ssh user@host\n# not a heading" in md["Accounts"]  # code kept; its "#" line is no heading
    assert md["Security"] == "Security\n\nBadges must be worn at all times."
    assert [p.text for p in by_source(corpus, "notes.txt")] == ["Parking is free for staff.\n\nThe canteen opens at 8 am."]
    assert {f.kind for f in corpus.files} == {"pdf", "docx", "html", "markdown", "text"}


def test_unreadable_files_are_reported_and_the_others_ingest(docs):
    from fpdf import FPDF

    make_pdf(docs / "locked.pdf", password="secret")
    make_pdf(docs / "open-locked.pdf", password="")  # encrypted, but with an empty user password: readable
    scan = FPDF()
    scan.add_page()
    scan.rect(20, 20, 120, 80, style="F")  # a page with a picture and no text layer
    scan.output(str(docs / "scan.pdf"))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage")
    (docs / "broken.docx").write_bytes(b"PK\x03\x04 not a zip archive")
    (docs / "empty.txt").write_text("  \n")
    (docs / "logo.png").write_bytes(b"\x89PNG")
    corpus = ingest([docs])
    reasons = {Path(path).name: reason for path, reason in corpus.skipped}
    assert set(reasons) == {"locked.pdf", "scan.pdf", "broken.pdf", "broken.docx", "empty.txt", "logo.png"}
    for name, reason in reasons.items():
        assert name in reason and reason.endswith(".") and "\n" not in reason  # one sentence naming the file
    assert "encrypted with a password" in reasons["locked.pdf"]
    assert "no text layer" in reasons["scan.pdf"] and "OCR" in reasons["scan.pdf"]
    assert "not a readable PDF" in reasons["broken.pdf"]
    assert "not a readable Word document" in reasons["broken.docx"]
    assert "is empty" in reasons["empty.txt"]
    assert "not a kind of document" in reasons["logo.png"]
    read = {Path(f.path).name for f in corpus.files}
    assert read == {"handbook.pdf", "open-locked.pdf", "travel.docx", "faq.html", "onboarding.md", "notes.txt"}
    # open-locked.pdf holds the same text as handbook.pdf: its passages are duplicates, counted
    assert corpus.duplicates == len(by_source(corpus, "handbook.pdf")) and corpus.notes


def test_missing_path_is_one_sentence(tmp_path):
    from tunesmith.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        ingest([tmp_path / "nowhere"])


def test_passages_are_bounded_on_paragraph_boundaries_with_stable_ids(tmp_path):
    paragraphs = [f"Clause {i}: the supplier delivers batch {i} within {i + 2} days of the order. " * 3 for i in range(20)]
    long = " ".join(f"Sentence {i} of the long clause says that invoices are paid in {i + 10} days." for i in range(40))
    path = tmp_path / "contract.txt"
    path.write_text("\n\n".join(paragraphs + [long]) + "\n")
    corpus = ingest([path], max_chars=600)
    assert all(len(p.text) <= 600 for p in corpus.passages)
    kept = [p.text for p in corpus.passages]
    for paragraph in paragraphs:  # a short paragraph is never cut
        assert sum(paragraph.strip() in t for t in kept) == 1
    long_parts = [t for t in kept if t.startswith("Sentence")]
    assert len(long_parts) > 1 and all(t.endswith("days.") for t in long_parts)  # cut between sentences
    again = ingest([path], max_chars=600)
    assert [p.id for p in again.passages] == [p.id for p in corpus.passages]
    assert len({p.id for p in corpus.passages}) == len(corpus.passages)


def test_corpus_is_continued_pretraining_data(docs, tmp_path, tiny_model_dir):
    from tunesmith.data.formats import load_data
    from tunesmith.data.rows import load_texts
    from tunesmith.train.pretrain import train_pretrain

    corpus = ingest([docs])
    out = write_corpus(corpus.passages, tmp_path / "corpus.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0].keys() == {"text", "source", "page", "section", "id"}
    data = load_data(out)
    assert data.task == "pretrain" and data.unused_columns == ["source", "page", "section", "id"]  # reported, not read
    assert load_texts(str(out)) == [p.text for p in corpus.passages]
    assert [p.id for p in read_corpus(out)] == [p.id for p in corpus.passages]
    config = tiny_run_config(tiny_model_dir, out, max_steps=2, max_length=32, eval_steps=2)
    config.method.stages = ["pretrain"]
    config.data.replay_ratio = 0.0
    summary = train_pretrain(config, tmp_path / "run")
    assert summary.task == "pretrain" and summary.global_step == 2


@pytest.mark.skipif(not REAL_PDF.exists(), reason="the shared-mime-info spec PDF is not on this machine")
def test_a_real_pdf_from_elsewhere():
    """A PDF made by DocBook tooling, not by these tests: every page reads, sections come
    from its bookmarks, and its running header is gone."""
    corpus = ingest([REAL_PDF])
    assert not corpus.skipped and corpus.files[0].pages == 17
    assert len(corpus.passages) > 20
    assert sum(p.section is not None for p in corpus.passages) >= 0.9 * len(corpus.passages)
    assert any(p.section == "1.1. Version" and "version 0.21" in p.text for p in corpus.passages)
    assert not any(p.text.startswith("Shared MIME-info Database\n") for p in corpus.passages[1:])


# --------------------------------------------------------------------------- grounding

PASSAGE = f"{LEAVE} {REQUESTS}"


@pytest.mark.parametrize("statement, expected", [
    ("Employees get 25 days of paid leave each year.", True),  # digits for words, another verb
    ("According to the passage, up to five days of unused leave can be carried over to the next year.", True),
    ("Submit leave requests through the HR portal at least 2 weeks in advance.", True),
    ("Yes.", True),
    ("Employees receive thirty days of paid leave per year.", False),  # a figure the passage does not give
    ("Unused leave cannot be carried over.", False),  # a negation the passage does not make
    ("Leave must be approved by the chief executive in writing.", False),
    ("The company offers a pension plan with matching contributions.", False),
])
def test_supported(statement, expected):
    assert supported(statement, PASSAGE) is expected


def test_numbers_and_statements():
    assert numbers("1,500 euros, 12.50%, ninety (90) days, twenty-five") == {"1500", "12.5", "90", "25"}
    assert numbers("one of the parties", spelled_one=False) == set()
    assert split_statements("Employees get 25 days, e.g. for holidays. Unused leave expires [2].\n- First item\n2. Second") == [
        "Employees get 25 days, e.g. for holidays.", "Unused leave expires.", "First item", "Second"]


def test_citations_and_grounding_report():
    cited = citations('As [1] and [p-0123456789ab] say, "can be carried over for a maximum" applies [3, 4]; see [the portal](http://x).')
    assert cited.refs == ["1", "p-0123456789ab", "3", "4"] and cited.quotes == ["can be carried over for a maximum"]

    good = grounding_report("Employees receive 25 days of paid leave [1]. \"carried over for a maximum of five days\"", PASSAGE)
    assert good["unsupported"] == [] and good["invented_citations"] == []
    bad = grounding_report("Employees receive 25 days [1]. They also get a company car [2]. "
                           "The rule is \"leave is unlimited for managers\".", PASSAGE)
    assert bad["statements"][0] == "Employees receive 25 days."
    assert bad["unsupported"] == ["They also get a company car.", 'The rule is "leave is unlimited for managers".']
    assert bad["invented_citations"] == ["2", '"leave is unlimited for managers"']
    by_id = grounding_report("Employees receive 25 days [p-aaaaaaaaaaaa] [p-bbbbbbbbbbbb].", [PASSAGE], ["p-aaaaaaaaaaaa"])
    assert by_id["unsupported"] == [] and by_id["invented_citations"] == ["p-bbbbbbbbbbbb"]


@pytest.mark.skipif(not (SHARED_DATA / "cuad-qa" / "test.csv").exists(), reason="the shared CUAD-QA data is not here")
def test_thresholds_on_cuad_reference_answers():
    """CUAD's reference answers are supported by their own clause and rarely by another
    row's (leaving out answers that occur in it word for word): 86.9% vs 2.6% over train+test (TAT-QA: 55.3% vs 3.6%, its computed
    figures are not in the text)."""
    import random

    rows = [r for split in ("train", "test") for r in csv.DictReader((SHARED_DATA / "cuad-qa" / f"{split}.csv").open())]
    own = sum(supported(r["answer"], r["context"]) for r in rows) / len(rows)
    rng = random.Random(0)
    pairs = [(r["answer"], rows[(i + rng.randrange(1, len(rows))) % len(rows)]["context"]) for i, r in enumerate(rows)]
    # an answer found word for word in the other clause ("New York" again) is supported there
    other = sum(supported(a, c) for a, c in pairs if a not in c) / len(pairs)
    assert own > 0.85 and other < 0.05


# --------------------------------------------------------------------------- grounded question-answer pairs


def fake_teacher(conversations):
    """Per passage: a supported pair, an unsupported one and a question without an answer;
    the security passage gets a garbled reply."""
    replies = []
    for messages in conversations:
        prompt = messages[-1]["content"]
        if "badge" in prompt:
            replies.append("I am sorry, here is some text without any pairs at all.")
        elif "paid leave" in prompt:
            replies.append("Q: How many days of paid leave do employees get?\nA: 25 days per year.\n\n"
                           "Q: Who approves leave?\nA: The chief executive, by fax.\n\nQ: What happens next?")
        else:
            replies.append('[{"question": "What needs a receipt?", "answer": "Expense claims above 500 euros."},'
                           ' {"question": "What is the mileage rate?", "answer": "1.20 euros per kilometre."}]')
    return replies


def test_generate_qa_keeps_supported_pairs_and_counts_the_rest(tmp_path):
    passages = ingest([make_pdf(tmp_path / "handbook.pdf")]).passages
    progress = []
    rows, stats = generate_qa(passages, fake_teacher, per_passage=2, batch_size=2,
                              on_progress=lambda done, total, s: progress.append((done, total)))
    assert progress == [(2, 4), (4, 4)]
    assert [(r["question"], r["answer"]) for r in rows] == [
        ("How many days of paid leave do employees get?", "25 days per year."),
        ("What needs a receipt?", "Expense claims above 500 euros."),
    ]
    # page 1: 2 pairs + an orphan question; pages 2 and 3: 2 JSON pairs each (page 3 holds neither
    # the 500 euros nor the 1.20 rate); page 4: garbled
    assert stats.generated == 6 and stats.kept == 2
    assert stats.dropped_unparseable == 2 and stats.dropped_unsupported == 4 and sum(stats.dropped.values()) == 6
    for row in rows:  # each kept pair cites its passage
        passage = next(p for p in passages if p.id == row["passage_id"])
        assert row["passage"] == passage.text and row["source"] == passage.source
        assert (row["page"], row["section"]) == (passage.page, passage.section)
    out, report = write_qa(rows, tmp_path / "qa.jsonl", stats)
    assert json.loads(report.read_text())["dropped"]["unsupported"] == 4

    from tunesmith.data.formats import load_data

    data = load_data(out)  # question/answer with the passage as context in the user turn
    assert data.task == "chat" and data.column_map["context"] == "passage"
    assert data.records[0]["messages"][0]["content"] == f"{rows[0]['passage']}\n\n{rows[0]['question']}"


def test_answers_that_restate_the_question_or_ask_one_are_dropped():
    reply = ("Q: What is the policy on leave?\nA: The policy on leave is a requirement of the HR policy.\n"
             "Q: Is unused leave carried over?\nA: Yes.\nQ: 1. How many days?\nA: 2. How many weeks?\n"
             "Q: How many days of paid leave do employees receive?\nA: 25 days per year.")
    rows, stats = generate_qa([Passage(PASSAGE, "handbook.pdf", 1, "Leave")], lambda conversations: [reply], per_passage=4)
    assert [r["answer"] for r in rows] == ["25 days per year."]
    # the first answer's own words (requirement, HR) are half unsupported; "Yes." adds nothing
    assert stats.dropped == {"unsupported": 1, "uninformative": 1, "unparseable": 1}


def test_parse_pairs_reads_common_forms():
    assert parse_pairs("1. **Question 1:** How many?\n**Answer 1:** Twenty-five.\n2. Q) Where?\n   A) The HR\n   portal") == (
        [("How many?", "Twenty-five."), ("Where?", "The HR portal")], 0)
    assert parse_pairs('```json\n{"pairs": [{"question": "How many?", "answer": "25"}]}\n```') == ([("How many?", "25")], 0)
    assert parse_pairs("no pairs here") == ([], 1)


# --------------------------------------------------------------------------- CLI


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_ingest_and_qa(docs, tmp_path, stub_openai):
    (docs / "broken.docx").write_bytes(b"not a docx")
    corpus = tmp_path / "corpus.jsonl"
    result = invoke("data", "ingest", docs, "--out", corpus)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "5 file(s) read" in output and "4 PDF page(s)" in output
    assert "skipped:" in output and "broken.docx is not a readable Word document" in output
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert {Path(r["source"]).name for r in rows} == {"handbook.pdf", "travel.docx", "faq.html", "onboarding.md", "notes.txt"}

    stub_openai.reply = lambda messages: fake_teacher([messages])[0]
    qa = tmp_path / "qa.jsonl"
    result = invoke("data", "qa", corpus, "--out", qa, "--teacher-url", stub_openai.url, "--teacher-model", "stub",
                    "--per-passage", "2")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "pairs kept of" in output and "unsupported" in output
    kept = [json.loads(line) for line in qa.read_text().splitlines()]
    assert kept and all(r["passage_id"] in {x["id"] for x in rows} for r in kept)
    assert json.loads((tmp_path / "qa.report.json").read_text())["kept"] == len(kept)


def test_cli_ingest_errors_are_one_sentence(tmp_path):
    result = invoke("data", "ingest", tmp_path / "missing-folder", "--out", tmp_path / "c.jsonl")
    assert result.exit_code == 1 and "Traceback" not in result.output and "does not exist" in result.output
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "bad.pdf").write_bytes(b"nothing")
    result = invoke("data", "ingest", tmp_path / "only", "--out", tmp_path / "c.jsonl")
    assert result.exit_code == 1 and "No text could be read" in result.output and "bad.pdf" in result.output
    assert not (tmp_path / "c.jsonl").exists()


# --------------------------------------------------------------------------- evaluation


def test_grounding_results_from_a_context_column(tmp_path):
    from tunesmith.config import RunConfig
    from tunesmith.data.formats import load_data
    from tunesmith.data.rows import load_prompts
    from tunesmith.evaluate.grounding import grounding_results, row_contexts
    from tunesmith.evaluate.report import _grounding_section

    path = tmp_path / "test.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "context", "answer"])
        writer.writerow(["How many days of leave?", f"{LEAVE}\n\n{REQUESTS}", "25 days"])
        writer.writerow(["Who approves expenses?", EXPENSES, "The finance team"])
    data = load_data(path)
    prompts = [r["prompt"] for r in load_prompts(data, RunConfig())]
    contexts = row_contexts(data, prompts)
    assert contexts == [f"{LEAVE}\n\n{REQUESTS}", EXPENSES]  # a context with a blank line comes back whole
    base = ["Employees receive 25 days [1]. They also get a bonus of 900 euros.", "The finance team [3]."]
    tuned = ["Employees receive 25 days of paid leave.", "The finance team approves them."]
    g = grounding_results(contexts, base, tuned)
    assert g["rows"] == 2
    assert g["base"]["statements"] == 3 and g["base"]["unsupported_statements"] == 1
    assert g["base"]["rows_with_unsupported"] == 1 and g["base"]["invented_citations"] == 1
    assert g["tuned"]["unsupported_share"] == 0.0 and g["tuned"]["invented_citations"] == 0
    html = _grounding_section({"grounding": g})
    assert 'id="grounding"' in html and "invented citations" in html
    assert grounding_results([None, None], base, tuned) is None
    assert _grounding_section({}) == ""


def test_evaluation_measures_grounding_for_base_and_tuned(tiny_model_dir, tmp_path, capsys):
    """A run trained on grounded QA rows: its evaluation checks both models' answers against
    each test row's passage and stores the figures under "grounding"."""
    from tunesmith.config import EvalConfig
    from tunesmith.evaluate.run import evaluate_run
    from tunesmith.workflows.train_eval import train

    rows, _ = generate_qa(ingest([make_pdf(tmp_path / "handbook.pdf")]).passages, fake_teacher, per_passage=2)
    data, test = tmp_path / "qa.jsonl", tmp_path / "test.jsonl"
    variants = [r | {"question": f"{r['question']} (case {i})"} for i in range(8) for r in rows]
    write_qa(variants, data)
    write_qa(rows, test)
    config = tiny_run_config(tiny_model_dir, data, max_steps=2, max_length=512, pack_length=512)
    config.eval.enabled = False
    train(config, tmp_path / "run")
    opts = EvalConfig(forgetting=False, bias=False, max_new_tokens=8)
    evaluation = evaluate_run(tmp_path / "run", test=str(test), options=opts)
    results = evaluation.to_json()
    assert results["task"] == "generation"
    grounding = results["grounding"]
    assert grounding["rows"] == len(rows)
    for side in ("base", "tuned"):
        assert 0.0 <= grounding[side]["unsupported_share"] <= 1.0 and grounding[side]["statements"] >= 0
    assert 'id="grounding"' in (tmp_path / "run" / "report.html").read_text()
    from tunesmith.cli.common import print_evaluation

    print_evaluation(evaluation, tmp_path / "run")
    assert f"grounding ({len(rows)} rows with a context)" in " ".join(capsys.readouterr().out.split())
