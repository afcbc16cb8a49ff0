"""The job store: atomic claims, heartbeats and take-over of a stalled worker's job, on
SQLite and, when TUNESMITH_TEST_DATABASE_URL names one, on another database (PostgreSQL)."""

import os
import threading
import time

import pytest

from tunesmith.jobs import store
from tunesmith.jobs.store import Job

URLS = ["sqlite"] + ([os.environ["TUNESMITH_TEST_DATABASE_URL"]] if os.environ.get("TUNESMITH_TEST_DATABASE_URL") else [])


@pytest.fixture(params=URLS)
def db(request, tmp_path):
    url = store.default_database_url(tmp_path) if request.param == "sqlite" else request.param
    sessions = store.connect(url)
    with sessions.begin() as s:  # a shared server database may hold jobs of an earlier test
        s.query(store.Event).delete()
        s.query(store.Checkpoint).delete()
        s.query(Job).delete()
    return url


def add_job(url, job_id, status="queued", created_at=None):
    with store.connect(url).begin() as s:
        s.add(Job(id=job_id, project="acme", model="tiny", source="tiny", training_file="file-x", seed=1,
                  method={"type": "supervised"}, status=status, run_dir="/nowhere", created_at=created_at or time.time()))


def test_eight_racing_workers_claim_a_job_exactly_once(db):
    add_job(db, "ftjob-race")
    barrier, won = threading.Barrier(8), []

    def claim(i):
        mine = store.connect(db)  # each worker has its own connection pool, as separate processes do
        barrier.wait()
        job = store.claim_job(mine, f"w{i}", stale_after_s=60)
        if job is not None:
            won.append((i, job.id))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and won[0][1] == "ftjob-race"
    with store.connect(db)() as s:
        job = s.get(Job, "ftjob-race")
    assert job.status == "running" and job.worker == f"w{won[0][0]}" and job.attempts == 1


def test_jobs_are_claimed_oldest_first_and_not_twice(db):
    add_job(db, "ftjob-new", created_at=2000.0)
    add_job(db, "ftjob-old", created_at=1000.0)
    sessions = store.connect(db)
    assert store.claim_job(sessions, "a", 60).id == "ftjob-old"
    assert store.claim_job(sessions, "b", 60).id == "ftjob-new"
    assert store.claim_job(sessions, "c", 60) is None  # both running with fresh heartbeats


def test_a_stalled_job_is_taken_over_and_its_old_worker_learns_it(db):
    add_job(db, "ftjob-stall")
    sessions = store.connect(db)
    store.claim_job(sessions, "dead", 60)
    assert store.heartbeat(sessions, "ftjob-stall", "dead") is not None
    with sessions.begin() as s:
        s.get(Job, "ftjob-stall").heartbeat_at = time.time() - 100  # no heartbeat for 100 s
    taken = store.claim_job(sessions, "rescuer", stale_after_s=60)
    assert taken.id == "ftjob-stall" and taken.worker == "rescuer" and taken.attempts == 2
    assert store.heartbeat(sessions, "ftjob-stall", "dead") is None  # the old worker must stop
    with sessions.begin() as s:
        assert not store.finish_job(s, "ftjob-stall", "dead", "succeeded")  # and cannot finish it
    with sessions.begin() as s:
        assert store.finish_job(s, "ftjob-stall", "rescuer", "succeeded")
    with sessions() as s:
        job = s.get(Job, "ftjob-stall")
        events = s.query(store.Event).filter_by(job_id="ftjob-stall").all()
    assert job.status == "succeeded" and job.finished_at and job.heartbeat_at is None
    assert any("dead stopped responding; rescuer resumes" in e.message for e in events)


def test_keys_are_stored_hashed(db):
    sessions = store.connect(db)
    secret = store.create_key(sessions, "acme")
    key = store.find_key(sessions, secret)
    assert key.project == "acme" and key.hash != secret and secret not in key.prefix + key.hash
    assert store.find_key(sessions, secret + "x") is None
    with sessions.begin() as s:
        s.get(store.Key, key.id).revoked = True
    assert store.find_key(sessions, secret) is None


def stall(sessions, job_id):
    with sessions.begin() as s:
        s.get(Job, job_id).heartbeat_at = time.time() - 100  # its worker died: no heartbeat for 100 s


def test_a_job_that_stopped_its_worker_max_attempts_times_fails_instead_of_running_again(db):
    add_job(db, "ftjob-doomed", created_at=1000.0)
    add_job(db, "ftjob-next", created_at=2000.0)
    sessions = store.connect(db)
    for attempt in (1, 2, 3):
        job = store.claim_job(sessions, f"w{attempt}", stale_after_s=60, max_attempts=3)
        assert (job.id, job.attempts) == ("ftjob-doomed", attempt)
        stall(sessions, job.id)
    assert store.claim_job(sessions, "w4", stale_after_s=60, max_attempts=3).id == "ftjob-next"  # not the doomed one
    with sessions() as s:
        job = s.get(Job, "ftjob-doomed")
        last = s.query(store.Event).filter_by(job_id="ftjob-doomed").order_by(store.Event.seq.desc()).first()
    assert job.status == "failed" and job.finished_at and job.heartbeat_at is None and job.attempts == 3
    assert job.error["code"] == "worker_lost" and job.error["message"].startswith("The job stopped its worker 3 times")
    assert last.level == "error" and last.message == "Fine-tuning failed: " + job.error["message"]
    with sessions.begin() as s:
        assert not store.hold(s, "ftjob-doomed", "w3")  # its last worker cannot write to it


def test_hold_is_true_only_for_the_jobs_current_worker(db):
    add_job(db, "ftjob-hold")
    sessions = store.connect(db)
    store.claim_job(sessions, "old", 60)
    with sessions.begin() as s:
        assert store.hold(s, "ftjob-hold", "old") and not store.hold(s, "ftjob-hold", "other")
    stall(sessions, "ftjob-hold")
    store.claim_job(sessions, "new", 60)
    with sessions.begin() as s:
        assert not store.hold(s, "ftjob-hold", "old") and store.hold(s, "ftjob-hold", "new")
