"""Chat and completions cannot be taken over by one request: bounded inputs (400 in OpenAI's
shape), max_tokens clamped to the server's limit and the model's context, generation cancelled
when its client leaves, per-key and queue limits (429 with Retry-After), round-robin over keys,
and a shutdown that stops mid-generation. Driven against a live uvicorn server on localhost."""

import asyncio
import contextlib
import json
import threading
import time

import openai
import pytest
import requests
import torch

from tunesmith.jobs import store
from tunesmith.serve.pool import Engine, Sampling, Target

from conftest import serve_in_thread

HELLO = [{"role": "user", "content": "My card has not arrived yet."}]
LONG = 100_000  # max_tokens for a generation that would run for minutes unless it is stopped


def _tiny_variant(src, dst, context: int):
    """The tiny model with `context` positions and an end-of-turn token it never picks (its
    embedding row, tied to the output layer, is zero: a logit of 0 never beats the best of the
    rest), so a generation runs to its length limit and its length is known in advance."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.eos_token_id] = 0
    model.config.max_position_embeddings = context
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("limit_models")
    return {
        "endless": str(_tiny_variant(tiny_model_dir, root / "endless", context=32768)),  # minutes to fill
        "short": str(_tiny_variant(tiny_model_dir, root / "short", context=256)),
    }


@contextlib.contextmanager
def live_server(data_dir, models, graceful_s: float | None = None, **limits):
    """A uvicorn server on localhost with keys a1 and a2 (project acme) and g, i, u (others)."""
    from tunesmith.serve.deps import Settings
    from tunesmith.serve.app import create_app

    settings = Settings(data_dir=data_dir, models=models, **limits)
    app = create_app(settings)
    keys = {name: store.create_key(app.state.sessions, project)
            for name, project in [("a1", "acme"), ("a2", "acme"), ("g", "globex"), ("i", "initech"), ("u", "umbrella")]}
    with serve_in_thread(app, log_level="critical", timeout_graceful_shutdown=graceful_s) as (server, thread, port):
        yield {"url": f"http://127.0.0.1:{port}/v1", "keys": keys, "app": app, "server": server, "thread": thread}


@pytest.fixture(scope="module")
def service(tmp_path_factory, models):
    with live_server(tmp_path_factory.mktemp("limits"), models, max_tokens=LONG, max_concurrent_per_key=2,
                     max_queue=2) as live:
        post(live, "/chat/completions", {"model": "short", "messages": HELLO, "max_tokens": 2})  # loads the engine
        yield live


def post(live, path, body, key="a1", timeout=30.0) -> requests.Response:
    """POST as `key`; on a timeout the client closes its connection, as a client that gives up does."""
    headers = {"Authorization": f"Bearer {live['keys'][key]}"}
    return requests.post(live["url"] + path, json=body, headers=headers, timeout=timeout)


def in_background(fn, *args, **kwargs) -> dict:
    """Run fn in a thread; the dict gets its "result" (or "error") and "at" (when it ended)."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out["error"] = exc
        out["at"] = time.monotonic()

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def wait_for(predicate, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stats(live) -> dict:
    return live["app"].state.engine.stats()


def wait_idle(live) -> None:
    """Nothing running or waiting: an answer reaches its client just before its batch ends."""
    wait_for(lambda: stats(live)["running"] == stats(live)["waiting"] == 0, timeout=5, what="an idle engine")


def in_flight(live) -> dict:
    admission = getattr(live["app"].state, "admission", None)
    return dict(admission.in_flight) if admission else {}


def quick(live, key="a1", timeout=10.0) -> requests.Response:
    """A cheap request: a few tokens from the short model."""
    return post(live, "/chat/completions", {"model": "short", "messages": HELLO, "max_tokens": 3, "temperature": 0},
                key=key, timeout=timeout)


def assert_openai_error(answer: requests.Response, status: int, param=None, code=None) -> dict:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].endswith(".") and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# --------------------------------------------------------------------------- bounds


def test_out_of_range_or_mistyped_values_are_400_and_cheap(service):
    chat = {"model": "short", "messages": HELLO, "max_tokens": 4}
    completion = {"model": "short", "prompt": "My card", "max_tokens": 4}
    cases = [
        ("/chat/completions", chat | {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        # Today one such stop string takes transformers' stop-string set-up minutes and gigabytes.
        ("/chat/completions", chat | {"stop": "a" * 1_000_000}, "stop"),
        ("/chat/completions", chat | {"stop": ["x" * 129]}, "stop"),
        ("/chat/completions", chat | {"stop": [1, 2]}, None),
        ("/chat/completions", chat | {"n": 9}, "n"),
        ("/chat/completions", chat | {"n": "lots"}, "n"),
        ("/chat/completions", chat | {"max_tokens": 0}, "max_tokens"),
        ("/chat/completions", chat | {"max_tokens": "many"}, "max_tokens"),
        ("/chat/completions", chat | {"seed": 2**64}, "seed"),
        ("/chat/completions", chat | {"temperature": "hot"}, "temperature"),
        ("/chat/completions", chat | {"messages": HELLO * 1025}, "messages"),
        ("/chat/completions", chat | {"messages": [{"role": "user", "content": "a" * 1_000_001}]}, "messages"),
        ("/chat/completions", chat | {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"),
        ("/completions", completion | {"prompt": ["My card"] * 65}, "prompt"),
        ("/completions", completion | {"prompt": ["My card"] * 20, "n": 8}, "n"),
        ("/completions", completion | {"prompt": []}, "prompt"),
        ("/completions", completion | {"n": 2, "stream": True}, "n"),
    ]
    for path, body, param in cases:
        started = time.monotonic()
        answer = post(service, path, body, timeout=10)
        error = assert_openai_error(answer, 400, param=param)
        assert error["type"] == "invalid_request_error"
        assert time.monotonic() - started < 5, (path, param)
    # At the bounds, requests are served, and four of the longest stop strings cost nothing much.
    started = time.monotonic()
    answer = post(service, "/chat/completions", chat | {"stop": ["a" * 128, "b" * 128, "ab" * 64, "\n" * 128], "n": 8})
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 8
    assert time.monotonic() - started < 5


def test_the_engine_refuses_unbounded_sampling_too():
    # The library guard behind the API's 400s, for every other caller of the engine.
    for bad in ({"stop": ("x" * 129,)}, {"stop": tuple("abcde")}, {"n": 9}, {"n": 0}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            Sampling(**bad)
    assert Sampling(stop=("x" * 128,), n=8).n == 8


def test_max_tokens_is_clamped_to_the_server_limit_and_the_context_left(service):
    c = openai.OpenAI(base_url=service["url"], api_key=service["keys"]["a1"], max_retries=0, timeout=30)
    settings = service["app"].state.settings
    settings.max_tokens = 12
    try:
        answer = c.chat.completions.create(model="short", messages=HELLO, max_tokens=10**9, temperature=0)
        assert answer.usage.completion_tokens == 12 and answer.choices[0].finish_reason == "length"
        answer = c.chat.completions.create(model="endless", messages=HELLO, max_completion_tokens=50, temperature=0)
        assert answer.usage.completion_tokens == 12
    finally:
        settings.max_tokens = LONG
    # The short model reads 256 tokens: the answer gets what the prompt leaves, streamed or not.
    prompt = "How do I top up my card with a transfer from another bank account? " * 8
    answer = c.completions.create(model="short", prompt=prompt, max_tokens=10**9, temperature=0)
    assert 100 < answer.usage.prompt_tokens < 256
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens == 256
    assert answer.choices[0].finish_reason == "length"
    chunks = list(c.completions.create(model="short", prompt=prompt, max_tokens=10**9, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == answer.choices[0].text
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_a_prompt_longer_than_the_context_is_400_naming_the_token_counts(service):
    long_text = "Why was my card payment declined at the shop today? " * 40  # far past 256 tokens
    for stream in (False, True):
        answer = post(service, "/chat/completions", {"model": "short", "messages": [{"role": "user", "content": long_text}],
                                                     "stream": stream})
        error = assert_openai_error(answer, 400, param="messages", code="context_length_exceeded")
        assert "at most 256 tokens" in error["message"] and "The prompt is " in error["message"]
    answer = post(service, "/completions", {"model": "short", "prompt": ["My card", long_text]})
    assert_openai_error(answer, 400, param="prompt", code="context_length_exceeded")
    assert quick(service).status_code == 200  # and nothing is left running
    wait_idle(service)


# --------------------------------------------------------------------------- clients that leave


def test_a_client_that_disconnects_stops_its_generation(service):
    wait_idle(service)
    before = stats(service)["cancelled"]
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):  # the client gives up after 1.5 s and closes its connection
        post(service, "/chat/completions", {"model": "endless", "messages": HELLO, "max_tokens": LONG}, timeout=1.5)
    assert quick(service, timeout=5).status_code == 200  # the engine is free again at once
    assert time.monotonic() - started < 8  # the uncancelled generation would take minutes
    assert stats(service)["cancelled"] == before + 1
    assert in_flight(service) == {}


def test_a_streaming_client_that_stops_reading_stops_its_generation(service):
    wait_idle(service)
    before = stats(service)["cancelled"]
    headers = {"Authorization": f"Bearer {service['keys']['a1']}"}
    body = {"model": "endless", "messages": HELLO, "max_tokens": LONG, "stream": True}
    with requests.post(service["url"] + "/chat/completions", json=body, headers=headers, stream=True, timeout=10) as response:
        assert response.status_code == 200
        line = next(line for line in response.iter_lines() if line)
        assert json.loads(line.removeprefix(b"data: "))["object"] == "chat.completion.chunk"
    wait_for(lambda: stats(service)["cancelled"] == before + 1, timeout=5, what="the stream's generation to stop")
    assert quick(service, timeout=5).status_code == 200
    wait_for(lambda: in_flight(service) == {}, timeout=5, what="the stream's slot to be released")


def test_cancelling_one_request_leaves_its_batch_companions_alone(models):
    endless = Target("endless", models["endless"])
    sampling = Sampling(max_tokens=300, temperature=0)

    async def go(engine):
        await engine.complete(endless, HELLO, Sampling(max_tokens=1))  # load the model first
        leaving = asyncio.ensure_future(engine.complete(endless, HELLO, sampling, owner="x"))
        staying = asyncio.ensure_future(engine.complete(endless, "My card", sampling, owner="y"))
        while engine.stats()["running"] < 2:  # both rows in one batch
            await asyncio.sleep(0.01)
        leaving.cancel()
        return await staying

    engine = Engine()
    try:
        answer = asyncio.run(go(engine))
        assert answer.choices[0].tokens == 300 and answer.choices[0].finish_reason == "length"
        assert engine.stats()["cancelled"] == 1
    finally:
        engine.close()


# --------------------------------------------------------------------------- admission and fairness


def test_a_key_at_its_limit_gets_429_while_other_keys_are_served_in_turn(service):
    wait_idle(service)
    # a1 fills its two slots: one long generation (its client leaves after 5 s) and one waiting behind it.
    first = in_background(post, service, "/chat/completions", {"model": "endless", "messages": HELLO, "max_tokens": LONG},
                          timeout=5)
    wait_for(lambda: stats(service)["running"] == 1, what="the first request to run")
    second = in_background(post, service, "/chat/completions",
                           {"model": "endless", "messages": HELLO, "max_tokens": 400, "temperature": 0})
    wait_for(lambda: in_flight(service).get(_key_id(service, "a1")) == 2, what="a1's second request")
    answer = quick(service, key="a1")
    error = assert_openai_error(answer, 429, code="rate_limit_exceeded")
    assert error["type"] == "requests" and "2 generation requests in flight" in error["message"]
    assert int(answer.headers["Retry-After"]) >= 1
    # Another key of the same project is admitted, and served before a1's second request although
    # that one came first: the next batch starts with the key served least recently.
    other = in_background(quick, service, key="a2", timeout=30)
    other["thread"].join(30)
    second["thread"].join(30)
    assert isinstance(first.get("error"), requests.ReadTimeout)
    assert other["result"].status_code == 200 and second["result"].status_code == 200
    assert other["at"] < second["at"]
    assert second["result"].json()["usage"]["completion_tokens"] == 400
    wait_for(lambda: in_flight(service) == {}, timeout=5, what="every slot to be released")
    assert quick(service, key="a1").status_code == 200  # a1's slots are free again


def test_a_full_queue_gets_429_with_retry_after(service):
    wait_idle(service)
    running = in_background(post, service, "/chat/completions", {"model": "endless", "messages": HELLO, "max_tokens": LONG},
                            key="g", timeout=5)
    wait_for(lambda: stats(service)["running"] == 1, what="the long request to run")
    waiting = [in_background(quick, service, key=k, timeout=30) for k in ("i", "u")]
    wait_for(lambda: stats(service)["waiting"] == 2, what="two requests waiting")  # the server's max_queue
    answer = quick(service, key="a2")
    error = assert_openai_error(answer, 429, code="server_overloaded")
    assert "2 generation requests waiting" in error["message"]
    assert int(answer.headers["Retry-After"]) >= 1
    for job in [running, *waiting]:
        job["thread"].join(30)
    assert isinstance(running.get("error"), requests.ReadTimeout)
    assert [job["result"].status_code for job in waiting] == [200, 200]


def _key_id(live, name: str) -> str:
    from sqlalchemy import select

    with live["app"].state.sessions() as s:
        return s.scalar(select(store.Key.id).where(store.Key.hash == store.hash_key(live["keys"][name])))


# --------------------------------------------------------------------------- shutdown


def test_closing_the_engine_mid_generation_answers_503_at_once(tmp_path, models):
    with live_server(tmp_path, models, max_tokens=LONG) as live:
        long = {"model": "endless", "messages": HELLO, "max_tokens": LONG}
        running = in_background(post, live, "/chat/completions", long)
        wait_for(lambda: live["app"].state.engine is not None and stats(live)["running"] == 1, what="the request to run")
        queued = in_background(post, live, "/completions", {"model": "endless", "prompt": "My card", "max_tokens": LONG},
                               key="g")
        wait_for(lambda: stats(live)["waiting"] == 1, what="a second request to wait")
        started = time.monotonic()
        live["app"].state.engine.close()
        assert time.monotonic() - started < 5  # today it waits for the whole generation
        for job in (running, queued):
            job["thread"].join(10)
            assert_openai_error(job["result"], 503, code="server_shutting_down")
        assert_openai_error(quick(live), 503, code="server_shutting_down")


def test_stopping_the_server_mid_generation_takes_its_grace_time_not_the_generation(tmp_path, models):
    # timeout_graceful_shutdown=1: in-flight requests get 1 s, then they are cancelled and the engine closes.
    with live_server(tmp_path, models, graceful_s=1, max_tokens=LONG) as live:
        running = in_background(post, live, "/chat/completions", {"model": "endless", "messages": HELLO, "max_tokens": LONG})
        wait_for(lambda: live["app"].state.engine is not None and stats(live)["running"] == 1, what="the request to run")
        started = time.monotonic()
        live["server"].should_exit = True
        live["thread"].join(15)
        assert not live["thread"].is_alive() and time.monotonic() - started < 6
        running["thread"].join(5)
        assert_openai_error(running["result"], 503, code="server_shutting_down")
