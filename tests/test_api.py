"""The OpenAI-compatible service, driven by the official `openai` client against a live
server on localhost, with real worker processes training the tiny model."""

import json
import os
import signal
import subprocess
import sys
import time

import requests
import openai
import pytest

from tunesmith.jobs import store
from tunesmith.jobs.store import Job

from conftest import serve_in_thread, write_chat_file

# Small, fully explicit settings so a job on the tiny model takes seconds.
TINY = {"learning_rate": 5e-3, "batch_size": 1, "gradient_accumulation": 1, "pack_length": 128, "max_length": 128,
        "warmup_ratio": 0.0, "early_stopping_patience": 100, "best_metric": "loss", "lora_r": 8, "lora_alpha": 16}


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir):
    """A live server (no worker of its own) with three keys: acme, globex and an admin."""
    from tunesmith.serve.deps import Settings
    from tunesmith.serve.app import create_app

    data_dir = tmp_path_factory.mktemp("service")
    # TUNESMITH_TEST_DATABASE_URL runs the same tests on another database, e.g. PostgreSQL.
    settings = Settings(data_dir=data_dir, models={"tiny": str(tiny_model_dir)}, max_upload_mb=1,
                        database_url=os.environ.get("TUNESMITH_TEST_DATABASE_URL"))
    app = create_app(settings)
    sessions = app.state.sessions
    keys = {p: store.create_key(sessions, p) for p in ("acme", "globex")}
    keys["admin"] = store.create_key(sessions, "ops", admin=True)
    with serve_in_thread(app) as (_, _, port):
        yield {"url": f"http://127.0.0.1:{port}/v1", "keys": keys, "data_dir": data_dir, "db": settings.url, "sessions": sessions}


def client(service, who="acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=service["url"], api_key=service["keys"][who], max_retries=0, timeout=60)


def start_worker(service, name: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread: the tiny model is faster, the machine stays usable
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", "worker", "--data-dir", str(service["data_dir"]), "--database-url",
         service["db"], "--name", name, "--poll", "0.2", "--heartbeat", "0.5", "--stale-after", "3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for(predicate, timeout=180, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def upload(c: openai.OpenAI, path, purpose="fine-tune"):
    with open(path, "rb") as f:
        return c.files.create(file=f, purpose=purpose)


@pytest.fixture(scope="module")
def finished_job(service, tmp_path_factory):
    """Upload, create a job on the tiny model, and let a worker process run it."""
    c = client(service)
    path = write_chat_file(tmp_path_factory.mktemp("data") / "tickets.jsonl", n=40)
    f = upload(c, path)
    job = c.fine_tuning.jobs.create(
        model="tiny", training_file=f.id, suffix="bank", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"max_steps": 6, "eval_steps": 3, "n_epochs": 1, **TINY}}},
    )
    worker = start_worker(service, "w-main")
    try:
        statuses = []

        def done():
            j = c.fine_tuning.jobs.retrieve(job.id)
            statuses.append(j.status)
            return j if j.status in ("succeeded", "failed", "cancelled") else None

        final = wait_for(done, what="the job to finish")
    finally:
        worker.terminate()
        _, log = worker.communicate(timeout=60)
    assert final.status == "succeeded", (final.error, log[-3000:])
    return {"file": f, "created": job, "job": final, "statuses": statuses}


def test_upload_checks_the_file_and_stores_it_by_id(service, finished_job):
    f = finished_job["file"]
    assert f.id.startswith("file-") and f.purpose == "fine-tune" and f.filename == "tickets.jsonl"
    card = f.model_extra["data_card"]
    assert card["format"] == "openai_chat" and card["rows"] == 40 and card["errors"] == []
    stored = list((service["data_dir"] / "files").glob(f"{f.id}.*"))
    assert len(stored) == 1 and stored[0].stat().st_size == f.bytes
    c = client(service)
    assert c.files.retrieve(f.id).bytes == f.bytes
    assert f.id in [x.id for x in c.files.list().data]
    assert c.files.content(f.id).content == stored[0].read_bytes()


def test_job_runs_to_success_with_events_checkpoints_and_a_model(service, finished_job):
    c = client(service)
    created, job = finished_job["created"], finished_job["job"]
    assert created.status == "queued" and created.fine_tuned_model is None
    assert job.fine_tuned_model == f"ft:tiny:acme:bank:{job.id[6:14]}"
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at and job.seed == 7
    assert job.hyperparameters.batch_size == 1 and job.hyperparameters.n_epochs == 1
    assert "running" in finished_job["statuses"] or job.status == "succeeded"

    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in reversed(events)]  # oldest first
    assert messages[0].startswith("Validating training file") and messages[-1] == "The job has successfully completed."
    metrics = [e for e in events if e.type == "metrics"]
    assert {e.data["step"] for e in metrics} >= {1, 6} and all("train_loss" in e.data for e in metrics if "valid_loss" not in e.data)
    page = c.fine_tuning.jobs.list_events(job.id, limit=2)
    older = c.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert page.has_more and older.data[0].id != page.data[0].id

    checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [cp.step_number for cp in checkpoints] == [6, 3]  # newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"
    assert checkpoints[1].metrics.valid_loss is not None and checkpoints[1].metrics.train_loss is not None

    metrics_csv = c.files.content(job.result_files[0]).text.splitlines()
    assert metrics_csv[0].startswith("step,train_loss") and len(metrics_csv) > 6
    assert job.id in [j.id for j in c.fine_tuning.jobs.list().data]
    assert job.fine_tuned_model in [m.id for m in c.models.list().data]
    assert c.models.retrieve(job.fine_tuned_model).owned_by == "acme"


def test_chat_with_the_fine_tuned_model_streamed_and_not(service, finished_job):
    c = client(service)
    model = finished_job["job"].fine_tuned_model
    question = [{"role": "user", "content": "My card has not arrived yet."}]
    reply = c.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=8)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = c.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=8, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == choice.message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    two = c.chat.completions.create(model=model, messages=question, temperature=1.0, n=2, seed=3, max_tokens=5)
    assert len(two.choices) == 2
    text = c.completions.create(model="tiny", prompt="My card", max_tokens=4, temperature=0)
    assert text.object == "text_completion" and text.usage.completion_tokens <= 4
    streamed = list(c.completions.create(model="tiny", prompt="My card", max_tokens=4, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == text.choices[0].text
    assert streamed[-1].choices[0].finish_reason == text.choices[0].finish_reason


def test_delete_the_fine_tuned_model(service, finished_job, tmp_path):
    # A second job's model, so the other tests keep theirs.
    c = client(service)
    job = finished_job["job"]
    with service["sessions"].begin() as s:
        src = s.get(store.Model, job.fine_tuned_model)
        s.add(store.Model(id=job.fine_tuned_model + "-copy", project="acme", base="tiny", job_id=job.id,
                          run_dir=str(tmp_path / "copy")))
    import shutil

    shutil.copytree(src.run_dir, tmp_path / "copy")
    assert c.models.delete(job.fine_tuned_model + "-copy").deleted
    assert not (tmp_path / "copy").exists()
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve(job.fine_tuned_model + "-copy")
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=job.fine_tuned_model + "-copy", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError, match="base model"):
        c.models.delete("tiny")


def test_projects_are_isolated(service, finished_job):
    job, f = finished_job["job"], finished_job["file"]
    other = client(service, "globex")
    for call in (lambda: other.files.retrieve(f.id), lambda: other.files.content(f.id), lambda: other.files.delete(f.id),
                 lambda: other.fine_tuning.jobs.retrieve(job.id), lambda: other.fine_tuning.jobs.cancel(job.id),
                 lambda: other.fine_tuning.jobs.list_events(job.id), lambda: other.models.retrieve(job.fine_tuned_model),
                 lambda: other.models.delete(job.fine_tuned_model),
                 lambda: other.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in other.fine_tuning.jobs.list().data]
    assert f.id not in [x.id for x in other.files.list().data]
    assert job.fine_tuned_model not in [m.id for m in other.models.list().data]
    with pytest.raises(openai.NotFoundError, match="No file"):  # another project's file cannot be trained on
        other.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    admin = client(service, "admin")
    assert admin.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert f.id in [x.id for x in admin.files.list().data]


def test_every_request_needs_a_valid_key(service):
    for key in ("wrong-key", "ts-" + "x" * 43):
        bad = openai.OpenAI(base_url=service["url"], api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
            bad.models.list()
    answer = requests.get(service["url"] + "/models")
    assert answer.status_code == 401 and "Missing API key" in answer.json()["error"]["message"]


def test_bad_requests_get_openai_errors_naming_the_problem(service, tmp_path):
    c = client(service)
    headers = {"Authorization": f"Bearer {service['keys']['acme']}"}
    answer = requests.post(service["url"] + "/fine_tuning/jobs", json={"model": "tiny"}, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"] == {"message": "Missing required parameter: 'training_file'.", "type": "invalid_request_error",
                                      "param": "training_file", "code": None}
    good = upload(c, write_chat_file(tmp_path / "ok.jsonl", n=12))
    with pytest.raises(openai.BadRequestError, match="Unknown base model 'gpt-4o'"):
        c.fine_tuning.jobs.create(model="gpt-4o", training_file=good.id)
    with pytest.raises(openai.BadRequestError, match="Unknown hyperparameter 'warp'"):
        c.fine_tuning.jobs.create(model="tiny", training_file=good.id, method={"type": "supervised", "supervised": {"hyperparameters": {"warp": 9}}})
    with pytest.raises(openai.BadRequestError, match="needs preference data"):
        c.fine_tuning.jobs.create(model="tiny", training_file=good.id, method={"type": "dpo"})
    with pytest.raises(openai.BadRequestError, match="purpose 'fine-tune'"):
        upload(c, tmp_path / "ok.jsonl", purpose="assistants")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [oops\n')
    with pytest.raises(openai.BadRequestError, match="bad.jsonl: line 2 is not valid JSON") as exc:
        upload(c, bad)
    assert str(service["data_dir"]) not in str(exc.value)  # never our storage path
    big = tmp_path / "big.jsonl"
    write_chat_file(big, n=1)
    big.write_text(big.read_text() * 12000)  # past the test server's 1 MB limit
    with pytest.raises(openai.APIStatusError, match="larger than the server's limit") as exc:
        upload(c, big)
    assert exc.value.status_code == 413
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    classifier = tmp_path / "classifier"  # a fine-tuned model that labels text rather than writing it
    classifier.mkdir()
    from tunesmith.config import RunConfig, save_config

    save_config(RunConfig.model_validate({"method": {"stages": ["classify"]}}), classifier / "config.yaml")
    with service["sessions"].begin() as s:
        s.add(store.Model(id="ft:tiny:acme:cls:00000000", project="acme", base="tiny", job_id="ftjob-x", run_dir=str(classifier)))
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="classifier"):
            c.chat.completions.create(model="ft:tiny:acme:cls:00000000", messages=[{"role": "user", "content": "hi"}], stream=stream)
    with pytest.raises(openai.BadRequestError, match="'temperature'"):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=5)
    answer = requests.post(service["url"] + "/chat/completions", data=b"{not json", headers=headers | {"content-type": "application/json"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]["message"]
    assert requests.get(service["url"] + "/nowhere", headers=headers).json()["error"]["code"] == "unknown_url"
    before = {p.name for p in (service["data_dir"] / "files").iterdir()}
    assert len([x for x in c.files.list().data]) >= 1
    assert {p.name for p in (service["data_dir"] / "files").iterdir()} == before  # refused uploads left nothing


def test_no_path_traversal_through_names_or_ids(service, tmp_path):
    c = client(service)
    path = write_chat_file(tmp_path / "x.jsonl", n=12)
    with open(path, "rb") as fh:
        f = c.files.create(file=("../../../etc/evil.jsonl", fh), purpose="fine-tune")
    assert f.filename == "evil.jsonl" and (service["data_dir"] / "files" / f"{f.id}.jsonl").exists()
    headers = {"Authorization": f"Bearer {service['keys']['acme']}"}
    for url in ("/files/..%2F..%2Ftunesmith.db/content", "/files/../tunesmith.db", "/models/..%2F..%2Fetc%2Fpasswd"):
        assert requests.get(service["url"] + url, headers=headers).status_code == 404
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=str(service["data_dir"]), messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="Unknown base model"):
        c.fine_tuning.jobs.create(model=str(service["data_dir"] / "runs"), training_file=f.id)


def test_cancel_pause_and_resume_a_queued_job(service, tmp_path):
    c = client(service)
    f = upload(c, write_chat_file(tmp_path / "q.jsonl", n=12))
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert c.fine_tuning.jobs.pause(job.id).status == "paused"
    assert c.fine_tuning.jobs.resume(job.id).status == "queued"
    with pytest.raises(openai.BadRequestError, match="used by job"):
        c.files.delete(f.id)
    cancelled = c.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    with pytest.raises(openai.BadRequestError, match="it is cancelled"):
        c.fine_tuning.jobs.cancel(job.id)
    assert c.files.delete(f.id).deleted


def test_pause_resume_and_sigkill_mid_training_then_resume_from_checkpoint(service, tmp_path):
    """A running job pauses at a checkpoint and resumes; then its worker is killed with SIGKILL
    in the middle of training, and a new worker takes the job over from the last checkpoint."""
    c = client(service)
    f = upload(c, write_chat_file(tmp_path / "long.jsonl", n=40))
    hp = {"max_steps": 120, "eval_steps": 10, "n_epochs": 1, **TINY}
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="kill",
                                    method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    first = start_worker(service, "w-first")
    try:
        steps = lambda: [cp.step_number for cp in c.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data]  # noqa: E731
        wait_for(lambda: steps(), what="a first checkpoint")
        c.fine_tuning.jobs.pause(job.id)
        paused = wait_for(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status == "paused" and j, what="the pause")
        paused_at = max(steps())
        assert paused_at < 120
        c.fine_tuning.jobs.resume(job.id)
        wait_for(lambda: max(steps()) > paused_at, what="a checkpoint after resuming")
        assert c.fine_tuning.jobs.retrieve(job.id).status == "running"
        first.send_signal(signal.SIGKILL)  # no chance to clean up
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = max(steps())
    assert killed_at < 120 and c.fine_tuning.jobs.retrieve(job.id).status == "running"
    second = start_worker(service, "w-second")
    try:
        final = wait_for(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                         what="the job to finish on the second worker")
    finally:
        second.terminate()
        _, log = second.communicate(timeout=60)
    assert final.status == "succeeded", (final.error, log[-3000:])
    assert paused.status == "paused" and final.model_extra["tunesmith"]["attempts"] == 2  # the pause gave its attempt back; the SIGKILL did not
    messages = [e.message for e in reversed(c.fine_tuning.jobs.list_events(job.id, limit=1000).data)]
    assert any("Job paused at its latest checkpoint" in m for m in messages)
    assert any("w-first stopped responding; w-second resumes" in m for m in messages)
    resumed = [m for m in messages if m.startswith("Training resumed at step")]
    assert len(resumed) == 2 and int(resumed[-1].split()[4]) >= killed_at > 0
    metric_steps = [e.data["step"] for e in c.fine_tuning.jobs.list_events(job.id, limit=1000).data if e.type == "metrics"]
    assert max(metric_steps) == 120
    chat = c.chat.completions.create(model=final.fine_tuned_model, messages=[{"role": "user", "content": "card"}], max_tokens=3)
    assert chat.choices[0].message.content is not None
    with store.connect(service["db"])() as s:
        assert s.get(Job, job.id).worker == "w-second"
    assert json.loads((service["data_dir"] / "runs" / job.id / "run.json").read_text())["global_step"] == 120


def test_evaluation_alarms_become_warning_events(tmp_path):
    from tunesmith.evaluate.report import alarms
    from tunesmith.jobs.worker import _register
    from tunesmith.runs import EvalResults, TrainSummary

    evaluation = EvalResults(
        run="run", task="labels", stage="sft", base_model="tiny", tuned_model="run", created="2026-11-30T00:00:00Z",
        test={"source": "test.jsonl", "rows": 10, "file": "eval/test.jsonl"},
        overfitting={"flagged": True, "message": "Validation loss rose after step 40."},
        forgetting={"flagged": True, "findings": ["general-text perplexity rose 132%"]},
        bias={"tuned": {"flagged": True, "findings": ["ethnicity: 21% of answers changed"]}},
        metrics={"base": {"accuracy": 0.0}, "tuned": {"accuracy": 0.5}})
    sessions = store.connect(store.default_database_url(tmp_path))
    job = Job(id="ftjob-alarm", project="acme", model="tiny", source="tiny", training_file="file-x", seed=1,
              method={"type": "supervised"}, status="running", run_dir=str(tmp_path / "run"),
              fine_tuned_model="ft:tiny:acme::alarm")
    with sessions.begin() as s:
        s.add(job)
        s.flush()
        _register(s, job, TrainSummary(evaluation=evaluation))
    with sessions() as s:
        warnings = [e.message for e in s.query(store.Event).filter_by(job_id="ftjob-alarm", level="warn").order_by(store.Event.seq)]
    assert warnings == alarms(evaluation) == ["Overfitting: Validation loss rose after step 40.",
                                              "Forgetting: general-text perplexity rose 132%.",
                                              "Bias: ethnicity: 21% of answers changed."]


def test_sigterm_hands_the_running_job_back_to_the_queue(service, tmp_path):
    c = client(service)
    f = upload(c, write_chat_file(tmp_path / "term.jsonl", n=40))
    hp = {"max_steps": 400, "eval_steps": 5, "n_epochs": 1, **TINY}
    job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                    method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    worker = start_worker(service, "w-term")
    try:
        wait_for(lambda: c.fine_tuning.jobs.checkpoints.list(job.id).data, what="a first checkpoint")
        worker.terminate()  # SIGTERM, as `tunesmith serve` sends its workers when it stops
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    back = c.fine_tuning.jobs.retrieve(job.id)
    assert back.status == "queued"
    assert "w-term is shutting down" in c.fine_tuning.jobs.list_events(job.id, limit=1).data[0].message
    c.fine_tuning.jobs.cancel(job.id)
