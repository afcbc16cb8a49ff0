"""A worker takes fine-tuning jobs from the database and runs them: `tunesmith worker`, or
started by `tunesmith serve`.

Each job trains into `DATA_DIR/runs/<job id>/` through the same `train.stages.train` the CLI
uses (data gate, training, then the before/after evaluation and model card). While it runs,
a heartbeat thread tells the database the worker is alive and reads back cancel and pause
requests; a trainer callback writes step metrics and checkpoints as job events. A worker
that dies (even by SIGKILL) stops sending heartbeats, and the next worker to look takes the
job over and resumes it from its last checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from transformers import TrainerCallback

from tunesmith.errors import DataError, TunesmithError
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
from tunesmith.train.common import complete_checkpoints


class Stop(Exception):
    """Training must stop now: `reason` is cancel, pause, lost (another worker owns the job)
    or shutdown (this worker was asked to exit)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class JobCallback(TrainerCallback):
    """Step metrics and checkpoints into the job's events; stops training when asked to."""

    def __init__(self, sessions, job: Job, flags: dict):
        self.sessions, self.job, self.flags = sessions, job, flags
        self.last: dict = {}
        self.clock = (time.perf_counter(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        run_config = Path(args.output_dir).parent / "config.yaml"
        from tunesmith.config import load_config

        config = load_config(run_config)
        t = config.train
        resolved = resolved_settings(config) | {"max_steps": state.max_steps}
        self.clock = (time.perf_counter(), state.num_input_tokens_seen)
        with self.sessions.begin() as s:
            s.get(Job, self.job.id).resolved = resolved
            start = f"resumed at step {state.global_step} of" if state.global_step else "started:"
            store.add_event(s, self.job.id, f"Training {start} {state.max_steps} steps "
                            f"(batch size {t.batch_size}, learning rate {t.learning_rate:g}).", data=resolved)

    def on_step_end(self, args, state, control, **kwargs):
        reason = self.flags.get("stop")
        if reason == "pause":
            control.should_save = True  # pause at a checkpoint, so resume loses nothing
            self.flags["pausing"] = True
        elif reason:
            raise Stop(reason)

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
        with self.sessions.begin() as s:
            store.add_event(s, self.job.id, f"Step {state.global_step}/{state.max_steps}: {figures}", type="metrics", data=row)

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        metrics = {k: v for k, v in self.last.items() if k != "total_steps"} | {"step": step}
        with self.sessions.begin() as s:
            job = s.get(Job, self.job.id)
            s.add(Checkpoint(id=store.new_id("ftckpt"), job_id=job.id, step=step, metrics=metrics,
                             model=f"{job.fine_tuned_model}:ckpt-step-{step}"))
            store.add_event(s, job.id, f"Checkpoint saved at step {step}.", data={"step": step})
        if self.flags.pop("pausing", False):
            raise Stop("pause")


class Heartbeat(threading.Thread):
    """Every `interval` seconds: tell the database this worker is alive, and turn the job's
    state into a stop flag (cancelled, paused, or taken over after a stall)."""

    def __init__(self, sessions, job_id: str, worker: str, flags: dict, interval: float):
        super().__init__(daemon=True)
        self.sessions, self.job_id, self.worker, self.flags, self.interval = sessions, job_id, worker, flags, interval
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            try:
                job = store.heartbeat(self.sessions, self.job_id, self.worker)
            except Exception as exc:  # the database is briefly unreachable: try again next beat
                print(f"heartbeat failed: {exc}", file=sys.stderr)
                continue
            if job is None:
                with self.sessions() as s:
                    status = s.get(Job, self.job_id).status
                self.flags.setdefault("stop", "cancel" if status == CANCELLED else "lost")
            elif job.control == "pause":
                self.flags.setdefault("stop", "pause")


def run_job(sessions, job: Job, worker: str, data_dir: Path, heartbeat_s: float, flags: dict) -> str:
    """Run one claimed job to its end; returns the status it ended in."""
    from tunesmith.train.stages import train

    run_dir = Path(job.run_dir)
    beat = Heartbeat(sessions, job.id, worker, flags, heartbeat_s)
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
        resume = (run_dir / "config.yaml").exists() and any(
            complete_checkpoints(d.parent) for d in run_dir.rglob("checkpoints"))
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # an attempt that died before its first checkpoint: start clean
        with sessions.begin() as s:
            store.add_event(s, job.id, "Resuming from the last checkpoint." if resume else "Fine-tuning job started.")
        summary = train(config, run_dir, callbacks=[JobCallback(sessions, job, flags)], resume=resume)
        for name in ("report.html", "MODEL_CARD.md"):
            if (run_dir / name).exists():
                text = (run_dir / name).read_text(encoding="utf-8")
                (run_dir / name).write_text(hide_paths(text, names, html=name.endswith(".html")), encoding="utf-8")
        return _succeed(sessions, job, worker, data_dir, summary)
    except Stop as stop:
        return _stopped(sessions, job, worker, stop.reason)
    except TunesmithError as exc:
        code = "invalid_training_file" if isinstance(exc, DataError) else "invalid_request"
        message = hide_paths(str(exc), {path: file_id for file_id, path in paths.items()})
        return _fail(sessions, job, worker, {"code": code, "message": message, "param": None})
    except Exception as exc:  # a bug, not the user's fault: the details go to the worker log
        traceback.print_exc()
        message = f"Training failed unexpectedly ({type(exc).__name__}: {exc}); the worker log has the details."
        return _fail(sessions, job, worker, {"code": "server_error", "message": message[:1000], "param": None})
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


def _succeed(sessions, job: Job, worker: str, data_dir: Path, summary: dict) -> str:
    result_files = _result_files(sessions, job, data_dir)
    with sessions.begin() as s:
        # The status and the model commit together: a client that sees `succeeded` can chat.
        won = store.finish_job(s, job.id, worker, SUCCEEDED, trained_tokens=summary.get("tokens_seen"),
                               result_files=result_files)
        if won:
            _register(s, job, summary)
    return SUCCEEDED if won else _current_status(sessions, job.id)  # cancelled meanwhile: no model


def _register(s, job: Job, summary: dict) -> None:
    from tunesmith.evaluate.report import alarms

    s.merge(Model(id=job.fine_tuned_model, project=job.project, base=job.model, job_id=job.id, run_dir=job.run_dir))
    evaluation = summary.get("evaluation")
    if evaluation:
        store.add_event(s, job.id, _evaluation_line(evaluation), data={"metrics": evaluation["metrics"]})
        for alarm in alarms(evaluation, job.run_dir):
            store.add_event(s, job.id, alarm, level="warn")
    store.add_event(s, job.id, f"New fine-tuned model created: {job.fine_tuned_model}")
    store.add_event(s, job.id, "The job has successfully completed.")


def _evaluation_line(evaluation: dict) -> str:
    base, tuned = evaluation["metrics"]["base"], evaluation["metrics"]["tuned"]
    parts = [f"{name} {base[name]:.4g} -> {tuned[name]:.4g}" for name in list(base)[:3]]
    return f"Evaluation on {evaluation['test']['rows']} test rows, base -> tuned: " + "; ".join(parts) + "."


def _result_files(sessions, job: Job, data_dir: Path) -> list[str]:
    """The step metrics as CSV (as OpenAI's result file), plus the evaluation report and model
    card when the run has them, stored as files the job's project can download."""
    from tunesmith.serve.engine import final_stage_dir

    run_dir = final_stage_dir(Path(job.run_dir)) if (Path(job.run_dir) / "config.yaml").exists() else Path(job.run_dir)
    out = []
    files_dir = data_dir / "files"
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        file_id = store.new_id("file")
        path = files_dir / f"{file_id}.csv"
        columns = ["step", "train_loss", "eval_loss", "learning_rate", "tokens_per_s", "eval_accuracy"]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(json.loads(line) for line in metrics.read_text().splitlines() if line.strip())
        out.append((file_id, path, "step_metrics.csv"))
    for name in ("report.html", "MODEL_CARD.md"):
        source = Path(job.run_dir) / name
        if source.exists():
            file_id = store.new_id("file")
            path = files_dir / f"{file_id}{source.suffix}"
            shutil.copyfile(source, path)
            out.append((file_id, path, name))
    with sessions.begin() as s:
        for file_id, path, name in out:
            s.add(File(id=file_id, project=job.project, filename=name, purpose="fine-tune-results",
                       bytes=path.stat().st_size, path=str(path), info={"job": job.id}))
    return [file_id for file_id, _, _ in out]


def _stopped(sessions, job: Job, worker: str, reason: str) -> str:
    if reason not in ("pause", "shutdown"):
        return _current_status(sessions, job.id)  # cancelled, or another worker took it over
    if reason == "pause":
        status, message = PAUSED, "Job paused at its latest checkpoint; resume it to continue."
    else:  # hand the job back: the next worker resumes it
        status, message = QUEUED, f"Worker {worker} is shutting down; the job goes back to the queue."
    with sessions.begin() as s:
        if won := store.finish_job(s, job.id, worker, status):
            store.add_event(s, job.id, message, level="info" if reason == "pause" else "warn")
    return status if won else _current_status(sessions, job.id)


def _fail(sessions, job: Job, worker: str, error: dict) -> str:
    with sessions.begin() as s:
        if won := store.finish_job(s, job.id, worker, FAILED, error=error):
            store.add_event(s, job.id, f"Fine-tuning failed: {error['message']}", level="error")
    return FAILED if won else _current_status(sessions, job.id)


def _current_status(sessions, job_id: str) -> str:
    with sessions() as s:
        return s.get(Job, job_id).status


def run_worker(
    database_url: str,
    data_dir: str | Path,
    name: str | None = None,
    poll_s: float = 1.0,
    heartbeat_s: float = 5.0,
    stale_after_s: float = 60.0,
    once: bool = False,
    log=print,
) -> int:
    """Claim and run jobs until stopped (SIGTERM/SIGINT: the running job goes back to the
    queue at once and resumes elsewhere from its last checkpoint). With `once`, return when
    the queue is empty. Returns the number of jobs run."""
    data_dir = Path(data_dir)
    sessions = store.connect(database_url)
    worker = name or f"{socket.gethostname()}-{os.getpid()}"
    shutting_down = threading.Event()
    flags: dict = {}  # the running job's stop flags; a fresh dict per job, so a late heartbeat cannot stop the next one

    def shut_down(signum, _frame):
        shutting_down.set()
        flags["stop"] = "shutdown"

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, shut_down)
        signal.signal(signal.SIGINT, shut_down)
    log(f"worker {worker} watching {database_url}")
    done = 0
    while not shutting_down.is_set():
        job = store.claim_job(sessions, worker, stale_after_s)
        if job is None:
            if once:
                break
            time.sleep(poll_s)
            continue
        log(f"job {job.id}: running (attempt {job.attempts})")
        flags = {"stop": "shutdown"} if shutting_down.is_set() else {}
        status = run_job(sessions, job, worker, data_dir, heartbeat_s, flags)
        log(f"job {job.id}: {status}")
        done += 1
    return done
