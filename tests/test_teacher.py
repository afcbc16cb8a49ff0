"""Teachers: the OpenAI-compatible endpoint path (order, retries, rate limit, refusals) against
a stub server on localhost, and the local path with the tiny model."""

import time

import pytest
import torch

from tunesmith.inference.teacher import EndpointTeacher, LocalTeacher, RateLimiter, TeacherError, make_teacher


def convs(*texts):
    return [[{"role": "user", "content": t}] for t in texts]


def test_endpoint_answers_in_order_with_the_protocol(stub_openai):
    stub_openai.reply = lambda m: m[-1]["content"].upper()
    teacher = EndpointTeacher(stub_openai.url, "big-model", concurrency=4)
    assert teacher.complete(convs(*"abcdefgh"), temperature=0.3, max_new_tokens=7) == list("ABCDEFGH")
    body = stub_openai.requests[0]
    assert body["model"] == "big-model" and body["temperature"] == 0.3 and body["max_tokens"] == 7
    assert body["messages"][0]["role"] == "user"


def test_endpoint_accepts_full_completions_url(stub_openai):
    teacher = EndpointTeacher(stub_openai.url + "/chat/completions", "m")
    assert teacher.complete(convs("hi")) == ["ok hi"]


def test_endpoint_retries_rate_limits_and_server_errors(stub_openai):
    stub_openai.fail = [429, 500, 503]
    teacher = EndpointTeacher(stub_openai.url, "m", concurrency=1, backoff=0.01)
    assert teacher.complete(convs("x")) == ["ok x"]
    assert len(stub_openai.requests) == 4


def test_endpoint_gives_up_after_retries_with_one_sentence(stub_openai):
    stub_openai.fail = [500] * 10
    teacher = EndpointTeacher(stub_openai.url, "m", concurrency=1, max_retries=2, backoff=0.01)
    with pytest.raises(TeacherError, match=r"failed 3 times \(last: HTTP 500\).*run the same command again"):
        teacher.complete(convs("x"))
    assert len(stub_openai.requests) == 3


def test_endpoint_down_is_retried_then_reported():
    teacher = EndpointTeacher("http://127.0.0.1:9/v1", "m", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(TeacherError, match="ConnectionError"):
        teacher.complete(convs("x"))


def test_endpoint_bad_key_is_not_retried(stub_openai):
    stub_openai.key = "right"
    teacher = EndpointTeacher(stub_openai.url, "m", key="wrong")
    with pytest.raises(TeacherError, match="refused the key with HTTP 401.*--teacher-key"):
        teacher.complete(convs("x"))
    assert len(stub_openai.requests) == 1
    assert EndpointTeacher(stub_openai.url, "m", key="right").complete(convs("y")) == ["ok y"]


def test_endpoint_wrong_path_names_the_url(stub_openai):
    teacher = EndpointTeacher(stub_openai.url.removesuffix("/v1"), "m")
    with pytest.raises(TeacherError, match="404.*should end in /v1"):
        teacher.complete(convs("x"))


def test_endpoint_rate_limit_spaces_requests(stub_openai):
    teacher = EndpointTeacher(stub_openai.url, "m", concurrency=4, requests_per_minute=600)  # one per 0.1 s
    start = time.monotonic()
    teacher.complete(convs(*"abcdef"))
    assert time.monotonic() - start >= 0.45
    gaps = [b - a for a, b in zip(stub_openai.times, stub_openai.times[1:])]
    assert min(gaps) >= 0.08


def test_rate_limiter_off_does_not_wait():
    limiter = RateLimiter(None)
    start = time.monotonic()
    for _ in range(100):
        limiter.wait()
    assert time.monotonic() - start < 0.05


def test_make_teacher_checks_options():
    with pytest.raises(TeacherError, match="--teacher-url needs --teacher-model"):
        make_teacher(url="http://x/v1")
    with pytest.raises(TeacherError, match="not both"):
        make_teacher("smollm2-135m", url="http://x/v1", endpoint_model="m")
    with pytest.raises(TeacherError, match="must start with http"):
        make_teacher(url="localhost:8000", endpoint_model="m", what="judge")
    assert isinstance(make_teacher(), LocalTeacher) and make_teacher().name == "smollm2-135m"


def test_local_teacher_is_repeatable_and_continues_prefill(tiny_model_dir):
    teacher = LocalTeacher(str(tiny_model_dir), batch_size=4)
    prompts = convs("card arrival", "top up") + [
        [{"role": "user", "content": "list"}, {"role": "assistant", "content": "- one\n-"}]
    ]
    torch.manual_seed(0)
    first = teacher.complete(prompts, temperature=0.9, max_new_tokens=6)
    torch.manual_seed(0)
    assert teacher.complete(prompts, temperature=0.9, max_new_tokens=6) == first
    assert len(first) == 3 and all(isinstance(a, str) for a in first)
    greedy = teacher.complete(prompts, temperature=0.0, max_new_tokens=6)
    assert greedy == teacher.complete(prompts, temperature=0.0, max_new_tokens=6)


def test_prefill_prompt_continues_the_assistant_turn(tiny_tokenizer):
    from tunesmith.inference.generate import _chat_text

    text = _chat_text(tiny_tokenizer, [{"role": "user", "content": "list"}, {"role": "assistant", "content": "- one\n-"}])
    assert text.endswith("<|im_start|>assistant\n- one\n-")
    assert _chat_text(tiny_tokenizer, convs("hi")[0]).endswith("<|im_start|>assistant\n")
