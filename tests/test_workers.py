"""Workers under stress, with live processes training the tiny model: killed with SIGKILL in
the middle of training and of evaluation, killed again and again by the same job, taken over
while still alive, cut off from their database; `tunesmith serve` stopping (or losing) the
workers it started; and what the service shows others (process arguments, logs, job errors,
file modes)."""

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy.exc import OperationalError

from tunesmith.jobs import store
from tunesmith.jobs import worker as jobs_worker
from tunesmith.jobs.store import Job

from conftest import free_port, write_chat_file
from test_api import TINY, client, service, upload, wait_for  # noqa: F401  (`service` is a fixture)

FINISHED = ("succeeded", "failed", "cancelled")


def start_worker(service, name: str, logs: Path, *extra: str, heartbeat: float = 0.5, stale_after: float = 2.0):
    """A `tunesmith worker` process; the database URL goes through the environment, as
    `tunesmith serve` passes it. Its log goes to a file, which never fills up as a pipe would."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TUNESMITH_DATABASE_URL=service["db"])
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "worker", "--data-dir", str(service["data_dir"]), "--name", name,
         "--poll", "0.2", "--heartbeat", str(heartbeat), "--stale-after", str(stale_after), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=(logs / f"{name}.log").open("w"), text=True,
    )


def stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=60)


def job_row(service, job_id: str) -> Job:
    with service["sessions"]() as s:
        return s.get(Job, job_id)


def events(service, job_id: str) -> list[store.Event]:
    with service["sessions"]() as s:
        return list(s.query(store.Event).filter_by(job_id=job_id).order_by(store.Event.seq))


def checkpoint_steps(service, job_id: str) -> list[int]:
    with service["sessions"]() as s:
        return sorted(c.step for c in s.query(store.Checkpoint).filter_by(job_id=job_id))


def create_job(service, tmp_path, name: str, rows: int = 40, **hp) -> str:
    c = client(service)
    f = upload(c, write_chat_file(tmp_path / f"{name}.jsonl", n=rows))
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix=name,
                                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, **TINY, **hp}}})
    return job.id


def finish_off(service, job_id: str) -> None:
    """Cancel a job a test left unfinished, so the next test's workers do not pick it up."""
    with service["sessions"].begin() as s:
        job = s.get(Job, job_id)
        if job.status not in FINISHED:
            job.status, job.finished_at = "cancelled", time.time()


def test_sigkill_mid_training_then_mid_evaluation_ends_with_one_model(service, tmp_path):
    """Killed after its first checkpoint, the job resumes there on a second worker; killed
    again while evaluating, it finishes on a third: succeeded, one model, and no step trained
    twice except those after the checkpoint the second worker resumed from."""
    job_id = create_job(service, tmp_path, "twice", rows=80, max_steps=30, eval_steps=5, logging_steps=1, test_split=0.5)
    first = start_worker(service, "k-first", tmp_path)
    try:
        wait_for(lambda: checkpoint_steps(service, job_id), what="a first checkpoint")
    finally:
        stop(first)
    assert job_row(service, job_id).status == "running"
    second = start_worker(service, "k-second", tmp_path)
    try:
        wait_for(lambda: any(e.message.startswith("Evaluating") for e in events(service, job_id)), what="the evaluation")
    finally:
        stop(second)
    assert job_row(service, job_id).status == "running", "the kill landed after the evaluation: make it longer"
    third = start_worker(service, "k-third", tmp_path)
    try:
        final = wait_for(lambda: (j := job_row(service, job_id)).status in FINISHED and j, what="the job to finish")
    finally:
        stop(third, signal.SIGTERM)
    assert final.status == "succeeded", (final.error, (tmp_path / "k-third.log").read_text()[-3000:])
    assert final.attempts == 3 and final.worker == "k-third"
    with service["sessions"]() as s:
        assert s.query(store.Model).filter_by(job_id=job_id).count() == 1
    log = events(service, job_id)
    messages = [e.message for e in log]
    assert messages[-1] == "The job has successfully completed."
    assert sum(m.startswith("New fine-tuned model created") for m in messages) == 1
    # Training steps per run of the job: a run starts with "Training started" or "resumed at step N".
    runs: list[tuple[int, list[int]]] = []
    for e in log:
        if e.message.startswith("Training started"):
            runs.append((0, []))
        elif e.message.startswith("Training resumed at step"):
            runs.append((int(e.message.split()[4]), []))
        elif e.type == "metrics" and "train_loss" in (e.data or {}):
            runs[-1][1].append(e.data["step"])
    (_, killed), (resumed_at, second_steps), *evaluated_again = runs
    assert 0 < resumed_at <= max(killed) and resumed_at % 5 == 0  # the last checkpoint before the kill
    assert killed == list(range(1, len(killed) + 1)) and second_steps == list(range(resumed_at + 1, 31))
    assert all(steps == [] for _, steps in evaluated_again)  # killed while evaluating: no step trained again
    assert sum(m == "Resuming from the last checkpoint." for m in messages) == 2
    mode = (service["data_dir"] / "runs" / job_id).stat().st_mode
    assert stat.S_IMODE(mode) == 0o700  # the worker's umask: run folders are owner-only


def test_a_job_that_kills_its_worker_three_times_fails_with_a_clear_error(service, tmp_path):
    job_id = create_job(service, tmp_path, "doomed", max_steps=400, eval_steps=100)
    try:
        for i in range(3):
            name = f"doomed-{i + 1}"
            proc = start_worker(service, name, tmp_path, "--max-attempts", "3")
            try:
                wait_for(lambda: (j := job_row(service, job_id)).worker == name and j.status == "running",
                         what=f"{name} to take the job")
            finally:
                stop(proc)
        survivor = start_worker(service, "survivor", tmp_path, "--max-attempts", "3")
        try:
            final = wait_for(lambda: (j := job_row(service, job_id)).status in FINISHED and j, what="the job to fail")
            assert survivor.poll() is None  # the worker that failed it carries on
        finally:
            stop(survivor, signal.SIGTERM)
    finally:
        finish_off(service, job_id)
    assert final.status == "failed" and final.attempts == 3 and final.worker == "doomed-3"
    assert final.error["code"] == "worker_lost"
    assert final.error["message"].startswith("The job stopped its worker 3 times")
    messages = [e.message for e in events(service, job_id)]
    assert messages[-1] == "Fine-tuning failed: " + final.error["message"]
    assert [m.split(";")[0] for m in messages if m.startswith("Worker doomed-")] == [
        "Worker doomed-1 stopped responding", "Worker doomed-2 stopped responding"]
    public = client(service).fine_tuning.jobs.retrieve(job_id)
    assert public.status == "failed" and public.error.message == final.error["message"]


def run_folder(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def test_a_worker_whose_job_was_taken_over_writes_nothing_more(service, tmp_path):
    """The job changes hands in the database while its worker is alive and training (as when
    a worker stalls past --stale-after and another takes over). With a heartbeat too slow to
    notice, only the ownership check in every write can stop the old worker."""
    job_id = create_job(service, tmp_path, "fenced", max_steps=400, eval_steps=3, logging_steps=1)
    old = start_worker(service, "w-old", tmp_path, heartbeat=300, stale_after=600)
    run_dir = service["data_dir"] / "runs" / job_id
    try:
        wait_for(lambda: checkpoint_steps(service, job_id), what="a first checkpoint")
        with service["sessions"].begin() as s:
            job = s.get(Job, job_id)
            job.worker, job.heartbeat_at = "w-new", time.time()
        time.sleep(1.0)  # a write that passed its check just before the job changed hands may still land
        before = (len(events(service, job_id)), checkpoint_steps(service, job_id), run_folder(run_dir))
        time.sleep(4.0)  # several steps' time: each used to write an event, metrics.jsonl and a checkpoint every 3
        after = (len(events(service, job_id)), checkpoint_steps(service, job_id), run_folder(run_dir))
        assert old.poll() is None  # it gave the job up and went back to the queue, it did not crash
    finally:
        finish_off(service, job_id)
        stop(old, signal.SIGTERM)
    assert after == before
    log = (tmp_path / "w-old.log").read_text()
    assert f"job {job_id}: running\n" in log  # run_job returned: the job is someone else's
    assert job_row(service, job_id).worker == "w-new"


# ---- the database connection restarting ---------------------------------------------------


def queue_job(sessions, data_dir: Path, model_dir: Path, **hp) -> Job:
    """A queued job as the API writes one, for a worker running in this process."""
    data = write_chat_file(data_dir / "train.jsonl", n=40)
    job_id = store.new_id("ftjob")
    with sessions.begin() as s:
        s.add(store.File(id="file-train", project="acme", filename="train.jsonl", purpose="fine-tune",
                         bytes=data.stat().st_size, path=str(data)))
        s.add(Job(id=job_id, project="acme", model="tiny", source=str(model_dir), training_file="file-train", seed=1,
                  method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, **TINY, **hp}}},
                  status="queued", run_dir=str(data_dir / "runs" / job_id), fine_tuned_model=f"ft:tiny:acme::{job_id[6:14]}"))
    (data_dir / "files").mkdir(exist_ok=True)
    return job_id


def test_database_connection_dropping_mid_job_loses_nothing(tmp_path, tiny_model_dir, monkeypatch):
    """Every fourth write or heartbeat finds its connection gone (the pool is disposed, as when
    the database server restarts): each is tried again, and the job ends as if nothing happened."""
    sessions = store.connect(store.default_database_url(tmp_path))
    job_id = queue_job(sessions, tmp_path, tiny_model_dir, max_steps=6, eval_steps=3)
    real_hold, calls, dropped = store.hold, [0], []

    def flaky_hold(s, job, worker):
        calls[0] += 1
        if calls[0] % 4 == 0:
            sessions.kw["bind"].dispose()
            dropped.append(calls[0])
            raise OperationalError("UPDATE jobs SET heartbeat_at=?", {}, sqlite3.OperationalError("disk I/O error"))
        return real_hold(s, job, worker)

    monkeypatch.setattr(store, "hold", flaky_hold)
    job = store.claim_job(sessions, "w-flaky", stale_after_s=60)
    status = jobs_worker.run_job(sessions, job, "w-flaky", tmp_path, heartbeat_s=0.2, flags={}, stale_after_s=30)
    assert status == "succeeded" and len(dropped) >= 3
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.attempts == 1 and s.query(store.Model).filter_by(job_id=job_id).count() == 1
        steps = [e.data["step"] for e in s.query(store.Event).filter_by(job_id=job_id, type="metrics") if "train_loss" in e.data]
        assert sorted(c.step for c in s.query(store.Checkpoint).filter_by(job_id=job_id)) == [3, 6]
        assert len(job.result_files) >= 1 and s.query(store.File).filter(store.File.id.in_(job.result_files)).count() == len(job.result_files)
    assert steps == [1, 2, 3, 4, 5, 6]  # each step logged once: a retried write is not doubled


def test_a_lost_or_cancelled_job_refuses_every_write(tmp_path):
    sessions = store.connect(store.default_database_url(tmp_path))
    with sessions.begin() as s:
        s.add(Job(id="ftjob-lease", project="acme", model="tiny", source="tiny", training_file="file-x", seed=1,
                  method={"type": "supervised"}, status="queued", run_dir="/nowhere"))
    store.claim_job(sessions, "w-old", 60)
    lease = jobs_worker.Lease(sessions, "ftjob-lease", "w-old")
    lease.event("still mine")
    with sessions.begin() as s:
        s.get(Job, "ftjob-lease").worker = "w-new"
    with pytest.raises(jobs_worker.Stop, match="lost"):
        lease.event("not mine any more")
    with pytest.raises(jobs_worker.Stop, match="lost"):
        lease.check()
    with sessions.begin() as s:
        s.get(Job, "ftjob-lease").status = "cancelled"
    with pytest.raises(jobs_worker.Stop, match="cancel"):
        jobs_worker.Lease(sessions, "ftjob-lease", "w-new").check()
    with sessions() as s:
        assert [e.message for e in s.query(store.Event).filter_by(job_id="ftjob-lease")] == ["still mine"]


def test_a_clean_hand_back_does_not_use_an_attempt(tmp_path):
    sessions = store.connect(store.default_database_url(tmp_path))
    with sessions.begin() as s:
        s.add(Job(id="ftjob-back", project="acme", model="tiny", source="tiny", training_file="file-x", seed=1,
                  method={"type": "supervised"}, status="queued", run_dir="/nowhere"))
    for reason, status in (("shutdown", "queued"), ("pause", "paused"), ("database", "queued")):
        job = store.claim_job(sessions, "w", 60, max_attempts=1)
        assert job.attempts == 1
        assert jobs_worker._stopped(jobs_worker.Lease(sessions, job.id, "w"), job, reason) == status
        with sessions.begin() as s:
            job = s.get(Job, "ftjob-back")
            assert job.attempts == 0 and job.status == status
            job.status = "queued"  # resumed


def test_a_running_job_stops_within_a_second_when_the_workers_parent_is_gone(tmp_path):
    """While a job runs, the heartbeat thread watches the parent (`tunesmith serve`) every
    second, whatever the heartbeat interval, and stops the job as SIGTERM would."""
    sessions = store.connect(store.default_database_url(tmp_path))
    with sessions.begin() as s:
        s.add(Job(id="ftjob-orphan", project="acme", model="tiny", source="tiny", training_file="file-x", seed=1,
                  method={"type": "supervised"}, status="queued", run_dir="/nowhere"))
    store.claim_job(sessions, "w", 60)
    flags, parent = {}, {"alive": True}
    beat = jobs_worker.Heartbeat(sessions, "ftjob-orphan", "w", flags, interval=300, orphaned=lambda: not parent["alive"])
    beat.start()
    try:
        time.sleep(1.5)
        assert flags == {}
        parent["alive"] = False
        start = time.monotonic()
        wait_for(lambda: flags.get("stop") == "shutdown", timeout=5, what="the stop flag")
        assert time.monotonic() - start < 2
    finally:
        beat.done.set()


# ---- `tunesmith serve` and its workers -----------------------------------------------------


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def start_serve(tmp_path: Path) -> tuple[subprocess.Popen, int, int, Path]:
    """`tunesmith serve --workers 1` on a fresh data folder; returns it, its worker's pid, its
    port and its data folder once the API answers and the worker watches the queue."""
    data_dir, port = tmp_path / "data", free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", "--port", str(port), "--workers", "1",
                             "--data-dir", str(data_dir)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=log.open("w"))

    def up():
        assert proc.poll() is None, log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 401
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=120, what="the server")
    wait_for(lambda: "watching" in log.read_text(), timeout=120, what="the worker")
    [worker] = children(proc.pid)
    return proc, worker, port, data_dir


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_sigterm_stops_serve_and_its_worker_within_seconds(tmp_path):
    proc, worker, port, data_dir = start_serve(tmp_path)
    try:
        url = store.default_database_url(data_dir)
        arguments = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
        assert b"worker" in arguments and not any(b"sqlite" in a or b"tunesmith.db" in a for a in arguments)
        assert f"--parent-pid\0{proc.pid}".encode() in b"\0".join(arguments)
        # Owner-only: the data folder, its database (with its WAL files), and an uploaded file.
        key = store.create_key(store.connect(url), "acme")
        answer = requests.post(f"http://127.0.0.1:{port}/v1/files", headers={"Authorization": f"Bearer {key}"},
                               files={"file": ("t.jsonl", write_chat_file(tmp_path / "t.jsonl", n=12).read_bytes())},
                               data={"purpose": "fine-tune"}, timeout=60)
        assert answer.status_code == 200, answer.text
        for name in ("", "files", "runs"):
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o700, name
        private = [data_dir / "tunesmith.db", *data_dir.glob("tunesmith.db-*"), *(data_dir / "files").iterdir()]
        assert len(private) >= 4  # the database, its -wal and -shm, the upload
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in private} == {p.name: 0o600 for p in private}

        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        wait_for(lambda: not alive(worker), timeout=20, what="the worker to stop")
        assert time.monotonic() - start < 10
    finally:
        stop(proc)
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_worker_outlives_a_killed_serve_by_seconds_only(tmp_path):
    proc, worker, _, _ = start_serve(tmp_path)
    try:
        start = time.monotonic()
        stop(proc, signal.SIGKILL)  # serve cannot pass this on: the worker must notice by itself
        wait_for(lambda: not alive(worker), timeout=20, what="the orphaned worker to stop")
        assert time.monotonic() - start < 10
    finally:
        stop(proc)
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
    assert "is gone; stopping" in (tmp_path / "serve.log").read_text()


# ---- what others can see -------------------------------------------------------------------


def test_database_passwords_are_masked_in_logs_and_errors(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    secret_url = "postgresql://tunesmith:hunter2@127.0.0.1:1/jobs"
    assert store.safe_url(secret_url) == "postgresql://tunesmith:***@127.0.0.1:1/jobs"
    assert "hunter2" not in store.safe_url("not a url :hunter2@")

    real_connect, lines = store.connect, []
    monkeypatch.setattr(store, "connect", lambda url: real_connect(store.default_database_url(tmp_path)))
    # In a thread: in the main thread the worker would take over this process's signal handlers.
    thread = threading.Thread(target=jobs_worker.run_worker, args=(secret_url, tmp_path),
                              kwargs={"name": "w", "once": True, "log": lines.append})
    thread.start()
    thread.join()
    assert lines == ["worker w watching postgresql://tunesmith:***@127.0.0.1:1/jobs"]
    monkeypatch.undo()

    umask = os.umask(0o022)  # the command sets the service's umask; keep this process's
    try:
        result = CliRunner().invoke(app, ["keys", "list", "--data-dir", str(tmp_path)],
                                    env={"TUNESMITH_DATABASE_URL": secret_url})
    finally:
        os.umask(umask)
    output = " ".join(result.output.split())  # unwrapped
    assert result.exit_code == 1 and "Cannot open the database postgresql://tunesmith:***@127.0.0.1:1/jobs" in output
    assert "hunter2" not in output


def test_job_errors_show_no_server_path(tmp_path):
    data_dir = tmp_path / "srv data"  # a space: the data folder is replaced whole
    names = {str(data_dir / "files" / "file-1.jsonl"): "t.jsonl (file-1)", str(data_dir / "runs" / "ftjob-1"): "ftjob-1"}
    text = (f"OSError: cannot read {data_dir}/files/file-1.jsonl, {data_dir}/runs/ftjob-1/checkpoints/x, "
            f"{data_dir}/cache/blob and /usr/lib/python3/site-packages/torch/x.py (see https://pytorch.org/docs/a/b "
            "and/or 3/4 of the steps)")
    message = jobs_worker.client_message(text, names, data_dir)
    assert message == ("OSError: cannot read t.jsonl (file-1), ftjob-1/checkpoints/x, [server path] and [server path] "
                       "(see https://pytorch.org/docs/a/b and/or 3/4 of the steps)")


def test_concurrent_merges_of_one_run_do_not_collide(tiny_run, tmp_path):
    import shutil

    from tunesmith.export.merge import save_merged

    run_dir = shutil.copytree(tiny_run[0], tmp_path / "run")
    barrier, results, errors = threading.Barrier(3), [], []

    def merge():
        barrier.wait()
        try:
            results.append(save_merged(run_dir))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=merge) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1 and (results[0] / "config.json").exists()
    assert [p.name for p in run_dir.iterdir() if ".tmp-" in p.name] == []  # no temporary folder left behind
