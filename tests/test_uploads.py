"""Uploads cannot block or fill the server: body limits hold while the body streams in, the
data gate runs off the event loop with a time limit, and a refused upload leaves no file.

Against a live server on localhost. The size tests talk raw HTTP over a socket, so they can
send headers (and part of a body) and then wait for the answer without sending the rest: a
server that waits for the whole body before refusing it never answers them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import openai
import pytest
import requests

from tunesmith.jobs import store

from conftest import serve_in_thread

MB = 1024 * 1024
ANSWER_WITHIN_S = 15  # a refusal that needs no body comes at once; this only bounds a hung test


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model_dir):
    """A live server with a 1 MB upload limit and the default 4 MB body limit."""
    from tunesmith.serve.deps import Settings
    from tunesmith.serve.app import create_app

    data_dir = tmp_path_factory.mktemp("uploads")
    settings = Settings(data_dir=data_dir, models={"tiny": str(tiny_model_dir)}, max_upload_mb=1)
    app = create_app(settings)
    key = store.create_key(app.state.sessions, "acme")
    with serve_in_thread(app) as (_, _, port):
        yield {"port": port, "url": f"http://127.0.0.1:{port}/v1", "key": key, "files": data_dir / "files",
               "settings": settings, "app": app}


@contextlib.contextmanager
def changed(settings, **values):
    """Settings changed for one test (the server reads them on each request)."""
    old = {name: getattr(settings, name) for name in values}
    for name, value in values.items():
        setattr(settings, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(settings, name, value)


def stored(service) -> set[str]:
    return {p.name for p in service["files"].iterdir()}


def upload(service, name: str, content: bytes) -> requests.Response:
    return requests.post(f"{service['url']}/files", headers={"Authorization": f"Bearer {service['key']}"},
                         files={"file": (name, content)}, data={"purpose": "fine-tune"}, timeout=120)


def raw_request(service, head: list[str], body_chunks=()) -> tuple[int, dict]:
    """Send a request head and the given body pieces (no more), then read the answer.

    Fails when no answer comes within ANSWER_WITHIN_S: the server is waiting for the rest.
    """
    with socket.create_connection(("127.0.0.1", service["port"]), timeout=ANSWER_WITHIN_S) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the server has answered and closed: stop sending, read its answer
                break
        answer = b""
        try:
            while part := sock.recv(65536):
                answer += part
        except TimeoutError:
            pytest.fail(f"no answer within {ANSWER_WITHIN_S} s: the server waits for a body it should refuse "
                        f"(got {answer[:200]!r})")
        except ConnectionResetError:
            pass  # closed with our unread body still in flight; what arrived before is the answer
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return status, json.loads(body)


def multipart_head(service, path: str, extra: list[str]) -> list[str]:
    return [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{service['port']}", f"Authorization: Bearer {service['key']}",
            "Content-Type: multipart/form-data; boundary=XyZ", *extra]


def chunked(pieces):
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


def assert_error(body: dict, *words: str) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    message = body["error"]["message"]
    for word in words:
        assert word in message, message
    return message


def wait_until_stored(service, before: set[str], size: int, uploading: threading.Thread) -> None:
    """Until the upload is all on disk: from then on the server is checking it."""
    deadline = time.monotonic() + 60
    while not any((service["files"] / name).stat().st_size == size for name in stored(service) - before):
        assert time.monotonic() < deadline and uploading.is_alive(), "the upload ended before it was stored"
        time.sleep(0.01)


def varied_chat_rows(n: int) -> bytes:
    words = "card pin reset travel account transfer limit fee refund balance statement branch loan savings".split()
    rows = []
    for i in range(n):
        topic = " ".join(words[(i * k) % len(words)] for k in (1, 3, 5, 7, 11))
        rows.append({"messages": [{"role": "user", "content": f"Customer {i} asks about {topic}, account {i * 7919}."},
                                  {"role": "assistant", "content": f"Reply {i}: {topic}."}]})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --------------------------------------------------------------------------- size limits


def test_an_oversized_upload_is_refused_from_its_content_length_before_the_body_is_sent(service):
    before = stored(service)
    status, body = raw_request(service, multipart_head(service, "/v1/files", [f"Content-Length: {50 * MB}"]))
    assert status == 413
    assert_error(body, "limit of 1 MB", "--max-upload-mb")
    assert stored(service) == before


def test_a_chunked_oversized_upload_is_refused_while_it_streams_and_stores_nothing(service):
    """And a file within the multipart allowance but over the file limit meets the route's exact check."""
    before = stored(service)
    opening = (b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
               b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n')
    row = b'{"text": "' + b"a" * 1000 + b'"}\n'
    # Just past the limit and its multipart allowance (the 18th piece passes it), and never the
    # end of the body. Sending more than the server reads could reset the connection under its answer.
    pieces = [opening] + [row * 64] * 18
    status, body = raw_request(service, multipart_head(service, "/v1/files", ["Transfer-Encoding: chunked"]),
                               chunked(pieces))
    assert status == 413
    assert_error(body, "limit of 1 MB", "--max-upload-mb")
    assert stored(service) == before
    response = upload(service, "edge.jsonl", b'{"text": "' + b"a" * (MB + 10_000) + b'"}\n')
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert stored(service) == before


def test_a_big_json_body_to_another_route_is_refused(service):
    head = [f"Host: 127.0.0.1:{service['port']}", f"Authorization: Bearer {service['key']}",
            "Content-Type: application/json"]
    status, body = raw_request(service, ["POST /v1/chat/completions HTTP/1.1", *head, f"Content-Length: {5 * MB}"])
    assert status == 413
    assert_error(body, "limit of 4 MB", "max_body_mb")
    # Chunked, with no length to go by: refused once 4 MB have arrived.
    messages = b'{"model": "tiny", "messages": [' + b'{"role": "user", "content": "hi"}, ' * 2000
    assert len(messages) > 60_000
    status, body = raw_request(service, ["POST /v1/fine_tuning/jobs HTTP/1.1", *head, "Transfer-Encoding: chunked"],
                               chunked([messages[:60_000]] * 70))  # the 70th chunk passes 4 MB
    assert status == 413
    assert_error(body, "limit of 4 MB")


# --------------------------------------------------------------------------- refused files leave nothing


@pytest.mark.parametrize("name, content, where", [
    # Deep enough to exhaust json's stack (today: RecursionError, a 500 and an orphan file)...
    ("deep.json", b'[{"text": "fine"},\n{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]", "line 2"),
    ("deep.jsonl", b'{"text": "fine"}\n{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "line 2"),
    # ... and just past the 64 levels a row may have.
    ("deep65.jsonl", b'{"text": "fine"}\n{"x": ' + b'{"a": ' * 64 + b"1" + b"}" * 64 + b"}\n", "line 2"),
    ("deep65.json", b'[{"text": "fine"}, {"x": ' + b'[' * 64 + b"]" * 64 + b"}]", "row 2"),
])
def test_a_deeply_nested_upload_is_400_and_leaves_no_file(service, name, content, where):
    before = stored(service)
    response = upload(service, name, content)
    assert response.status_code == 400, response.text
    message = assert_error(response.json(), name, where, "64 levels")
    assert str(service["files"]) not in message
    assert stored(service) == before


def test_a_gate_timeout_is_400_leaves_no_file_and_the_next_upload_works(service):
    content = "".join(json.dumps({"text": f"Document number {i} about card payments and refunds."}) + "\n"
                      for i in range(3000)).encode()
    before = stored(service)
    with changed(service["settings"], gate_timeout_s=0.05):
        response = upload(service, "slow.jsonl", content)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "file_check_timeout"
    assert_error(response.json(), "slow.jsonl", "KB", "takes longer", "0.05 s")
    assert stored(service) == before
    # A fresh gate process takes the next file.
    response = upload(service, "fine.jsonl", content)
    assert response.status_code == 200, response.text
    assert response.json()["data_card"]["rows"] == 3000
    assert stored(service) - before == {f"{response.json()['id']}.jsonl"}


def test_an_unexpected_failure_leaves_no_file(service, monkeypatch):
    from tunesmith.serve import gate

    async def broken(*_args):
        raise RuntimeError("a bug in the gate")

    monkeypatch.setattr(gate, "check_upload", broken)
    before = stored(service)
    response = upload(service, "fine.jsonl", b'{"text": "hello"}\n')
    assert response.status_code == 500
    assert "a bug in the gate" not in response.text  # the details stay in the server log
    assert stored(service) == before


def test_a_gate_process_that_dies_is_400_leaves_no_file_and_is_replaced(service):
    """As when the OOM killer takes the gate process in the middle of a check."""
    content = varied_chat_rows(10_000)
    before = stored(service)
    done: dict = {}
    with changed(service["settings"], max_upload_mb=20):
        thread = threading.Thread(target=lambda: done.update(response=upload(service, "huge.jsonl", content)))
        thread.start()
        wait_until_stored(service, before, len(content), thread)
        time.sleep(0.3)  # into the check
        for process in list(service["app"].state.gate_pool._processes.values()):
            process.kill()
        thread.join(timeout=120)
    assert done["response"].status_code == 400, done["response"].text
    assert_error(done["response"].json(), "huge.jsonl", "MB", "stopped the data gate's process")
    assert stored(service) == before
    assert upload(service, "fine.jsonl", b'{"text": "hello there"}\n').status_code == 200


# --------------------------------------------------------------------------- nothing blocks


def test_cheap_requests_answer_while_a_large_upload_is_checked(service):
    content = varied_chat_rows(10_000)  # about 2 MB: a few seconds in the data gate on 2 cores
    before = stored(service)
    done: dict = {}

    def send() -> None:
        done["response"] = upload(service, "large.jsonl", content)
        done["at"] = time.monotonic()

    c = openai.OpenAI(base_url=service["url"], api_key=service["key"], max_retries=0, timeout=120)
    with changed(service["settings"], max_upload_mb=20):
        thread = threading.Thread(target=send)
        thread.start()
        wait_until_stored(service, before, len(content), thread)
        # Three in a row: with the gate on the event loop, none is answered before the check ends.
        for _ in range(3):
            c.files.list()
        listed_at = time.monotonic()
        thread.join(timeout=120)
    assert done["response"].status_code == 200, done["response"].text
    assert listed_at < done["at"], "GET /v1/files waited for the upload's data gate"
