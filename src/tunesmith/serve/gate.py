"""The data gate for uploaded files, run off the event loop and with a time limit.

`check_data` is CPU-bound Python (parsing, PII regexes, language ID, near-duplicates): run on
the event loop, or even in a thread (it holds the GIL), it stalls every other request while a
large file is checked. So it runs in a separate process: one lazily started worker process
(spawn, so it shares no locks or threads with the server), kept on `app.state` and shut down
with the app. Checks take turns (a lock), so a check's time limit counts only its own work;
one that passes `Settings.gate_timeout_s` has its process killed and the next check gets a
fresh one.

This module is imported by that worker process too, so it imports nothing heavy at the top.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tunesmith.data.quality import check_data
from tunesmith.domains.audit import findings_summary
from tunesmith.domains.packs import get_domain
from tunesmith.errors import DataError


class GateTimeout(DataError):
    """The data gate took longer than the server allows on one file."""


class GateCrashed(DataError):
    """The data gate's process died on one file (out of memory, or killed)."""


def card_info(path: str, filename: str, domain: str | None = None) -> dict:
    """Parse the file and run the data gate's quick checks; the summary the API stores and
    shows (the embedding-based label check runs when a job trains on the file). Under a
    `domain` pack the gate applies its compliance profile (its identifiers are errors), and
    the summary adds the profile and the findings per identifier kind.

    Runs in the gate process. Messages name `filename`, never the storage path.
    """
    profile = {"profile": get_domain(domain).profile} if domain else {}
    card = check_data(path, label_check=False, **profile)
    name = lambda text: text.replace(path, filename)  # noqa: E731 - never show our storage path
    findings = sorted(card.findings, key=lambda f: f.severity != "error")
    extra = {"domain": domain, "profile": profile["profile"].name, "summary": findings_summary(card.to_json())} if domain else {}
    return extra | {
        "format": card.format,
        "task": card.task,
        "rows": card.rows,
        "quality_score": card.score(),
        "errors": [name(f.message) for f in card.errors()],
        "warnings": [name(f.message) for f in card.warnings()],
        # Each finding with a few of its rows, for people deciding what to fix.
        "findings": [{"check": f.check, "severity": f.severity, "message": name(f.message), "rows": f.count,
                      "examples": [{"row": e["row"], "text": str(e.get("text", ""))[:300]} for e in f.examples[:3]]}
                     for f in findings],
    }


def _exit_with(parent: int) -> None:
    """(in the gate process) Exit once the server process is gone, even if it was killed
    without a chance to stop us: an idle pool worker would otherwise wait forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


def _pool(state) -> ProcessPoolExecutor:
    if getattr(state, "gate_pool", None) is None:
        # One process: the gate is CPU-bound and checks take turns anyway (see check_upload).
        state.gate_pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_exit_with, initargs=(os.getpid(),))
    return state.gate_pool


def _lock(state) -> asyncio.Lock:
    if getattr(state, "gate_lock", None) is None:
        state.gate_lock = asyncio.Lock()
    return state.gate_lock


def close_gate(state) -> None:
    """Stop the gate process now (a check in progress is abandoned); the next check starts a new one."""
    pool = getattr(state, "gate_pool", None)
    state.gate_pool = None
    if pool is None:
        return
    # ProcessPoolExecutor has no public way to stop a running task before Python 3.14
    # (terminate_workers); killing its processes is what that does.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KB"


def _submit(state, path: Path, filename: str, domain: str | None = None) -> Future:
    try:
        return _pool(state).submit(card_info, str(path), filename, domain)
    except BrokenProcessPool:  # its process died while idle (e.g. the OOM killer): start a fresh one
        close_gate(state)
        return _pool(state).submit(card_info, str(path), filename, domain)


async def check_upload(app, path: Path, filename: str, domain: str | None = None) -> dict:
    """`card_info` for a stored upload (under `domain`'s profile when given), computed in the
    gate process without blocking the event loop. Raises `DataError` for a file the gate
    refuses, `GateTimeout` when the check passes `Settings.gate_timeout_s` and `GateCrashed`
    when the gate process dies."""
    state, timeout_s = app.state, app.state.settings.gate_timeout_s
    async with _lock(state):
        try:
            return await asyncio.wait_for(asyncio.wrap_future(_submit(state, path, filename, domain)), timeout_s)
        except asyncio.TimeoutError:
            close_gate(state)
            raise GateTimeout(
                f"{filename} ({_size(path)}) takes longer than this server's {timeout_s:g} s limit to check; upload it "
                "in smaller files, or check it first with `tunesmith data check` and remove what makes it slow."
            ) from None
        except BrokenProcessPool:
            close_gate(state)
            raise GateCrashed(
                f"{filename} ({_size(path)}) stopped the data gate's process while it was checked (most likely out "
                "of memory); upload it in smaller files."
            ) from None
        except asyncio.CancelledError:
            close_gate(state)  # the abandoned check would otherwise hold up (and time out) the next one
            raise


def check_upload_blocking(app, path: Path, filename: str, domain: str | None = None) -> dict:
    """`check_upload` from a synchronous route (it runs in a worker thread of the event loop)."""
    from anyio.from_thread import run  # only the server process needs anyio

    return run(check_upload, app, path, filename, domain)
