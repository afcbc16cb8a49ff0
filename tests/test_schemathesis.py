"""The live server against Schemathesis, and what it exposes.

Schemathesis reads the server's own OpenAPI spec and sends every operation in it, chat and
text completions included, generated requests that fit the spec and requests that break
it. No answer may be a 5xx, every status must be one the spec documents, and no body may
hold a traceback or, in an error, a server path. Random ids only ever reach a 404, so a
few real objects are seeded (a data file, a queued job, two fine-tuned models of the tiny
model) and generated ids are swapped for them part of the time.

The run is bounded (MAX_EXAMPLES per operation and phase) and derandomized, so CI sees the
same requests each time. It prints how many requests were made and how many answered 5xx
(run with `-s` to see it; BENCHMARKS.md quotes it).

The other tests here check the exposure rules: security headers on every answer, no page
that loads third-party assets, and a spec that documents the statuses really sent.
"""

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from tunesmith.jobs import store

from conftest import serve_in_thread, write_chat_file

# Examples per operation in each fuzzing phase (the coverage phase adds its own boundary
# cases): about 1,800 requests over the 25 operations, under a minute on 2 busy cores.
# TUNESMITH_FUZZ_EXAMPLES raises it for a longer run.
MAX_EXAMPLES = int(os.environ.get("TUNESMITH_FUZZ_EXAMPLES", "50"))
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages")
STATS: Counter = Counter()  # requests, 5xx and tracebacks over the whole run
BY_STATUS: Counter = Counter()
BY_OPERATION: dict[str, Counter] = {}  # "METHOD /path" -> statuses
SEEDED: dict[str, list[str]] = {}  # parameter name -> ids of seeded objects; the `live` fixture fills it


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model_dir, tiny_run):
    """A live server on localhost with the tiny model, a key of project acme, and seeded
    objects: a chat data file, a queued job on it, and two fine-tuned models (one that the
    fuzzing may delete, one it never does, so chat keeps reaching an adapter)."""
    from tunesmith.serve.deps import Settings
    from tunesmith.serve.app import create_app

    data_dir = tmp_path_factory.mktemp("schemathesis")
    app = create_app(Settings(data_dir=data_dir, models={"tiny": str(tiny_model_dir)}, max_tokens=8))
    key = store.create_key(app.state.sessions, "acme")
    with serve_in_thread(app) as (_, _, port):
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {key}"}

        data = write_chat_file(data_dir / "seed.jsonl")
        with data.open("rb") as f:
            upload = requests.post(f"{url}/v1/files", headers=auth, files={"file": ("seed.jsonl", f)},
                                   data={"purpose": "fine-tune"}, timeout=120)
        assert upload.status_code == 200, upload.text
        file_id = upload.json()["id"]
        job = requests.post(f"{url}/v1/fine_tuning/jobs", headers=auth, timeout=60, json={
            "model": "tiny", "training_file": file_id, "hyperparameters": {"n_epochs": 1}})
        assert job.status_code == 200, job.text
        models = {}
        for name in ("keep", "delete"):
            run_dir = data_dir / "runs" / f"seeded-{name}"
            shutil.copytree(tiny_run[0], run_dir)
            models[name] = f"ft:tiny:acme:{name}:0000000{len(models)}"
            with app.state.sessions.begin() as s:
                s.add(store.Model(id=models[name], project="acme", base="tiny", job_id=job.json()["id"], run_dir=str(run_dir)))

        SEEDED.update(file_id=[file_id], training_file=[file_id], validation_file=[file_id], job_id=[job.json()["id"]],
                      model_id=[models["keep"], "tiny"], model=[models["keep"], "tiny"],
                      deletable_model_id=[models["delete"], "tiny"])
        yield {"url": url, "auth": auth, "data_dir": data_dir}
    print(f"\nschemathesis: {STATS['requests']} requests, {STATS['5xx']} answered 5xx, "
          f"{STATS['tracebacks']} with a traceback; by status {dict(sorted(BY_STATUS.items()))}")
    for operation, statuses in BY_OPERATION.items():
        print(f"  {operation}: {dict(sorted(statuses.items()))}")


def _spec() -> dict:
    """The spec the server serves at /openapi.json (it does not depend on the settings), read at
    import because Schemathesis makes one test per operation when pytest collects the module."""
    from tunesmith.serve.deps import Settings
    from tunesmith.serve.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp)))
        spec = app.openapi()
        app.state.sessions.kw["bind"].dispose()
    return spec


schema = schemathesis.openapi.from_dict(_spec())
# The key is sent with every request: random bearer tokens would only meet the 401 that every
# operation shares, and spend the example budget there.
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=MAX_EXAMPLES, deterministic=True, with_security_parameters=False)
# Uploads besides generated bytes (which go under each of these names): chat JSONL, a CSV of
# text and label, plain text, and JSON nested deeper than any parser should follow.
UPLOAD_NAMES = ["upload.jsonl", "upload.json", "upload.csv", "upload.tsv", "upload.parquet", "upload.txt", "upload.bin"]
UPLOADS = [
    ("\n".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                        {"role": "assistant", "content": f"answer {i}"}]}) for i in range(12)), "chat.jsonl"),
    ("text,label\n" + "\n".join(f"my card {i} is lost,lost_card" for i in range(12)), "labels.csv"),
    ("Plain domain text for continued pretraining.\n" * 20, "notes.txt"),
    ("[" * 5000 + "]" * 5000, "deep.json"),
    ('{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n", "deep.jsonl"),
]


def _upload_parts(body: dict) -> list[tuple]:
    """An upload's multipart parts, the file under the name the `flatmap_body` hook chose:
    Schemathesis names every file part `file`, a type the server refuses at once, so the
    data gate would never run."""
    parts = []
    filename = body.get("filename", "upload.jsonl")
    for name, value in body.items():
        if name == "file":
            parts.append(("file", (filename, value if isinstance(value, (str, bytes)) else json.dumps(value))))
        elif name != "filename":
            parts.append((name, (None, value if isinstance(value, (str, bytes)) else json.dumps(value))))
    return parts


def _swapped(values: dict, operation) -> st.SearchStrategy:
    """`values` with each id swapped for a seeded object's part of the time. Hypothesis picks
    which, so the choice is derandomized and shrinks like the rest of the case."""
    if not isinstance(values, dict):  # an operation without such parameters, or a negative case's non-object body
        return st.just(values)
    choices = dict(SEEDED)
    if operation.method.upper() == "DELETE" and operation.path.startswith("/v1/models"):
        choices["model_id"] = SEEDED["deletable_model_id"]  # the kept model stays for chat and downloads
    return st.fixed_dictionaries({
        name: st.sampled_from([*choices[name], value]) if name in choices and isinstance(value, (str, type(None)))
        else st.just(value) for name, value in values.items()})


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    return _swapped(path_parameters, context.operation)


@schema.hook
def flatmap_query(context, query):
    return _swapped(query, context.operation)


@schema.hook
def flatmap_body(context, body):
    if not isinstance(body, dict):
        return st.just(body)
    if "purpose" in body:  # an upload: the one purpose the server takes and readable data, part of the time
        upload = st.one_of(st.sampled_from(UPLOADS), st.tuples(st.just(body.get("file", "")), st.sampled_from(UPLOAD_NAMES)))
        return st.tuples(st.sampled_from(["fine-tune", body["purpose"]]), upload).map(
            lambda chosen: {**body, "purpose": chosen[0], "file": chosen[1][0], "filename": chosen[1][1]})
    return _swapped(body, context.operation)


@schema.parametrize()
# Every example is a live HTTP call (a completion takes tens of ms): Hypothesis' speed and
# size health checks would only complain about that.
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_documented_statuses(case, live):
    extra = {}
    if case.operation.path == "/v1/files" and case.method == "POST" and isinstance(case.body, dict):
        extra["files"] = _upload_parts(case.body)
    response = case.call(base_url=live["url"], headers=live["auth"], timeout=120, **extra)
    STATS["requests"] += 1
    BY_STATUS[response.status_code] += 1
    BY_OPERATION.setdefault(f"{case.method} {case.operation.path}", Counter())[response.status_code] += 1
    STATS["5xx"] += response.status_code >= 500
    content_type = str(response.headers.get("content-type") or response.headers.get("Content-Type") or "")
    body = "" if "zip" in content_type else response.content.decode("utf-8", "replace")  # a zip is compressed bytes
    leaked = [m for m in TRACEBACK_MARKERS if m in body]
    STATS["tracebacks"] += bool(leaked)
    assert not leaked, f"{case.method} {case.path}: the answer shows a traceback ({leaked}):\n{body[:2000]}"
    if response.status_code >= 400:
        assert str(live["data_dir"]) not in body, f"{case.method} {case.path}: the error shows a server path:\n{body[:2000]}"
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance])


# --------------------------------------------------------------------------- exposure


def test_every_answer_carries_the_security_headers(live):
    from tunesmith.serve.app import SECURITY_HEADERS

    answers = [requests.get(live["url"] + path, headers=live["auth"], timeout=30)
               for path in ("/", "/ui/app.js", "/openapi.json", "/v1/models", "/v1/files/file-nope", "/nowhere")]
    answers.append(requests.get(live["url"] + "/v1/models", timeout=30))  # no key: 401
    answers.append(requests.post(live["url"] + "/v1/chat/completions", headers=live["auth"], data="{", timeout=30))
    for response in answers:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.url, response.status_code, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp and "frame-ancestors 'self'" in csp


def test_answers_from_outside_the_routes_carry_them_too(tmp_path):
    """A 500 (answered by Starlette outside every middleware) and the body limit's 413."""
    from fastapi.testclient import TestClient

    from tunesmith.serve.app import SECURITY_HEADERS, create_app
    from tunesmith.serve.deps import Settings

    app = create_app(Settings(data_dir=tmp_path, max_body_mb=0.01))

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    client = TestClient(app, raise_server_exceptions=False)
    crashed = client.get("/boom")
    assert crashed.status_code == 500 and "secret detail" not in crashed.text
    too_large = client.post("/v1/chat/completions", content=b"x" * 20_000, headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413
    for response in (crashed, too_large):
        assert all(response.headers.get(name) == value for name, value in SECURITY_HEADERS.items()), response.status_code


def test_no_page_loads_third_party_assets(live):
    # FastAPI's /docs and /redoc pull Swagger UI and ReDoc from a CDN: they are off.
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert requests.get(live["url"] + path, timeout=30).status_code == 404
    assert requests.get(live["url"] + "/openapi.json", timeout=30).status_code == 200
    page = requests.get(live["url"] + "/", timeout=30).text
    assert "http://" not in page and "https://" not in page and "<script>" not in page


def test_the_spec_documents_the_statuses_really_sent(live):
    spec = requests.get(live["url"] + "/openapi.json", timeout=30).json()
    assert spec["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    operations = {(method, path): op for path, item in spec["paths"].items() for method, op in item.items()}
    assert len(operations) >= 20
    for (method, path), op in operations.items():
        codes = set(op["responses"])
        assert "422" not in codes, (method, path)
        assert {"200", "400", "401", "404", "413", "500", "503"} <= codes, (method, path)
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "Retry-After" in operations[("post", path)]["responses"]["429"]["headers"]
    for verb in ("cancel", "pause", "resume"):
        assert "409" in operations[("post", f"/v1/fine_tuning/jobs/{{job_id}}/{verb}")]["responses"]
    assert "403" in operations[("delete", "/v1/models/{model_id}")]["responses"]
    # What the server answers a request it cannot validate: 400 and OpenAI's error object, as documented.
    bad = requests.post(live["url"] + "/v1/chat/completions", headers=live["auth"], json={"model": "tiny"}, timeout=30)
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}
