"""The service's state in one database (SQLAlchemy 2): API keys, uploaded files, fine-tuning
jobs with their events and checkpoints, and the fine-tuned models they made.

SQLite in WAL mode by default (readers do not block the writer, so the API answers while a
worker writes events); any SQLAlchemy URL, e.g. PostgreSQL, for workers on several machines.
Claiming a job is a compare-and-set UPDATE, which both databases make atomic: a job is never
run by two workers at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# Job statuses, as OpenAI's fine-tuning API names them, plus `paused`.
VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, PAUSED = (
    "validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused",
)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    """A random id such as `ftjob-3kq9...`: ids are never paths and never guessable."""
    return f"{prefix}-{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    pass


class Key(Base):
    __tablename__ = "keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret; the secret is never stored
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart in a listing
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class File(Base):
    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # the client's name, for display only
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))  # where we stored it, named by id
    created_at: Mapped[float] = mapped_column(Float, default=now)
    info: Mapped[dict] = mapped_column(JSON, default=dict)  # detected format, rows, data-gate summary


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(255))  # the base model's public name
    source: Mapped[str] = mapped_column(String(1024))  # what loads it: a built-in name or a folder the server allows
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    method: Mapped[dict] = mapped_column(JSON)  # {"type": ..., "<type>": {"hyperparameters": {...}}}
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    control: Mapped[str | None] = mapped_column(String(16), nullable=True)  # "pause" asked of a running job
    created_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resolved: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the hyperparameters auto chose
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    run_dir: Mapped[str] = mapped_column(String(1024))
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Runs of the job that did not end by handing it back cleanly (a pause or a worker's
    # shutdown gives its attempt back): when a worker dies on the job this many times, it fails.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Config values the server resolved from the names a client gave (a registered reward
    # function's file, a judge's URL): server-side only, never shown to the client.
    overrides: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The id of the API key that created the job: the audit trail names it (with the project)
    # as who ran a job under a domain pack.
    key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Event(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # order of writing
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(8), default="message")  # "message" or "metrics"
    message: Mapped[str] = mapped_column(String(2000))
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), ForeignKey("jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    model: Mapped[str] = mapped_column(String(300))  # ft:...:ckpt-step-N
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # ft:<base>:<project>:<suffix>:<job>
    project: Mapped[str] = mapped_column(String(64), index=True)
    base: Mapped[str] = mapped_column(String(255))
    job_id: Mapped[str] = mapped_column(String(40))
    run_dir: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[float] = mapped_column(Float, default=now)


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir) / 'tunesmith.db'}"


def safe_url(url: str) -> str:
    """`url` as it may be printed or logged: the password masked (`postgresql://ts:***@db/ts`)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparseable: show no part of it, it may hold a password
        return "(an unreadable database URL)"


def connect(url: str) -> sessionmaker[Session]:
    """Open (and create) the database at `url`; returns a session factory."""
    sqlite = url.startswith("sqlite")
    # pre_ping: a server-side database that restarted leaves dead pooled connections; each
    # checkout tests its connection and replaces a dead one instead of failing the caller.
    engine = create_engine(url, connect_args={"timeout": 30} if sqlite else {}, pool_pre_ping=not sqlite)
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _add_missing_columns(engine) -> None:
    """Add the nullable columns newer versions define to a database an older version made
    (create_all makes missing tables only), so upgrading keeps every job."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the worker's writes
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fast in WAL mode
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")  # as PostgreSQL does: an event needs its job
    cursor.close()


# ---- keys ---------------------------------------------------------------------------------


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(sessions: sessionmaker[Session], project: str, admin: bool = False) -> str:
    """Create an API key for `project` and return its secret (shown once, stored hashed)."""
    secret = "ts-" + secrets.token_urlsafe(32)
    with sessions.begin() as s:
        s.add(Key(id=new_id("key"), project=project, hash=hash_key(secret), prefix=secret[:10], admin=admin))
    return secret


def find_key(sessions: sessionmaker[Session], secret: str) -> Key | None:
    with sessions() as s:
        return s.scalar(select(Key).where(Key.hash == hash_key(secret), Key.revoked.is_(False)))


# ---- events -------------------------------------------------------------------------------


def add_event(s: Session, job_id: str, message: str, level: str = "info", type: str = "message", data: dict | None = None):
    s.add(Event(job_id=job_id, message=message[:2000], level=level, type=type, data=data))


# ---- the job queue ------------------------------------------------------------------------


def claim_job(sessions: sessionmaker[Session], worker: str, stale_after_s: float, max_attempts: int = 3) -> Job | None:
    """Take the oldest queued job, or a running one whose worker stopped sending heartbeats
    for `stale_after_s` (it died: the job resumes from its last checkpoint). The UPDATE only
    succeeds if the row is still as we read it, so two workers never both win.

    A stalled job whose worker died on it `max_attempts` times is failed instead: a job that
    kills its worker (out of memory, a crash in a library) would otherwise take down every
    worker that picks it up, forever."""
    while True:
        with sessions() as s:
            cutoff = now() - stale_after_s
            job = s.scalar(
                select(Job)
                .where((Job.status == QUEUED) | ((Job.status == RUNNING) & (Job.heartbeat_at < cutoff)))
                .order_by(Job.created_at)
                .limit(1)
            )
            if job is None:
                return None
            was, previous_worker, attempts = job.status, job.worker, job.attempts  # the UPDATE below refreshes `job`
            unchanged = (Job.id == job.id, Job.status == was, _same(Job.heartbeat_at, job.heartbeat_at))
            if was == RUNNING and attempts >= max_attempts:
                message = (f"The job stopped its worker {attempts} times (the worker died or stopped responding while "
                           "running it), so it is not retried; check the worker log, and if it ran out of memory "
                           "lower batch_size or max_length.")
                error = {"code": "worker_lost", "message": message, "param": None}
                if s.execute(update(Job).where(*unchanged).values(status=FAILED, error=error, finished_at=now(),
                                                                   heartbeat_at=None, control=None)).rowcount:
                    add_event(s, job.id, f"Fine-tuning failed: {message}", level="error")
                    s.commit()
                else:
                    s.rollback()
                continue  # look for a job that can run
            won = s.execute(
                update(Job).where(*unchanged).values(status=RUNNING, worker=worker, heartbeat_at=now(),
                                                     attempts=Job.attempts + 1)
            ).rowcount
            if won:
                if was == RUNNING:
                    add_event(s, job.id, f"Worker {previous_worker} stopped responding; {worker} resumes the job "
                              f"from its last checkpoint (attempt {attempts + 1} of {max_attempts}).", level="warn")
                s.commit()
                return s.get(Job, job.id, populate_existing=True)
            s.rollback()  # another worker took it: look again


def _same(column, value):
    return column.is_(None) if value is None else column == value


def status_of(sessions: sessionmaker[Session], job_id: str) -> str | None:
    """The job's status as the database has it now."""
    with sessions() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id))


def hold(s: Session, job_id: str, worker: str) -> bool:
    """Whether `job_id` is still running on `worker`, checked inside the caller's transaction
    and locking the job's row until it commits: a worker writes its job's events, checkpoints
    and results only in the same transaction as this check, so once another worker has taken
    the job over, the old one cannot write any more. Also counts as a heartbeat."""
    return bool(
        s.execute(
            update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == RUNNING).values(heartbeat_at=now())
        ).rowcount
    )


def heartbeat(sessions: sessionmaker[Session], job_id: str, worker: str) -> Job | None:
    """Record that `worker` is alive on `job_id`; returns the job as it now is, or None when
    the job is no longer this worker's (cancelled, or taken over after a stall)."""
    with sessions.begin() as s:
        return s.get(Job, job_id, populate_existing=True) if hold(s, job_id, worker) else None


def finish_job(s: Session, job_id: str, worker: str, status: str, **values) -> bool:
    """Move a running job of `worker` to its final (or paused, or queued) status inside the
    caller's transaction, so what goes with it (the model, the last events) commits with it;
    False when the job is no longer this worker's (cancelled, or taken over)."""
    if status in FINISHED:
        values["finished_at"] = now()
    return bool(
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker == worker, Job.status == RUNNING)
            .values(status=status, control=None, heartbeat_at=None, **values)
        ).rowcount
    )


def register_run(url: str, run_dir: Path, base: str, project: str) -> str:
    """Record a finished run made outside the service (`tunesmith auto`) as a fine-tuned model
    of `project`, which `tunesmith serve` then serves; returns the model id."""
    sessions = connect(url)
    model_id = f"ft:{base.replace(':', '-').replace('/', '-')}:{project}:{run_dir.name}:{secrets.token_hex(4)}"
    with sessions.begin() as s:
        s.add(Model(id=model_id, project=project, base=base, job_id="auto", run_dir=str(run_dir.resolve())))
    return model_id
