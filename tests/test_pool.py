"""Tests for tunesmith.serve.pool: one base model serving many LoRA adapters, batched."""

import asyncio
import json

import pytest
import torch
from conftest import banking_rows, tiny_run_config

from tunesmith.config import save_config
from tunesmith.errors import ModelError
from tunesmith.inference import generate as engine_mod
from tunesmith.serve import pool
from tunesmith.serve.pool import Engine, Sampling, Target

SYSTEM = "Answer with the intent."
GREEDY = Sampling(max_tokens=8, temperature=0)
CONVS = [
    [{"role": "user", "content": "Why would my card payment not work?"}],
    [{"role": "user", "content": "My card has not arrived yet."}],
    [{"role": "user", "content": "How do I top up?"}, {"role": "assistant", "content": "top_up"}, {"role": "user", "content": "And by card?"}],
]


def _train(root, name, answer, tiny_model_dir, system=None, **method):
    """A 8-step run of the tiny model that learns to give one fixed answer, so adapters differ
    visibly (the random tiny model learns little else in a few steps)."""
    from tunesmith.train.sft import train_sft

    data = root / f"{name}.jsonl"
    with data.open("w") as f:
        for text, _ in banking_rows(40):
            f.write(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}) + "\n")
    config = tiny_run_config(tiny_model_dir, data, max_steps=8, learning_rate=1e-2, seed=len(name))
    config.data.system_prompt = system
    for key, value in method.items():
        setattr(config.method, key, value)
    train_sft(config, root / name)
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("pool_runs")
    return {
        "a": _train(root, "a", "card arrival", tiny_model_dir, system=SYSTEM),
        "b": _train(root, "b", "top up by card", tiny_model_dir),
    }


@pytest.fixture(scope="module")
def targets(runs, tiny_model_dir):
    base = str(tiny_model_dir)
    return {
        "base": Target("tiny", base),
        "a": Target("ft:tiny:a", base, runs["a"]),
        "b": Target("ft:tiny:b", base, runs["b"]),
    }


def serve(coro_fn, **engine_args):
    """Run `coro_fn(engine)` on a fresh engine, closing it afterwards."""
    engine = Engine(**engine_args)
    try:
        return asyncio.run(coro_fn(engine))
    finally:
        engine.close()


def _merged_reference(target_dir, conv, max_new_tokens=8):
    """(text, completion tokens) from the merged model through engine.generate's path."""
    loaded = engine_mod.load_for_inference(str(target_dir))
    text = engine_mod.generate(loaded, [conv], max_new_tokens=max_new_tokens)[0]
    tok = loaded.tokenizer
    prompt = tok.apply_chat_template(engine_mod.with_system(conv, loaded.system_prompt), tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1] :].tolist()
    tokens = new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)
    return text, tokens, ids.shape[1]


def test_greedy_chat_from_base_and_adapter_matches_merged(targets, runs, tiny_model_dir):
    async def go(engine):
        return [await engine.complete(targets[k], CONVS[0], GREEDY) for k in ("base", "a")]

    base, tuned = serve(go)
    for result, folder in ((base, tiny_model_dir), (tuned, runs["a"])):
        text, tokens, prompt_tokens = _merged_reference(folder, CONVS[0])
        (choice,) = result.choices
        assert choice.text.strip() == text
        assert choice.tokens == tokens and result.prompt_tokens == prompt_tokens
        assert choice.finish_reason == ("stop" if tokens < 8 else "length")
    assert tuned.choices[0].text == "card arrival"
    assert tuned.prompt_tokens > base.prompt_tokens  # the run's system prompt was added


def test_two_adapters_and_base_batch_together(targets):
    requests = [("a", 0), ("b", 1), ("base", 2), ("a", 2), ("b", 0), ("base", 1)]

    async def go(engine):
        together = await asyncio.gather(*(engine.complete(targets[k], CONVS[i], GREEDY) for k, i in requests))
        stats = engine.stats()
        alone = [await engine.complete(targets[k], CONVS[i], GREEDY) for k, i in requests]
        return together, alone, stats

    together, alone, stats = serve(go)
    assert [r.choices[0].text for r in together] == [r.choices[0].text for r in alone]
    assert [r.prompt_tokens for r in together] == [r.prompt_tokens for r in alone]
    assert together[0].choices[0].text == "card arrival" and together[1].choices[0].text == "top up by card"
    assert len(stats["bases"]) == 1 and stats["models"] == []
    assert sorted(stats["adapters"]) == ["ft:tiny:a", "ft:tiny:b"]
    assert stats["batched_requests"] > 0 and stats["batches"] < len(requests)


def test_adapter_lru_evicts_and_reloads(targets):
    async def go(engine):
        first = await engine.complete(targets["a"], CONVS[0], GREEDY)
        seen = [engine.stats()["adapters"]]
        await engine.complete(targets["b"], CONVS[0], GREEDY)
        seen.append(engine.stats()["adapters"])
        again = await engine.complete(targets["a"], CONVS[0], GREEDY)
        seen.append(engine.stats()["adapters"])
        return first, again, seen

    first, again, seen = serve(go, max_adapters=1)
    assert seen == [["ft:tiny:a"], ["ft:tiny:b"], ["ft:tiny:a"]]
    assert again.choices[0].text == first.choices[0].text == "card arrival"


def test_stop_strings_and_length(targets):
    stop = Sampling(max_tokens=8, temperature=0, stop=(" arr", "zzz"))

    async def go(engine):
        # batched together: "a" stops on the string (then is padded), "b" ends with eos
        cut, plain = await asyncio.gather(engine.complete(targets["a"], CONVS[0], stop), engine.complete(targets["b"], CONVS[0], stop))
        short = await engine.complete(targets["b"], CONVS[0], Sampling(max_tokens=2, temperature=0))
        return cut, plain, short

    cut, plain, short = serve(go)
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == ("card", "stop")
    assert 0 < cut.choices[0].tokens < 8
    assert (plain.choices[0].text, plain.choices[0].finish_reason) == ("top up by card", "stop")
    assert short.choices[0].finish_reason == "length" and short.choices[0].tokens == 2
    assert "top up by card".startswith(short.choices[0].text)


def test_n_choices_seeded_and_batched(targets):
    seeded = Sampling(max_tokens=6, temperature=1.0, n=2, seed=7)

    async def go(engine):
        first = await engine.complete(targets["base"], "My card", seeded)
        second = await engine.complete(targets["base"], "My card", seeded)
        greedy_n = await asyncio.gather(*(engine.complete(targets[k], CONVS[0], Sampling(max_tokens=8, temperature=0, n=2)) for k in "ab"))
        return first, second, greedy_n

    first, second, greedy_n = serve(go)
    assert len(first.choices) == 2
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    # n=2 rows in a mixed-adapter batch keep their own adapter
    assert [[c.text for c in r.choices] for r in greedy_n] == [["card arrival"] * 2, ["top up by card"] * 2]


def test_stream_adds_up_to_the_completion(targets):
    async def go(engine):
        out = []
        for sampling in (GREEDY, Sampling(max_tokens=8, temperature=0, stop=(" by",))):
            chunks = [c async for c in engine.stream(targets["b"], CONVS[1], sampling)]
            out.append((chunks, await engine.complete(targets["b"], CONVS[1], sampling)))
        with pytest.raises(ValueError, match="n must be 1"):
            [c async for c in engine.stream(targets["b"], CONVS[1], Sampling(n=2))]
        return out

    results = serve(go)
    for chunks, full in results:
        assert "".join(c.text for c in chunks) == full.choices[0].text
        assert all(c.finish_reason is None for c in chunks[:-1])
        last = chunks[-1]
        assert last.finish_reason == full.choices[0].finish_reason == "stop"
        assert (last.prompt_tokens, last.completion_tokens) == (full.prompt_tokens, full.choices[0].tokens)
    (chunks, full), (_, cut) = results
    assert len(chunks) > 1 and full.choices[0].text == "top up by card"
    assert cut.choices[0].text == "top up"


def test_raw_string_prompt(targets, tiny_model_dir):
    async def go(engine):
        return await engine.complete(targets["base"], "My card has", Sampling(max_tokens=5, temperature=0))

    result = serve(go)
    loaded = engine_mod.load_for_inference(str(tiny_model_dir))
    ids = loaded.tokenizer("My card has", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=loaded.tokenizer.eos_token_id, pad_token_id=loaded.tokenizer.pad_token_id)
    assert result.prompt_tokens == ids.shape[1]
    assert result.choices[0].text == loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_unservable_targets_raise_model_error(tmp_path, tiny_model_dir, targets):
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    config = tiny_run_config(tiny_model_dir, tmp_path / "rows.csv")
    config.method.stages = ["classify"]
    save_config(config, classifier / "config.yaml")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    save_config(tiny_run_config(tiny_model_dir, tmp_path / "chat.jsonl"), unfinished / "config.yaml")

    async def go(engine):
        errors = []
        for run_dir in (classifier, tmp_path / "missing", unfinished):
            with pytest.raises(ModelError) as info:
                await engine.complete(Target(f"ft:{run_dir.name}", str(tiny_model_dir), run_dir), CONVS[0], GREEDY)
            errors.append(str(info.value))
        # the worker survives errors
        errors.append((await engine.complete(targets["a"], CONVS[0], GREEDY)).choices[0].text)
        return errors

    classify_error, missing_error, unfinished_error, answer = serve(go)
    assert "classifier" in classify_error
    assert "not a tunesmith run" in missing_error
    assert "--resume" in unfinished_error
    assert answer == "card arrival"


def test_unload_drops_the_adapter(targets):
    async def go(engine):
        await asyncio.gather(*(engine.complete(targets[k], CONVS[0], GREEDY) for k in "ab"))
        engine.unload("ft:tiny:a")
        engine.unload("never-loaded")
        await engine.complete(targets["base"], CONVS[0], GREEDY)  # runs after the unload
        after = engine.stats()
        again = await engine.complete(targets["a"], CONVS[0], GREEDY)
        engine.unload("ft:tiny:a")
        engine.unload("ft:tiny:b")  # the last adapter: the base goes back to a plain model
        base = await engine.complete(targets["base"], CONVS[0], GREEDY)
        return after, again, base, engine.stats()

    after, again, _, final = serve(go)
    assert after["adapters"] == ["ft:tiny:b"] and len(after["bases"]) == 1
    assert again.choices[0].text == "card arrival"
    assert final["adapters"] == [] and len(final["bases"]) == 1


@pytest.fixture(scope="module")
def dora(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("pool_dora")
    return Target("ft:tiny:dora", str(tiny_model_dir), _train(root, "dora", "lost card", tiny_model_dir, adapter="dora"))


@pytest.mark.parametrize("peft_refuses", [False, True])
def test_dora_adapter_runs_apart_from_the_mixed_batch(targets, dora, monkeypatch, peft_refuses):
    # peft cannot mix DoRA adapters into one batch: the engine runs their rows apart, and
    # when peft refuses a mix it was asked for, it recovers and runs each adapter alone.
    if peft_refuses:
        monkeypatch.setattr(pool, "_mixable", lambda peft, name: True)
    requests = [targets["a"], dora, targets["base"], targets["b"]]

    async def go(engine):
        together = await asyncio.gather(*(engine.complete(t, CONVS[0], GREEDY) for t in requests))
        stats = engine.stats()
        alone = [await engine.complete(t, CONVS[0], GREEDY) for t in requests]
        return together, alone, stats

    together, alone, stats = serve(go)
    texts = [r.choices[0].text for r in together]
    assert texts == [r.choices[0].text for r in alone]
    assert texts[0] == "card arrival" and texts[1] == "lost card" and texts[3] == "top up by card"
    assert stats["batches"] == (4 if peft_refuses else 2)  # (a, base, b) mixed + dora; or each alone


def test_full_and_ia3_runs_are_separate_models_in_an_lru(tmp_path_factory, tiny_model_dir, targets):
    root = tmp_path_factory.mktemp("pool_separate")
    full = Target("ft:tiny:full", str(tiny_model_dir), _train(root, "full", "card arrival", tiny_model_dir, adapter="full"))
    ia3 = Target("ft:tiny:ia3", str(tiny_model_dir), _train(root, "ia3", "top up", tiny_model_dir, adapter="ia3"))

    async def go(engine):
        seen, answers = [], []
        for target in (targets["a"], full, ia3, targets["a"]):
            answers.append((await engine.complete(target, CONVS[0], GREEDY)).choices[0].text)
            stats = engine.stats()
            seen.append((stats["bases"] != [], stats["adapters"], stats["models"]))
        return answers, seen

    answers, seen = serve(go, max_models=2)
    assert seen == [
        (True, ["ft:tiny:a"], []),
        (True, ["ft:tiny:a"], ["ft:tiny:full"]),
        (False, [], ["ft:tiny:full", "ft:tiny:ia3"]),  # the base went, and its adapters with it
        (True, ["ft:tiny:a"], ["ft:tiny:ia3"]),
    ]
    assert answers[0] == answers[3] == "card arrival"
    for answer, target in zip(answers[1:3], (full, ia3)):
        assert answer.strip() == _merged_reference(target.run_dir, CONVS[0])[0]


def test_closing_a_stream_early_and_closing_the_engine(targets):
    async def go(engine):
        chunks = engine.stream(targets["base"], "My card", Sampling(max_tokens=200, temperature=1.0, seed=1))
        first = await anext(chunks)
        await chunks.aclose()  # the client went away
        after = await engine.complete(targets["a"], CONVS[0], GREEDY)
        return first, after

    engine = Engine()
    first, after = asyncio.run(go(engine))
    assert first.finish_reason is None and after.choices[0].text == "card arrival"
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(engine.complete(targets["a"], CONVS[0], GREEDY))


def test_a_vanishing_temperature_is_greedy_not_a_crash():
    """1e-300 underflows to 0 in float32: sampling would divide the logits by it (a 500 that
    schemathesis found); it generates greedily instead."""
    from types import SimpleNamespace

    from tunesmith.serve.pool import Sampling, _generate_kwargs

    tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    assert _generate_kwargs(Sampling(temperature=1e-300), tokenizer)["do_sample"] is False
    assert _generate_kwargs(Sampling(temperature=0.7), tokenizer)["do_sample"] is True
