"""A worker takes fine-tuning jobs from the database and runs them: `tunesmith worker`, or
started by `tunesmith serve`.

Each job trains into `DATA_DIR/runs/<job id>/` through the same `train.stages.train` the CLI
uses (data gate, training, then the before/after evaluation and model card). While it runs,
a heartbeat thread tells the database the worker is alive and reads back cancel and pause
requests; a trainer callback writes step metrics and checkpoints as job events. A worker
that dies (even by SIGKILL) stops sending heartbeats, and the next worker to look takes the
job over and resumes it from its last checkpoint; a job that kills its worker `max_attempts`
times fails instead.

Every write about a job (events, checkpoints, the run folder, result files) is made only
while the job is still this worker's, checked in the same transaction (`Lease`): a worker that
stalled and was taken over cannot overwrite its successor's work when it wakes up.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from transformers import TrainerCallback

from tunesmith.domains.audit import Audit, api_actor, service_log
from tunesmith.errors import DataError, TunesmithError
from tunesmith.evaluate.report import alarms
from tunesmith.jobs import store
from tunesmith.jobs.spec import build_config, resolved_settings
from tunesmith.jobs.store import (
    CANCELLED,
    FAILED,
    PAUSED,
    QUEUED,
    SUCCEEDED,
    Checkpoint,
    File,
    Job,
    Model,
)
from tunesmith.runs import EvalResults, RunDir, TrainSummary
from tunesmith.workflows.train_eval import train


class Stop(Exception):
    """Training must stop now: `reason` is cancel, pause, lost (another worker owns the job),
    shutdown (this worker was asked to exit, or the process that started it is gone) or
    database (it stayed unreachable)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


T = TypeVar("T")


def transient(exc: BaseException) -> bool:
    """Whether a database error may pass by itself: the server restarting, a dropped
    connection, SQLite busy past its timeout."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def retry_db(fn: Callable[[], T], window_s: float) -> T:
    """`fn()`, tried again while the database is briefly unreachable, for up to `window_s`
    (after that long without a heartbeat another worker may take the job over anyway)."""
    end, delay = time.monotonic() + window_s, 0.2
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if not transient(exc) or time.monotonic() + delay > end:
                raise
            print(f"database unavailable ({type(exc.orig).__name__}); trying again in {delay:.1f} s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass(frozen=True)
class Lease:
    """A claimed job as this worker holds it. Every write about the job goes through `write`,
    which makes it in one transaction with the check that the job is still this worker's
    (`store.hold`); once the job was taken over or cancelled, nothing is written and `Stop` is
    raised instead. A check also counts as a heartbeat, so a write to the run folder right
    after a successful `check` cannot race a take-over (that needs `stale_after_s` of silence)."""

    sessions: sessionmaker[Session]
    job_id: str
    worker: str
    retry_s: float = 60.0

    def write(self, fn: Callable[[Session], T] | None = None) -> T | None:
        def attempt() -> T | None:
            with self.sessions.begin() as s:
                if not store.hold(s, self.job_id, self.worker):
                    status = s.scalar(select(Job.status).where(Job.id == self.job_id))
                    raise Stop("cancel" if status == CANCELLED else "lost")
                return fn(s) if fn else None

        return retry_db(attempt, self.retry_s)

    def check(self) -> None:
        """Raise `Stop` unless the job is still this worker's: called right before the worker
        (or the trainer it runs) writes to the run folder."""
        self.write()

    def event(self, message: str, **fields) -> None:
        self.write(lambda s: store.add_event(s, self.job_id, message, **fields))


class JobCallback(TrainerCallback):
    """Step metrics and checkpoints into the job's events; stops training when asked to, or
    as soon as the job is no longer this worker's, before the trainer writes the run folder."""

    def __init__(self, lease: Lease, job: Job, flags: dict):
        self.lease, self.job, self.flags = lease, job, flags
        self.last: dict = {}
        self.clock = (time.perf_counter(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        config = RunDir(Path(args.output_dir).parent).config  # output_dir is RUN/checkpoints
        t = config.train
        resolved = resolved_settings(config) | {"max_steps": state.max_steps}
        self.clock = (time.perf_counter(), state.num_input_tokens_seen)
        start = f"resumed at step {state.global_step} of" if state.global_step else "started:"

        def begin(s: Session) -> None:
            s.get(Job, self.job.id).resolved = resolved
            store.add_event(s, self.job.id, f"Training {start} {state.max_steps} steps "
                            f"(batch size {t.batch_size}, learning rate {t.learning_rate:g}).", data=resolved)

        self.lease.write(begin)

    def on_step_end(self, args, state, control, **kwargs):
        reason = self.flags.get("stop")
        if reason == "pause":
            control.should_save = True  # pause at a checkpoint, so resume loses nothing
            self.flags["pausing"] = True
        elif reason:
            raise Stop(reason)
        if control.should_log or control.should_evaluate or control.should_save:
            self.lease.check()  # the trainer writes metrics.jsonl or a checkpoint next: only while the job is ours

    def on_evaluate(self, args, state, control, **kwargs):
        self.lease.check()  # an evaluation can be long, and a checkpoint may follow it

    def on_train_end(self, args, state, control, **kwargs):
        self.lease.check()  # the recipe saves the final weights next

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_loss" in logs:  # the end-of-training summary
            return
        row = {"step": state.global_step, "total_steps": state.max_steps}
        for key, name in (("loss", "train_loss"), ("eval_loss", "valid_loss"), ("learning_rate", "learning_rate"),
                          ("eval_accuracy", "valid_accuracy"), ("accuracy", "train_accuracy")):
            if key in logs:
                row[name] = logs[key]
        if "loss" in logs:  # tokens/s since the previous training log
            now, (then, seen) = time.perf_counter(), self.clock
            if now > then:
                row["tokens_per_s"] = round((state.num_input_tokens_seen - seen) / (now - then), 1)
            self.clock = (now, state.num_input_tokens_seen)
        self.last.update(row)
        figures = ", ".join(f"{k.replace('_', ' ')}={v:.4g}" for k, v in row.items() if k not in ("step", "total_steps"))
        self.lease.event(f"Step {state.global_step}/{state.max_steps}: {figures}", type="metrics", data=row)

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        metrics = {k: v for k, v in self.last.items() if k != "total_steps"} | {"step": step}

        def record(s: Session) -> None:
            s.add(Checkpoint(id=store.new_id("ftckpt"), job_id=self.job.id, step=step, metrics=metrics,
                             model=f"{self.job.fine_tuned_model}:ckpt-step-{step}"))
            store.add_event(s, self.job.id, f"Checkpoint saved at step {step}.", data={"step": step})

        self.lease.write(record)
        if self.flags.pop("pausing", False):
            raise Stop("pause")


class EvalWatch:
    """`eval_progress` for the job's before/after evaluation: a stop flag (cancel, pause,
    shutdown) ends it at the next batch, and the job must still be this worker's, checked at
    most every second, before the evaluation writes its results into the run folder."""

    def __init__(self, lease: Lease, flags: dict):
        self.lease, self.flags = lease, flags
        self.checked: float | None = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if reason := self.flags.get("stop"):
            raise Stop(reason)  # training is over, so its final checkpoint is where a resume starts
        if self.checked is None:
            self.lease.event("Evaluating the fine-tuned model against its base model.")
        elif time.monotonic() - self.checked >= 1.0:
            self.lease.check()
        else:
            return
        self.checked = time.monotonic()


class Heartbeat(threading.Thread):
    """Every `interval` seconds: tell the database this worker is alive, and turn the job's
    state into a stop flag (cancelled, paused, or taken over after a stall). Every second:
    when `orphaned()` says the process that started this worker is gone, stop as on SIGTERM."""

    def __init__(self, sessions, job_id: str, worker: str, flags: dict, interval: float,
                 orphaned: Callable[[], bool] | None = None):
        super().__init__(daemon=True)
        self.sessions, self.job_id, self.worker, self.flags, self.interval = sessions, job_id, worker, flags, interval
        self.orphaned = orphaned or (lambda: False)
        self.done = threading.Event()

    def run(self):
        last = time.monotonic()
        while not self.done.wait(min(self.interval, 1.0)):
            if self.orphaned() and self.flags.get("stop") in (None, "pause"):
                self.flags["stop"] = "shutdown"
            if time.monotonic() - last < self.interval:
                continue
            last = time.monotonic()
            try:
                job = store.heartbeat(self.sessions, self.job_id, self.worker)
                status = job.status if job else store.status_of(self.sessions, self.job_id)
            except Exception as exc:  # the database is briefly unreachable: try again next beat
                print(f"heartbeat failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            if job is None:
                self.flags.setdefault("stop", "cancel" if status == CANCELLED else "lost")
            elif job.control == "pause":
                self.flags.setdefault("stop", "pause")


def run_job(sessions, job: Job, worker: str, data_dir: Path, heartbeat_s: float, flags: dict, *,
            stale_after_s: float = 60.0, orphaned: Callable[[], bool] | None = None) -> str:
    """Run one claimed job to its end; returns the status it ended in. A database error that
    lasts longer than `stale_after_s` hands the job back to the queue instead of failing it."""
    run_dir = Path(job.run_dir)
    lease = Lease(sessions, job.id, worker, retry_s=stale_after_s)
    beat = Heartbeat(sessions, job.id, worker, flags, heartbeat_s, orphaned)
    beat.start()
    paths: dict[str, str] = {}
    names: dict[str, str] = {}  # the server's paths -> what the project knows them as
    try:
        with sessions.begin() as s:
            for f in s.query(File).filter(File.id.in_([job.training_file, job.validation_file])):
                paths[f.id] = f.path
                names[f.path] = f"{f.filename} ({f.id})"
        names[str(run_dir)] = job.id
        if job.source != job.model:
            names[job.source] = job.model
        config = build_config(job.source, job.method, paths[job.training_file],
                              paths.get(job.validation_file) if job.validation_file else None, job.seed,
                              overrides=job.overrides)
        resume = RunDir(run_dir).exists and any(
            RunDir(d.parent).complete_checkpoints() for d in run_dir.rglob("checkpoints"))
        lease.check()  # the run folder is about to be cleaned or resumed: only by the job's owner
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # an attempt that died before its first checkpoint: start clean
        lease.event("Resuming from the last checkpoint." if resume else "Fine-tuning job started.")
        # Under a domain pack the job's entries go to the service's audit trail, naming its project and key.
        audit = Audit(service_log(data_dir), api_actor(job.project, job.key_id))
        summary = train(config, run_dir, callbacks=[JobCallback(lease, job, flags)], resume=resume,
                        eval_progress=EvalWatch(lease, flags), audit=audit)
        lease.check()  # the report and the model card are rewritten in place
        for path in (RunDir(run_dir).report_file, RunDir(run_dir).model_card_file):
            if path.exists():
                text = path.read_text(encoding="utf-8")
                path.write_text(hide_paths(text, names, html=path.suffix == ".html"), encoding="utf-8")
        return _succeed(lease, job, data_dir, summary)
    except Stop as stop:
        return _stopped(lease, job, stop.reason)
    except TunesmithError as exc:
        code = "invalid_training_file" if isinstance(exc, DataError) else "invalid_request"
        message = client_message(str(exc), names | {path: file_id for file_id, path in paths.items()}, data_dir)
        return _fail(lease, job, {"code": code, "message": message, "param": None})
    except Exception as exc:
        if transient(exc):  # the database stayed unreachable: not the job's fault, another run resumes it
            print(f"job {job.id}: database unavailable ({type(exc).__name__}); handing the job back", file=sys.stderr)
            return _stopped(lease, job, "database")
        traceback.print_exc()  # a bug, not the user's fault: the details go to the worker log
        detail = client_message(f"{type(exc).__name__}: {exc}", names, data_dir)
        message = f"Training failed unexpectedly ({detail}); the worker log has the details."
        return _fail(lease, job, {"code": "server_error", "message": message[:1000], "param": None})
    finally:
        beat.done.set()


def hide_paths(text: str, names: dict[str, str], html: bool = False) -> str:
    """`text` with the server's storage paths replaced by the names the project knows (file
    names and ids, the job id, the base model's name): a project never sees where the server
    keeps things. In HTML the path may appear escaped, and the names are escaped."""
    import html as markup

    for path in sorted(names, key=len, reverse=True):  # a run folder before the data folder it is in
        name = markup.escape(names[path]) if html else names[path]
        text = text.replace(path, name)
        if html:
            text = text.replace(markup.escape(path), name)
    return text


# An absolute POSIX path not inside a URL or a word ("/srv/x/a.py", not "http://h/a" or "and/or").
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.+@-]+/)*[\w.+@-]+")


def client_message(text: str, names: dict[str, str], data_dir: Path) -> str:
    """`text` fit for a job's error: the paths a project knows by name replaced by those names
    (`hide_paths`), and every other server path, under the data folder or elsewhere (a
    library's traceback line, a model cache), replaced by "[server path]"."""
    text = hide_paths(text, names)
    for root in {str(data_dir), str(Path(data_dir).resolve())}:  # the data folder may hold spaces
        text = re.sub(re.escape(root) + r"[^\s'\",;)\]}>]*", "[server path]", text)
    return _ABSOLUTE_PATH.sub("[server path]", text)


def _succeed(lease: Lease, job: Job, data_dir: Path, summary: TrainSummary) -> str:
    lease.check()  # no result files for a job that is no longer ours
    files = _result_files(job, data_dir)

    def finish(s: Session) -> None:
        # The status, the result files and the model commit together: a client that sees
        # `succeeded` can download and chat.
        store.finish_job(s, job.id, lease.worker, SUCCEEDED, trained_tokens=summary.tokens_seen,
                         result_files=[file_id for file_id, _, _ in files])
        for file_id, path, name in files:
            s.add(File(id=file_id, project=job.project, filename=name, purpose="fine-tune-results",
                       bytes=path.stat().st_size, path=str(path), info={"job": job.id}))
        _register(s, job, summary)

    try:
        lease.write(finish)
    except BaseException:  # cancelled or taken over meanwhile: no model, and no stray files
        for _, path, _ in files:
            path.unlink(missing_ok=True)
        raise
    return SUCCEEDED


def _register(s, job: Job, summary: TrainSummary) -> None:
    s.merge(Model(id=job.fine_tuned_model, project=job.project, base=job.model, job_id=job.id, run_dir=job.run_dir))
    evaluation = summary.evaluation
    if evaluation:
        store.add_event(s, job.id, _evaluation_line(evaluation), data={"metrics": evaluation.metrics})
        for alarm in alarms(evaluation, job.run_dir):
            store.add_event(s, job.id, alarm, level="warn")
    store.add_event(s, job.id, f"New fine-tuned model created: {job.fine_tuned_model}")
    store.add_event(s, job.id, "The job has successfully completed.")


def _evaluation_line(evaluation: EvalResults) -> str:
    base, tuned = evaluation.metrics["base"], evaluation.metrics["tuned"]
    parts = [f"{name} {base[name]:.4g} -> {tuned[name]:.4g}" for name in list(base)[:3]]
    return f"Evaluation on {evaluation.test.rows} test rows, base -> tuned: " + "; ".join(parts) + "."


def _result_files(job: Job, data_dir: Path) -> list[tuple[str, Path, str]]:
    """The step metrics as CSV (as OpenAI's result file), plus the evaluation report and model
    card when the run has them, written as files the job's project can download once `_succeed`
    records them: (file id, where, name shown)."""
    run = RunDir(Path(job.run_dir))
    final = run.final if run.exists else run
    out = []
    files_dir = data_dir / "files"
    metrics = final.metrics_file
    if metrics.exists():
        file_id = store.new_id("file")
        path = files_dir / f"{file_id}.csv"
        columns = ["step", "train_loss", "eval_loss", "learning_rate", "tokens_per_s", "eval_accuracy"]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(json.loads(line) for line in metrics.read_text().splitlines() if line.strip())
        out.append((file_id, path, "step_metrics.csv"))
    for source in (run.report_file, run.model_card_file):
        if source.exists():
            file_id = store.new_id("file")
            path = files_dir / f"{file_id}{source.suffix}"
            shutil.copyfile(source, path)
            out.append((file_id, path, source.name))
    return out


def _stopped(lease: Lease, job: Job, reason: str) -> str:
    if reason not in ("pause", "shutdown", "database"):
        return _current_status(lease)  # cancelled, or another worker took it over
    if reason == "pause":
        status, message = PAUSED, "Job paused at its latest checkpoint; resume it to continue."
    elif reason == "shutdown":  # hand the job back: the next worker resumes it
        status, message = QUEUED, f"Worker {lease.worker} is shutting down; the job goes back to the queue."
    else:
        status, message = QUEUED, (f"Worker {lease.worker} lost its database connection; the job goes back to the "
                                   "queue and resumes from its last checkpoint.")

    def hand_back(s: Session) -> None:
        # Handed back cleanly, the job did not stop its worker: the attempt does not count.
        store.finish_job(s, job.id, lease.worker, status, attempts=Job.attempts - 1)
        store.add_event(s, job.id, message, level="info" if reason == "pause" else "warn")

    try:
        lease.write(hand_back)
    except Stop:
        return _current_status(lease)
    return status


def _fail(lease: Lease, job: Job, error: dict) -> str:
    def fail(s: Session) -> None:
        store.finish_job(s, job.id, lease.worker, FAILED, error=error)
        store.add_event(s, job.id, f"Fine-tuning failed: {error['message']}", level="error")

    try:
        lease.write(fail)
    except Stop:
        return _current_status(lease)
    return FAILED


def _current_status(lease: Lease) -> str:
    return retry_db(lambda: store.status_of(lease.sessions, lease.job_id), lease.retry_s)


def run_worker(
    database_url: str,
    data_dir: str | Path,
    name: str | None = None,
    poll_s: float = 1.0,
    heartbeat_s: float = 5.0,
    stale_after_s: float = 60.0,
    once: bool = False,
    log=print,
    max_attempts: int = 3,
    parent_pid: int | None = None,
) -> int:
    """Claim and run jobs until stopped (SIGTERM/SIGINT: the running job goes back to the
    queue at once and resumes elsewhere from its last checkpoint). With `once`, return when
    the queue is empty. A job whose worker died on it `max_attempts` times fails instead of
    being taken over again. With `parent_pid` (`tunesmith serve` passes its own), the worker
    stops the same way when that process is gone, even killed by SIGKILL. Returns the number
    of jobs run."""
    data_dir = Path(data_dir)
    sessions = store.connect(database_url)
    worker = name or f"{socket.gethostname()}-{os.getpid()}"
    shutting_down = threading.Event()
    flags: dict = {}  # the running job's stop flags; a fresh dict per job, so a late heartbeat cannot stop the next one

    def shut_down(signum, _frame):
        shutting_down.set()
        flags["stop"] = "shutdown"

    def orphaned() -> bool:
        # A process whose parent died is adopted by init (or a subreaper): its parent pid changes.
        return parent_pid is not None and os.getppid() != parent_pid

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, shut_down)
        signal.signal(signal.SIGINT, shut_down)
    log(f"worker {worker} watching {store.safe_url(database_url)}")
    done = 0
    while not shutting_down.is_set():
        if orphaned():
            log(f"worker {worker}: the process that started it ({parent_pid}) is gone; stopping")
            break
        try:
            job = store.claim_job(sessions, worker, stale_after_s, max_attempts)
        except DBAPIError as exc:
            if not transient(exc):
                raise
            log(f"worker {worker}: database unavailable ({type(exc.orig).__name__}); trying again")
            shutting_down.wait(max(poll_s, 1.0))
            continue
        if job is None:
            if once:
                break
            shutting_down.wait(poll_s)
            continue
        log(f"job {job.id}: running (attempt {job.attempts})")
        flags = {"stop": "shutdown"} if shutting_down.is_set() else {}
        try:
            status = run_job(sessions, job, worker, data_dir, heartbeat_s, flags, stale_after_s=stale_after_s,
                             orphaned=orphaned)
        except DBAPIError as exc:  # not even the hand-back reached the database: the job goes stale, and is resumed
            if not transient(exc):
                raise
            status = f"left running: database unavailable ({type(exc.orig).__name__})"
        log(f"job {job.id}: {status}")
        done += 1
        if orphaned():
            shutting_down.set()
    return done
