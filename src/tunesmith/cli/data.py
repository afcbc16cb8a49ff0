"""`tunesmith data`: read, check, augment and synthesize data files."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tunesmith.cli.common import (
    TeacherKeyOpt,
    TeacherModelOpt,
    TeacherUrlOpt,
    console,
    convert_builtin_once,
    err,
    parse_columns_option,
    progress_for,
    user_errors,
)
from tunesmith.errors import TunesmithError
from tunesmith.models import load_tokenizer
from tunesmith.runtime import quiet_libraries

app = typer.Typer(help="Read, check, augment and synthesize data files.", no_args_is_help=True)


@app.command("inspect")
@user_errors
def inspect_data(
    file: Annotated[Path, typer.Argument(help="Data file or saved `datasets` folder.")],
    model: Annotated[str, typer.Option(help="Model whose tokenizer counts tokens.")] = "smollm2-135m",
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,... e.g. text=query,label=intent.")] = None,
    show: Annotated[int, typer.Option(help="Example rows to print.")] = 2,
) -> None:
    """Detect the format of FILE, convert it to the canonical shape and report what was found."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.data.formats import (  # numpy
        length_percentiles,
        load_data,
        token_lengths,
    )

    data = load_data(file, columns=parse_columns_option(columns))
    convert_builtin_once(model)
    with err.status(f"counting tokens with the {model} tokenizer"):
        lengths = token_lengths(data.records, data.task, load_tokenizer(model))
    table = Table(show_header=False, title=str(file))
    table.add_row("format", data.format.value)
    table.add_row("task", data.task)
    table.add_row("rows", str(len(data.records)))
    for column, use in data.column_uses():  # every column of the file and what it became
        table.add_row(f"column {column}", f"-> {use}")
    if data.unused_columns:
        table.add_row(
            "not used",
            f"{', '.join(data.unused_columns)} (the conversion ignores these columns; map them with --columns "
            "if the model should see them)",
        )
    if data.unused_keys:
        table.add_row(
            "not read",
            f"{', '.join(data.unused_keys)} (keys inside the turns that the conversion does not read; the model "
            "never sees them)",
        )
    pct = length_percentiles(lengths)
    table.add_row(f"tokens ({model})", "  ".join(f"{k} {v}" for k, v in pct.items()))
    if data.task == "classify":
        labels = {r["label"] for r in data.records}
        table.add_row("labels", f"{len(labels)} distinct")
    for note in data.notes:
        table.add_row("note", note)
    console.print(table)
    for record in data.records[:show]:
        console.print_json(data=record)


@app.command("check")
@user_errors
def check_data_cmd(
    file: Annotated[Path, typer.Argument(help="Training data file to check.")],
    validation: Annotated[Optional[str], typer.Option(help="Validation file: checked for leakage from FILE.")] = None,
    test: Annotated[Optional[str], typer.Option(help="Test file: checked for leakage from FILE.")] = None,
    model: Annotated[str, typer.Option(help="Model whose tokenizer measures lengths.")] = "smollm2-135m",
    max_length: Annotated[Optional[int], typer.Option(help="Flag rows longer than this many tokens.")] = None,
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,...")] = None,
    out: Annotated[Path, typer.Option(help="Folder for data_card.json and data_card.md.")] = Path("."),
    fix: Annotated[Optional[Path], typer.Option(help="Write a cleaned copy here (JSONL) plus fix_log.jsonl; FILE is never changed. Rows also in --test are dropped from it.")] = None,
    task: Annotated[Optional[str], typer.Option(help="What the data will train: chat, classify, pretrain, preference or kto (default: as detected).")] = None,
    label_check: Annotated[bool, typer.Option(help="Look for mislabelled rows with embeddings (classification data; ~60 s per 10k rows on 2 CPU cores).")] = True,
    conflicts: Annotated[Optional[str], typer.Option(help="With --fix: resolve one prompt with different answers by keep-majority (most common answer) or keep-first.")] = None,
    domain: Annotated[str | None, typer.Option(help="Enforce a domain's compliance profile (legal, medical, finance or support): its identifiers are errors, and --fix redacts them with numbered placeholders.")] = None,
) -> None:
    """Check FILE for problems that spoil training (empty answers, conflicts, duplicates,
    leakage, PII, encoding, lengths, labels; with --domain, the identifiers its regulation
    names) and write a data card. Exit code 1 when a finding is an error, which blocks
    training."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.data.quality import (  # scipy
        CONFLICT_POLICIES,
        check_data,
        fix_data,
        write_card,
    )

    # Said before the slow checks run: --conflicts only chooses what --fix keeps.
    if conflicts is not None and conflicts not in CONFLICT_POLICIES:
        raise TunesmithError(f"--conflicts must be one of {', '.join(CONFLICT_POLICIES)}, not {conflicts!r}.")
    if conflicts is not None and fix is None:
        raise TunesmithError(
            "--conflicts applies only with --fix, which writes the cleaned copy; run `tunesmith data check "
            f"{shlex.quote(str(file))} --fix {shlex.quote(file.stem + '.clean.jsonl')} --conflicts {conflicts}`."
        )
    profile = None
    if domain is not None:
        from tunesmith.domains.packs import get_domain  # only with --domain, like the rest: not for --help

        profile = get_domain(domain).profile  # an unknown name fails here, before the slow checks
    cols = parse_columns_option(columns)
    convert_builtin_once(model)
    with progress_for(err, f"checking {file}") as progress:
        card = check_data(
            file, validation, test, tokenizer=load_tokenizer(model), max_length=max_length, columns=cols,
            label_check=label_check, task=task, on_batch=lambda done: progress.update(done, what="embedding for the label check"),  # done: a running count
            profile=profile,
        )
    write_card(card, out)
    table = Table(title=f"{file}: {card.rows} rows, {card.format}, quality score {card.score()}/100")
    for col in ("severity", "check", "rows", "finding"):
        table.add_column(col)
    for f in card.findings:
        style = "red" if f.severity == "error" else "yellow"
        table.add_row(f"[{style}]{f.severity}[/{style}]", f.check, str(f.count), f.message)
    console.print(table if card.findings else f"{file}: {card.rows} rows, no problems found.")
    for note in card.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"data card: {out / 'data_card.md'}, {out / 'data_card.html'}, {out / 'data_card.json'}")
    if fix:
        result = fix_data(file, fix, columns=cols, test_path=test, conflicts=conflicts, profile=profile)
        console.print(
            f"cleaned copy: {result.out_path} ({result.rows_out} of {result.rows_in} rows; dropped {result.dropped}, "
            f"redacted {result.redacted}, changed {result.changed}); every change is in {result.log_path}"
        )
    if domain is not None:
        # A check under a domain pack joins its audit trail, with the redactions when --fix wrote a copy.
        from tunesmith.domains.audit import (  # numpy (data loaders)
            file_facts,
            findings_summary,
            record_check,
        )

        checked = [file_facts(file, "train", cols)] + [file_facts(p, role, cols) for role, p in (
            ("validation", validation), ("test", test)) if p]
        entry = record_check(domain, checked, findings_summary(card.to_json()), {
            "rows": card.rows, "quality_score": card.score(), "errors": len(card.errors())}, fix=result if fix else None)
        console.print(f"audit trail: entry {entry['id']} (`tunesmith audit export --out audit.csv`)", highlight=False)
    if card.errors():
        err.print(f"[red]{len(card.errors())} error(s) would block training[/red]; fix them or use --fix for the safe ones.")
        raise typer.Exit(1)


@app.command("augment")
@user_errors
def augment_cmd(
    file: Annotated[Path, typer.Argument(help="Data file whose rows get variants.")],
    out: Annotated[Path, typer.Option(help="Where to write the rows (JSONL): the originals, then the variants.")],
    methods: Annotated[str, typer.Option(help="Comma-separated: typo[:rate], case, punct, dropout[:rate], swap[:rate], paraphrase. A rate is the share of words touched.")] = "typo:0.05,case,punct,dropout:0.1,swap:0.1",
    copies: Annotated[int, typer.Option(help="Variants per method per row.")] = 1,
    originals: Annotated[bool, typer.Option(help="Also write the original rows (method 'original').")] = True,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same variants.")] = 0,
    columns: Annotated[Optional[str], typer.Option(help="Override detection: field=column,...")] = None,
    teacher: Annotated[Optional[str], typer.Option(help="Local model that paraphrases (default: the bundled model).")] = None,
    teacher_url: TeacherUrlOpt = None,
    teacher_model: TeacherModelOpt = None,
    teacher_key: TeacherKeyOpt = None,
) -> None:
    """Write meaning-preserving variants of each row's user text (typos, casing, punctuation,
    word dropout and swaps, paraphrases); answers and labels are kept. Every row records
    `source_id` (its row in FILE) and `method`."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.data.augment import augment, parse_methods  # numpy
    from tunesmith.data.formats import load_data  # numpy
    from tunesmith.data.load import write_jsonl  # pydantic
    from tunesmith.inference.teacher import make_teacher  # pydantic

    chosen = parse_methods(methods)
    if copies < 1:
        raise TunesmithError(f"--copies must be at least 1, got {copies}.")
    _refuse_overwrite(file, out)
    data = load_data(file, columns=parse_columns_option(columns))
    model = None
    if "paraphrase" in chosen:
        model = make_teacher(teacher, teacher_url, teacher_model, teacher_key)
        if not teacher_url:
            convert_builtin_once(model.target)
    with progress_for(err, f"augmenting {file.name}", len(data.records)) as progress:
        rows, report = augment(data.records, data.task, chosen, data.rows, copies, seed, model, originals,
                               on_progress=progress.advance)
    write_jsonl(out, rows)
    table = Table(title=f"{out}: {report.rows_out} rows from {report.rows_in}")
    table.add_column("method")
    table.add_column("rows", justify="right")
    for method, count in report.made.items():
        table.add_row(method, str(count))
    for reason, count in report.skipped.items():
        table.add_row(f"[yellow]skipped[/yellow] {reason}", str(count))
    console.print(table)
    console.print("Variants of one row are near-duplicates: give `tunesmith train` a --validation file of "
                  "original rows, or a held-out split can share sources with the training rows.")


@app.command("synth")
@user_errors
def synth_cmd(
    out: Annotated[Path, typer.Option(help="JSONL to grow; rows already there count, so a stopped run continues.")],
    n: Annotated[int, typer.Option("--n", help="Rows to have in OUT when done.")],
    seed: Annotated[Optional[Path], typer.Option(help="Examples to learn from: chat, text+label or preference data.")] = None,
    kind: Annotated[str, typer.Option(help="auto (from the seed), instruct, classify, preference or scenarios.")] = "auto",
    topics: Annotated[Optional[Path], typer.Option(help="Scenarios YAML: template (with {topic}), topics, optional variables, system, answer.")] = None,
    methods: Annotated[str, typer.Option(help="Instruct data: self-instruct and/or evol (Evol-Instruct), comma-separated.")] = "self-instruct,evol",
    teacher: Annotated[Optional[str], typer.Option(help="Local teacher model: built-in name, folder or run directory (default smollm2-135m).")] = None,
    teacher_url: TeacherUrlOpt = None,
    teacher_model: TeacherModelOpt = None,
    teacher_key: TeacherKeyOpt = None,
    rpm: Annotated[Optional[float], typer.Option(help="Endpoint requests per minute at most (teacher and judge share it when they use the same URL).")] = None,
    concurrency: Annotated[int, typer.Option(help="Endpoint requests in flight at once.")] = 4,
    judge: Annotated[Optional[str], typer.Option(help="Local judge model; rows it scores below --min-score are dropped.")] = None,
    judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint as judge.")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="Model name to ask the judge endpoint for.")] = None,
    judge_key: Annotated[Optional[str], typer.Option(envvar="TUNESMITH_JUDGE_KEY", help="API key for the judge endpoint.")] = None,
    min_score: Annotated[float, typer.Option(help="Judge score (1-10) a row needs.")] = 6.0,
    rejected_model: Annotated[Optional[str], typer.Option(help="Preference data: a weaker local model writes the rejected answers (default: degraded copies of the chosen one).")] = None,
    label_check: Annotated[str, typer.Option(help="Classification: classifier (trained on the seed), teacher (asked yes/no) or off.")] = "classifier",
    label_descriptions: Annotated[Optional[Path], typer.Option(help="YAML mapping each label to a description for the teacher.")] = None,
    rouge: Annotated[float, typer.Option(help="Drop rows whose ROUGE-L with a seed or earlier row is above this.")] = 0.7,
    cosine: Annotated[float, typer.Option(help="Drop rows whose MiniLM embedding cosine with a seed or earlier row is above this.")] = 0.95,
    min_chars: Annotated[Optional[int], typer.Option(help="Shortest new text (default: from the seed).")] = None,
    max_chars: Annotated[Optional[int], typer.Option(help="Longest new text (default: from the seed).")] = None,
    max_candidates: Annotated[Optional[int], typer.Option(help="Stop after this many candidates (default 10 x --n).")] = None,
    batch_size: Annotated[int, typer.Option(help="Candidates per round.")] = 16,
    temperature: Annotated[float, typer.Option(help="Teacher sampling temperature for new texts.")] = 0.9,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer or scenario in tokens.")] = 256,
    random_seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    columns: Annotated[Optional[str], typer.Option(help="Override detection of the seed file: field=column,...")] = None,
) -> None:
    """Generate new rows with a teacher model (Self-Instruct, Evol-Instruct, label-conditioned,
    preference pairs or scenarios), filter every one, and report what was kept and why the
    rest was dropped (OUT's .report.json; dropped rows in .dropped.jsonl)."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    import yaml

    from tunesmith.data.synth import (  # numpy
        SynthOptions,
        load_scenarios,
        sidecar_paths,
        synthesize,
    )
    from tunesmith.inference.teacher import (  # pydantic
        EndpointTeacher,
        RateLimiter,
        make_teacher,
    )

    if seed:
        _refuse_overwrite(seed, out)
    descriptions = {}
    if label_descriptions:
        try:
            descriptions = yaml.safe_load(label_descriptions.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TunesmithError(f"--label-descriptions {label_descriptions}: cannot read it as YAML ({exc}).") from None
        if not isinstance(descriptions, dict):
            raise TunesmithError(f"--label-descriptions {label_descriptions} must map each label to a description.")
    options = SynthOptions(
        n=n, kind=kind, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), seed=random_seed,
        batch_size=batch_size, temperature=temperature, max_new_tokens=max_new_tokens, min_chars=min_chars,
        max_chars=max_chars, rouge_threshold=rouge, embedding_threshold=cosine, label_check=label_check,
        min_judge_score=min_score, max_candidates=max_candidates, label_descriptions={str(k): str(v) for k, v in descriptions.items()},
        scenarios=load_scenarios(topics) if topics else None,
    )
    the_teacher = make_teacher(teacher, teacher_url, teacher_model, teacher_key, rpm, concurrency)
    the_judge = (make_teacher(judge, judge_url, judge_model, judge_key, rpm, concurrency, what="judge")
                 if judge or judge_url else None)
    weaker = make_teacher(rejected_model, what="rejected-model") if rejected_model else None
    if isinstance(the_judge, EndpointTeacher) and isinstance(the_teacher, EndpointTeacher) and the_judge.url == the_teacher.url:
        the_judge.limiter = the_teacher.limiter = RateLimiter(rpm)  # one endpoint, one --rpm budget
    for local in (the_teacher, the_judge, weaker):
        if local is not None and hasattr(local, "target"):
            convert_builtin_once(local.target)
    columns_map = parse_columns_option(columns)
    dropped_path, report_path = sidecar_paths(out)
    try:
        with progress_for(err, "loading", n, eta=True) as progress:

            def show(report) -> None:
                progress.update(min(report.kept, n), what=report.kind,
                                note=f"kept {report.kept}, dropped {sum(report.dropped.values())}")

            report = synthesize(out, the_teacher, options, seed, columns_map, the_judge, weaker, on_progress=show)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted.[/yellow] the rows kept so far are in {out}; run the same command to continue.")
        raise typer.Exit(130) from None
    console.print(_dropped_table(f"{out}: {report.kept} rows kept of {report.candidates} candidates ({report.kind}, "
                                 f"teacher {report.teacher})", report.dropped, "rows")
                  if report.dropped else f"{out}: {report.kept} rows kept, none dropped.")
    if report.stopped:
        err.print(f"[yellow]{report.stopped}[/yellow]")
    console.print(f"filter report: {report_path}; dropped rows: {dropped_path}")


@app.command("ingest")
@user_errors
def ingest_cmd(
    docs: Annotated[list[Path], typer.Argument(help="Documents (PDF, DOCX, HTML, Markdown, text) or folders that hold them.")],
    out: Annotated[Path, typer.Option(help="Corpus to write (JSONL: text, source, page, section, id per passage).")] = Path("corpus.jsonl"),
    max_chars: Annotated[int, typer.Option(help="Longest passage in characters (~4 per token).")] = 2000,
) -> None:
    """Read the organisation's documents into clean passages with provenance (file, page,
    section): a corpus for continued pretraining (`tunesmith train --method pretrain --data
    OUT`) and for `tunesmith data qa`. Files that cannot be read are listed with the reason;
    the others are still read."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.domains.documents import (  # pypdf, python-docx, bs4 on use
        find_documents,
        ingest,
        write_corpus,
    )

    start = time.perf_counter()
    with progress_for(err, "reading documents", len(find_documents(docs)[0]), eta=True) as progress:
        corpus = ingest(docs, max_chars=max_chars, on_file=lambda path, done, total: progress.update(done, note=Path(path).name))
    seconds = time.perf_counter() - start
    table = Table(title=f"{len(corpus.files)} file(s) read in {seconds:.1f} s: {corpus.pages} PDF page(s), "
                        f"{len(corpus.passages)} passages")
    for col in ("file", "kind", "pages", "passages", "characters"):
        table.add_column(col, justify="left" if col in ("file", "kind") else "right")
    for f in corpus.files:
        table.add_row(f.path, f.kind, str(f.pages) if f.pages is not None else "-", str(f.passages), str(f.characters))
    if corpus.files:
        console.print(table)
    for note in corpus.notes:
        console.print(f"note: {note}", highlight=False)
    for _, reason in corpus.skipped:
        err.print(f"[yellow]skipped:[/yellow] {reason}", highlight=False)
    if not corpus.passages:
        raise TunesmithError(f"No text could be read from {', '.join(map(str, docs))}; see the skipped files above.")
    write_corpus(corpus.passages, out)
    console.print(f"corpus: {out} ({len(corpus.passages)} passages, {len(corpus.skipped)} file(s) skipped). Next: "
                  f"`tunesmith train --method pretrain --data {shlex.quote(str(out))}` or "
                  f"`tunesmith data qa {shlex.quote(str(out))} --out qa.jsonl`.", highlight=False)


@app.command("qa")
@user_errors
def qa_cmd(
    corpus: Annotated[Path, typer.Argument(help="Corpus JSONL from `tunesmith data ingest` (or a document or folder, ingested first).")],
    out: Annotated[Path, typer.Option(help="Question-answer rows to write (JSONL: question, passage, answer, source, page, section, passage_id).")] = Path("qa.jsonl"),
    per_passage: Annotated[int, typer.Option(help="Question-answer pairs to ask for per passage.")] = 3,
    max_passages: Annotated[int | None, typer.Option(help="Use only the first N passages (a quick trial).")] = None,
    teacher: Annotated[str | None, typer.Option("--teacher", "--model", help="Local model that writes the pairs: built-in name, folder or run directory (default smollm2-135m).")] = None,
    teacher_url: TeacherUrlOpt = None,
    teacher_model: TeacherModelOpt = None,
    teacher_key: TeacherKeyOpt = None,
    rpm: Annotated[float | None, typer.Option(help="Endpoint requests per minute at most.")] = None,
    concurrency: Annotated[int, typer.Option(help="Endpoint requests in flight at once.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Passages per generation batch.")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (low: answers stay close to the passage).")] = 0.3,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest reply in tokens (default 96 per pair).")] = None,
    min_coverage: Annotated[float, typer.Option(help="Share of an answer's content words the passage must hold.")] = 0.6,
    random_seed: Annotated[int, typer.Option(help="Random seed of a local model's sampling.")] = 0,
) -> None:
    """Generate grounded question-answer pairs from CORPUS: a teacher writes pairs per passage,
    and a pair is kept only when its passage supports the answer (numbers, negations and
    content words checked). Each row cites its passage; the counts and dropped examples go to
    OUT's .report.json."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.domains.documents import (  # pypdf, python-docx, bs4 on use
        ingest,
        read_corpus,
    )
    from tunesmith.domains.grounded_qa import generate_qa, write_qa  # the grounding checks' regexes
    from tunesmith.inference.teacher import make_teacher  # pydantic

    _refuse_overwrite(corpus, out)
    if corpus.is_file() and corpus.suffix.lower() == ".jsonl":
        passages = read_corpus(corpus)
    else:
        made = ingest([corpus])
        for _, reason in made.skipped:
            err.print(f"[yellow]skipped:[/yellow] {reason}", highlight=False)
        if not made.passages:
            raise TunesmithError(f"No text could be read from {corpus}; see the skipped files above.")
        passages = made.passages
    if max_passages is not None:
        passages = passages[: max(0, max_passages)]
    the_teacher = make_teacher(teacher, teacher_url, teacher_model, teacher_key, rpm, concurrency)
    if hasattr(the_teacher, "target"):
        convert_builtin_once(the_teacher.target)
        import torch  # a local model samples: seeded for repeatable pairs

        torch.manual_seed(random_seed)
    budget = max_new_tokens or 96 * per_passage

    def generate(conversations: list[list[dict]]) -> list[str]:
        return the_teacher.complete(conversations, temperature=temperature, max_new_tokens=budget)

    with progress_for(err, f"writing pairs with {the_teacher.name}", len(passages), eta=True) as progress:
        rows, stats = generate_qa(passages, generate, per_passage=per_passage, batch_size=batch_size,
                                  min_coverage=min_coverage, on_progress=lambda done, total, s: progress.update(
                                      done, note=f"kept {s.kept}, dropped {sum(s.dropped.values())}"))
    _, report_path = write_qa(rows, out, stats)
    console.print(_dropped_table(f"{out}: {stats.kept} pairs kept of {stats.generated} generated from {stats.passages} "
                                 "passages", stats.dropped, "pairs")
                  if stats.dropped else f"{out}: {stats.kept} pairs kept of {stats.generated}, none dropped.")
    console.print(f"report: {report_path}. Train with `tunesmith train --data {shlex.quote(str(out))}`: each row's "
                  "passage is the context of its question.", highlight=False)
    if not rows:
        err.print("[yellow]no pair was kept[/yellow]: try a stronger teacher (--teacher-url/--teacher-model) or see the "
                  "dropped examples in the report.")


def _dropped_table(title: str, dropped, unit: str) -> Table:
    """What a generator dropped, by reason (a Counter), most common first."""
    table = Table(title=title)
    table.add_column("dropped because")
    table.add_column(unit, justify="right")
    for reason, count in dropped.most_common():
        table.add_row(reason, str(count))
    return table


def _refuse_overwrite(source: Path, out: Path) -> None:
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise TunesmithError(f"--out {out} is the input file itself; write to another file so the original stays intact.")

