"""`tunesmith serve`, `worker` and `keys`: the OpenAI-compatible service, the workers that train
its jobs, and its API keys."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tunesmith.cli.common import (
    DatabaseOpt,
    DataDirOpt,
    console,
    default_data_dir,
    ensure_database,
    err,
    open_store,
    user_errors,
)
from tunesmith.errors import TunesmithError
from tunesmith.runtime import quiet_libraries

# A worker stops at the end of its current training step (or evaluation batch) and hands its
# job back; one that takes longer is killed, and its job resumes from its last checkpoint.
WORKER_STOP_S = 30.0


keys_app = typer.Typer(help="API keys for `tunesmith serve` (stored hashed; each key belongs to one project).",
                       no_args_is_help=True)


@keys_app.command("create")
@user_errors
def keys_create(
    project: Annotated[str, typer.Option(help="The project the key works in: it sees only this project's files, jobs and models.")],
    admin: Annotated[bool, typer.Option(help="An admin key sees every project.")] = False,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Create an API key and print it (it is stored hashed and cannot be shown again)."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.jobs.store import create_key  # sqlalchemy

    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", project):
        raise TunesmithError(f"--project '{project}': use 1-64 letters, digits, '-' or '_'.")
    secret = create_key(open_store(data_dir, database_url), project, admin)
    err.print(f"API key for project [bold]{project}[/bold]{' (admin)' if admin else ''}; store it now, it is not shown again:")
    console.print(secret)


@keys_app.command("list")
@user_errors
def keys_list(data_dir: DataDirOpt = None, database_url: DatabaseOpt = None) -> None:
    """List API keys (their first characters only)."""
    # heavy: imported when the command runs, not for --help
    from sqlalchemy import select

    from tunesmith.jobs.store import Key  # sqlalchemy

    table = Table()
    for col in ("id", "project", "starts with", "admin", "revoked"):
        table.add_column(col)
    with open_store(data_dir, database_url)() as s:
        for k in s.scalars(select(Key).order_by(Key.created_at)):
            table.add_row(k.id, k.project, k.prefix + "...", "yes" if k.admin else "", "yes" if k.revoked else "")
    console.print(table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id from `tunesmith keys list`.")],
                data_dir: DataDirOpt = None, database_url: DatabaseOpt = None) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    # heavy: imported when the command runs, not for --help
    from tunesmith.jobs.store import Key  # sqlalchemy

    with open_store(data_dir, database_url).begin() as s:
        key = s.get(Key, key_id)
        if key is None:
            raise TunesmithError(f"No key with id '{key_id}'; see `tunesmith keys list`.")
        key.revoked = True
    err.print(f"revoked {key_id}")


@user_errors
def worker_cmd(
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    name: Annotated[Optional[str], typer.Option(help="Worker name in events; default host-pid.")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between looks at an empty queue.")] = 1.0,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats while a job runs.")] = 5.0,
    stale_after: Annotated[float, typer.Option(help="A running job whose worker sent no heartbeat for this long is taken over.")] = 60.0,
    max_attempts: Annotated[int, typer.Option(min=1, help="A job whose worker died on it this many times fails instead of being taken over again.")] = 3,
    once: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
    parent_pid: Annotated[Optional[int], typer.Option(hidden=True, help="Stop (handing the running job back) when this process is gone; `tunesmith serve` passes its own.")] = None,
) -> None:
    """Run fine-tuning jobs from the service's queue (any number of workers may share one database)."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.jobs.worker import run_worker  # torch

    data_dir, url = ensure_database(data_dir, database_url)
    run_worker(url, data_dir, name, poll, heartbeat, stale_after, once,
               log=lambda line: err.print(line, markup=False, highlight=False), max_attempts=max_attempts,
               parent_pid=parent_pid)


@user_errors
def serve_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDirOpt = None,
    database_url: DatabaseOpt = None,
    workers: Annotated[int, typer.Option(min=0, help="Training workers to start beside the server (0: run `tunesmith worker` elsewhere).")] = 1,
    config: Annotated[Optional[Path], typer.Option(help="Server settings as YAML (models, limits, reward functions, reward models, judges); options given here win.")] = None,
    model: Annotated[Optional[list[str]], typer.Option(help="Offer a local base model as NAME=FOLDER (repeatable).")] = None,
    reward_fn: Annotated[Optional[list[str]], typer.Option(help="Offer an RL reward function as NAME=FILE.py[:FUNCTION] (repeatable); jobs name it, never the file.")] = None,
    reward_model: Annotated[Optional[list[str]], typer.Option(help="Offer a reward-model run as NAME=RUN_FOLDER (repeatable).")] = None,
    judge: Annotated[Optional[list[str]], typer.Option(help="Offer an LLM judge as NAME=URL[,MODEL[,KEY_ENV]] (repeatable); its key is read from $KEY_ENV and sent only to URL.")] = None,
    max_upload_mb: Annotated[Optional[float], typer.Option(min=0.001, help="Largest data file an upload may be [default: 512].")] = None,
    max_adapters: Annotated[Optional[int], typer.Option(min=1, help="Fine-tuned adapters kept loaded beside their base model [default: 8].")] = None,
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="Most concurrent requests generated together in one batch (1: one at a time) [default: 16].")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=1, help="Most tokens one completion may generate [default: 2048].")] = None,
    max_concurrent_per_key: Annotated[Optional[int], typer.Option(min=1, help="Generation requests one API key may have in flight [default: 4].")] = None,
) -> None:
    """Serve the OpenAI-compatible API (files, fine-tuning jobs, models, chat) and train its jobs.

    Jobs refer to server-side resources (base models, reward functions, reward models, LLM
    judges) only by the names given here or in --config; never by a path or URL."""
    # heavy: imported when the command runs, not for --help
    import uvicorn
    from sqlalchemy import select

    from tunesmith.jobs.store import Key, default_database_url  # sqlalchemy
    from tunesmith.serve.app import create_app  # fastapi, torch
    from tunesmith.serve.config import (  # fastapi
        judges_from_options,
        pairs,
        server_settings,
    )

    data_dir = data_dir or default_data_dir()
    url = database_url or default_database_url(data_dir)
    settings = server_settings(
        data_dir, url, config, models=pairs("--model", model, "FOLDER"),
        reward_functions=pairs("--reward-fn", reward_fn, "FILE.py[:FUNCTION]"),
        reward_models=pairs("--reward-model", reward_model, "RUN_FOLDER"), judges=judges_from_options(judge),
        max_upload_mb=max_upload_mb, max_adapters=max_adapters, max_batch=max_batch, max_tokens=max_tokens,
        max_concurrent_per_key=max_concurrent_per_key,
    )  # fmt: skip
    sessions = open_store(data_dir, database_url)
    with sessions() as s:
        if s.scalar(select(Key.id).limit(1)) is None:
            err.print("[yellow]no API keys yet:[/yellow] create one with `tunesmith keys create --project NAME`.")

    def stop(_signum, _frame):
        # uvicorn catches SIGTERM/SIGINT itself, shuts down, then raises the signal again with
        # the handler it found: the default SIGTERM handler killed the process right there,
        # before the `finally` below, and the workers were left running. This handler ends
        # serve through the `finally` instead.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # The URL goes through the environment, not the arguments (`ps` shows those to everyone);
    # --parent-pid: a worker stops by itself when serve is gone, even killed by SIGKILL.
    env = dict(os.environ, TUNESMITH_DATABASE_URL=url)
    procs: list[subprocess.Popen] = []
    try:
        for i in range(workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "worker", "--data-dir", str(data_dir),
                                           "--name", f"worker-{i + 1}-{os.getpid()}", "--parent-pid", str(os.getpid())],
                                          env=env))
        err.print(f"OpenAI-compatible API at http://{host}:{port}/v1 with {workers} worker(s); data in {data_dir}")
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=settings.shutdown_s)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the workers' stop short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_workers(procs, WORKER_STOP_S)


def _stop_workers(procs: list, grace_s: float) -> None:
    """SIGTERM each worker (each hands its running job back to the queue), wait up to `grace_s`
    for all of them, then kill the ones still running."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    end = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            err.print(f"worker {proc.pid} did not stop within {grace_s:.0f} s; killing it (its job resumes from its "
                      "last checkpoint)")
            proc.kill()
            proc.wait()

