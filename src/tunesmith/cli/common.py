"""What the command groups share: the two consoles, the user-error wrapper, option types, the
service's data folder and database, and the renderer of an evaluation's results.

The library modules a command calls are imported inside the command when they load torch,
transformers, pydantic models, numpy, sqlalchemy or fastapi (each such import names on its line
what it loads): `tunesmith --help` then starts in a fifth of a second instead of several."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.errors import TunesmithError
from tunesmith.models import BUILTIN_MODELS, builtin_cache_dir, ensure_builtin
from tunesmith.runtime import duration, progress_interval

if TYPE_CHECKING:  # for annotations only: importing runs costs pydantic at start-up
    from tunesmith.runs import EvalResults

console = Console()
err = Console(stderr=True)  # progress, notes and errors: stdout stays the result alone

# A teacher behind an OpenAI-compatible endpoint (augment, synth, auto).
TeacherUrlOpt = Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint as teacher instead of a local model, e.g. http://localhost:8000/v1.")]
TeacherModelOpt = Annotated[Optional[str], typer.Option(help="Model name to ask the endpoint for.")]
TeacherKeyOpt = Annotated[Optional[str], typer.Option(envvar="TUNESMITH_TEACHER_KEY", help="API key for the endpoint.")]

# Experiment trackers (train, auto, quickstart).
ReportToOpt = Annotated[Optional[str], typer.Option(help="Also log the run to experiment trackers: tensorboard, mlflow, trackio (comma-separated).")]

# A domain pack and its task template (train, auto, eval, data check).
DomainOpt = Annotated[str | None, typer.Option(help="Domain pack: legal, medical, finance or support (`tunesmith domains`): "
                                                  "its compliance profile gates the data, its probes join the evaluation, "
                                                  "and the run goes to the audit trail.")]
TemplateOpt = Annotated[str | None, typer.Option(help="Task template of the --domain pack (e.g. clause-classification): "
                                                    "its task, system prompt and label set.")]

KeepGeneralOpt = Annotated[bool, typer.Option("--keep-general", help="The model must stay a general assistant: forgetting is then an alarm, not information.")]

# The service's folder and database (serve, worker, keys, and the commands that register runs).
DataDirOpt = Annotated[Optional[Path], typer.Option(help="Where the service keeps uploaded files, runs and its SQLite database "
                                                    "(default: $TUNESMITH_DATA, else ~/.tunesmith).")]
# Read from the environment too: a URL with a password on the command line is visible to every
# user of the machine in `ps`, so `tunesmith serve` hands it to its workers this way.
DatabaseOpt = Annotated[Optional[str], typer.Option(envvar="TUNESMITH_DATABASE_URL", show_envvar=True,
                                                    help="SQLAlchemy database URL (e.g. postgresql://...); default SQLite in --data-dir. "
                                                    "Prefer the environment variable when the URL holds a password.")]


def user_errors(fn):
    """Turn a TunesmithError into one red sentence and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TunesmithError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None

    return wrapper


def default_run_dir(prefix: str = "run") -> Path:
    return Path("runs") / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")


def default_data_dir() -> Path:
    return Path(os.environ.get("TUNESMITH_DATA", Path.home() / ".tunesmith"))


def parse_columns_option(columns: str | None) -> dict[str, str] | None:
    """The --columns option (`field=column,...`) as a mapping; None when not given."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.data.formats import parse_columns  # numpy

    return parse_columns(columns) if columns else None


def convert_builtin_once(target: str | None) -> None:
    """The first use of a built-in model converts its GGUF file (about 20 s): say so with a
    spinner instead of sitting silent. `target` is a model name or a run directory."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.runs import RunDir  # pydantic

    name = target
    if target and (run := RunDir(target)).exists:
        name = run.config.model.name
    if name in BUILTIN_MODELS and not (builtin_cache_dir(name) / "config.json").exists():
        with err.status(f"first use of {name}: converting the bundled model once (about 20 s)"):
            ensure_builtin(name)


def open_store(data_dir: Path | None, database_url: str | None):
    """The service's database (created when missing) as a session factory."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.jobs import store  # sqlalchemy

    # The service's files (uploads, runs, the SQLite database and its -wal/-shm) hold other
    # people's data and the key hashes: everything it creates from here on is owner-only.
    os.umask(0o077)
    data_dir = data_dir or default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or store.default_database_url(data_dir)
    try:
        return store.connect(url)
    except Exception as exc:  # a bad URL or an unreachable server: one sentence, not a traceback
        raise TunesmithError(f"Cannot open the database {store.safe_url(url)}: {type(exc).__name__}; "
                             "check --database-url.") from None


def ensure_database(data_dir: Path | None, database_url: str | None) -> tuple[Path, str]:
    """The service's data folder and database URL, once the database exists (created when
    missing, or one sentence saying why it cannot be)."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.jobs.store import default_database_url  # sqlalchemy

    data_dir = data_dir or default_data_dir()
    open_store(data_dir, database_url)
    return data_dir, database_url or default_database_url(data_dir)


class PlainProgress:
    """Progress as plain lines, for a console that is not a terminal (a log file, CI, nohup),
    where rich draws no live bars: a line when a phase starts, one every `interval` seconds
    while it runs, and one when it ends."""

    def __init__(self, console: Console, interval: float | None = None, clock=time.monotonic):
        self.console = console
        self.interval = progress_interval() if interval is None else interval
        self.now = clock
        self.phases: dict[str, dict] = {}  # per phase: start time, last line's time, finished

    def update(self, what: str, done: int, total: int | None, note: str = "") -> None:
        now = self.now()
        phase = self.phases.get(what)
        if phase is None or (phase["ended"] and total is not None and done < total):  # new, or run again
            phase = self.phases[what] = {"start": now, "done0": done, "last": None, "ended": False}
        if phase["ended"]:
            return
        ended = total is not None and done >= total
        if phase["last"] is None or ended or now - phase["last"] >= self.interval:
            phase["last"], phase["ended"] = now, ended
            elapsed, count = now - phase["start"], done - phase["done0"]
            parts = [f"{what}  {done}/{total if total is not None else '?'}"]
            if note:
                parts.append(note)
            parts.append(f"elapsed {duration(elapsed)}")
            if ended:
                parts.append("done")
            elif count > 0 and total:
                parts.append(f"left {duration(elapsed / count * (total - done))}")
            self.console.print("  ".join(parts), markup=False, highlight=False, soft_wrap=True)


class EvalBars:
    """Rich progress bars for `evaluate_run`'s progress(what, done, total) events: one bar per
    step (base answers, tuned answers, probes...), started on the first event; plain lines
    (PlainProgress) when the console is not a terminal."""

    def __init__(self, console: Console, interval: float | None = None):
        # rich.progress: imported when a command shows bars, not for --help
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.plain = None if console.is_terminal else PlainProgress(console, interval)
        self.tasks: dict[str, int] = {}
        self.started = False

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.plain is not None:
            self.plain.update(what, done, total)
            return
        if not self.started:
            self.progress.start()
            self.started = True
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[what], completed=done, total=total)

    def stop(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


class Tracker:
    """What `progress_for` yields to a command: its library callback calls advance(n) (n more
    items done) or update(done, what, note) (a count, a new phase name, a detail); a rich bar
    on a terminal, PlainProgress lines otherwise."""

    def __init__(self, console: Console, what: str, total: int | None, bar=None, interval: float | None = None,
                 clock=time.monotonic):
        self.what, self.total, self.done, self.note = what, total, 0, ""
        self.bar = bar
        self.plain = None if bar is not None else PlainProgress(console, interval, clock)
        if bar is not None:
            self.task = bar.add_task(what, total=total)
        else:
            self.plain.update(what, 0, total)

    def advance(self, n: int = 1, what: str | None = None) -> None:
        self.update(self.done + n, what)

    def update(self, done: int, what: str | None = None, note: str = "") -> None:
        self.done, self.what, self.note = done, what or self.what, note
        if self.bar is not None:
            self.bar.update(self.task, completed=done, description=f"{self.what}: {note}" if note else self.what)
        else:
            self.plain.update(self.what, done, self.total, note)

    def finish(self) -> None:
        """A count with no known total ends with a done line (a known total's line comes when it is reached)."""
        if self.plain is not None and self.total is None and self.done > 0:
            self.plain.update(self.what, self.done, self.done, self.note)


@contextlib.contextmanager
def progress_for(console: Console, what: str, total: int | None = None, *, eta: bool = False,
                 interval: float | None = None, clock=time.monotonic) -> Iterator[Tracker]:
    """Progress of one long command step: a transient rich bar on a terminal (with `eta`:
    description, bar, n/total, time left), plain lines (PlainProgress) on a log, CI or nohup."""
    if not console.is_terminal:
        tracker = Tracker(console, what, total, interval=interval, clock=clock)
        yield tracker
        tracker.finish()
        return
    # rich.progress: imported when a command shows bars, not for --help
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) if eta else ()
    with Progress(*columns, console=console, transient=True) as bar:
        yield Tracker(console, what, total, bar)


def print_evaluation(results: EvalResults, run_dir: Path) -> None:
    """Base vs tuned per metric, the judge's verdict, any alarm (overfitting, forgetting, bias),
    the value estimate, and where the report, model card and numbers are."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.evaluate.metrics import HIGHER_IS_BETTER  # numpy
    from tunesmith.runs import RunDir  # pydantic

    base, tuned = results.metrics["base"], results.metrics["tuned"]
    table = Table(title=f"base vs tuned on {results.test.rows} test rows", caption=results.test.source)
    for col in ("metric", "base", "tuned", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, before in base.items():
        after = tuned[name]
        scale = name not in ("perplexity", "bleu")
        show = (lambda v: f"{v:.1%}") if scale else (lambda v: f"{v:.2f}")
        better = (after > before) == HIGHER_IS_BETTER.get(name, True)
        colour = "green" if better and after != before else "red" if after != before else ""
        change = f"{after - before:+.1%}" if scale else f"{after - before:+.2f}"
        table.add_row(name, show(before), show(after), f"[{colour}]{change}[/{colour}]" if colour else change)
    console.print(table)
    j = results.judge
    if j:
        console.print(f"judge ({j['judge']}): tuned wins {j['wins']}, loses {j['losses']}, ties {j['ties']} "
                      f"of {j['prompts']} ({j['inconsistent']} inconsistent verdicts counted as ties)")
    f, b = results.forgetting, results.bias
    alarms = [results.overfitting["message"]] if results.overfitting and results.overfitting["flagged"] else []
    forgetting_alarm = bool(f) and f.get("alarm", f["flagged"])
    alarms += [f"forgetting: {line}" for line in (f["findings"] if forgetting_alarm else [])]
    alarms += [f"bias: {line}" for line in (b["tuned"]["findings"] if b else [])]
    for alarm in alarms:
        console.print(f"[yellow]alarm:[/yellow] {alarm}")
    if f and f["flagged"] and not forgetting_alarm:
        console.print(f"forgetting (information, not an alarm): {' '.join(f['findings'])} {f.get('rule', '')}", soft_wrap=True)
    if f and not f["flagged"]:
        console.print(f"forgetting: none beyond the threshold (general-text perplexity {f['general_perplexity']['change']:+.1%}, "
                      f"probes {f['probes']['base']:.0%} -> {f['probes']['tuned']:.0%})")
    if b and not b["tuned"]["flagged"]:
        console.print(f"bias: none flagged ({b['tuned']['pairs']} counterfactual pairs, "
                      f"{b['tuned']['changed_rate']:.1%} changed answers)")
    for note in (b["tuned"].get("notes") or []) if b else []:
        console.print(f"bias (information, not an alarm): {note}", soft_wrap=True)
    a = results.abstention
    if a and a.get("test") and a["test"].get("accuracy") is not None:
        t = a["test"]
        console.print(f"abstention: {t['accuracy']:.1%} accuracy on the {t['coverage']:.0%} of test rows answered "
                      f"(threshold {a['threshold']:.3f} from validation; {t['referred']} referred to a person, "
                      f"{t['accuracy_all']:.1%} answering all)")
    safety = (results.domain or {}).get("safety")
    if safety:
        console.print(f"domain safety: tuned passed {safety['tuned']['passed']} of {safety['probes']} probes "
                      f"(base {safety['base']['passed']})" + (f"; failed: {'; '.join(safety['failed'])}" if safety["failed"] else ""))
    g = results.grounding
    if g:
        console.print(f"grounding ({g['rows']} rows with a context): statements unsupported by it "
                      f"{g['base']['unsupported_share']:.1%} -> {g['tuned']['unsupported_share']:.1%}, invented citations "
                      f"{g['base']['invented_citations']} -> {g['tuned']['invented_citations']}")
    v = results.value
    if v:
        console.print(f"value: about {v['hours_saved_per_week']:.1f} hours saved per week at {v['accuracy']:.1%} {v['accuracy_metric']}")
    run = RunDir(run_dir)
    console.print(f"report: {run.report_file}   model card: {run.model_card_file}   numbers: {run.results_file}")
