"""The ONNX export on the tiny model: a chat run and a classifier run exported, loaded in
onnxruntime and compared with PyTorch (logits, greedy answers, labels), the int8 copy run too,
and the export failing with one sentence where a file does not stop or loses too much."""

import json

import numpy as np
import pytest
import torch
from conftest import banking_rows, tiny_run_config

from tunesmith.errors import ConfigError, ModelError
from tunesmith.export.onnx import (
    INT8_FILE,
    ONNX_FILE,
    _check,
    export_onnx,
    load_onnx_causal_lm,
    open_session,
    quantize_int8,
)
from tunesmith.runs import RunDir

WHY = "the ONNX export needs onnxruntime and onnxscript (tunesmith's dependencies: bash scripts/setup.sh)"
pytest.importorskip("onnxruntime", reason=WHY)
pytest.importorskip("onnxscript", reason=WHY)
pytest.importorskip("transformers.exporters", reason="the ONNX export needs transformers 5's exporters")


@pytest.fixture(scope="module")
def chat_export(tiny_run, tmp_path_factory):
    run_dir, _ = tiny_run
    out = tmp_path_factory.mktemp("onnx") / "chat"
    steps = []
    report = export_onnx(run_dir, out, limit=4, max_new_tokens=8, threads=1,
                         progress=lambda what, done, total: steps.append((what, done, total)))
    return run_dir, out, report, steps


def test_chat_export_writes_a_deployable_folder(chat_export):
    _, out, report, steps = chat_export
    assert {ONNX_FILE, INT8_FILE, "tokenizer.json", "config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob("chat.tmp-*"))  # the folder was written aside and moved into place
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in ((out / "chat_template.jinja").read_text() if (out / "chat_template.jinja").exists()
                              else tokenizer_config["chat_template"])
    generation = json.loads((out / "generation_config.json").read_text())
    im_end = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]["<|im_end|>"]
    assert im_end in np.atleast_1d(generation["eos_token_id"]).tolist()

    session = open_session(out / ONNX_FILE, threads=1)
    names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    assert names[0][:3] == ["input_ids", "attention_mask", "position_ids"] and "past_key_values.1.value" in names[0]
    assert names[1][0] == "logits" and "present.1.value" in names[1]

    assert report["task"] == "causal-lm" and report["prompts"] == 4 and report["max_new_tokens"] == 8
    assert report["quantization"] == "weights" and report["stop_tokens"] == ["<|im_end|>"]
    fp32, int8 = report["files"]
    assert (fp32["file"], int8["file"]) == (ONNX_FILE, INT8_FILE)
    assert fp32["agreement"] == 1.0 and fp32["token_agreement"] == 1.0  # PyTorch's answers, token for token
    assert fp32["stop_share"] == report["pytorch"]["stop_share"] and fp32["exact_match"] == report["pytorch"]["exact_match"]
    assert 0 < int8["bytes"] < fp32["bytes"] == (out / ONNX_FILE).stat().st_size
    assert int8["token_agreement"] >= 0.9 and int8["tokens_per_s"] > 0 and fp32["load_s"] >= 0
    assert report["pytorch"]["tokens_per_s"] > 0
    assert [s[0] for s in steps][:2] == ["answering with PyTorch", "exporting to ONNX"] and steps[-1][1] == steps[-1][2]


def test_onnx_logits_and_generation_match_pytorch(chat_export, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, out, _, _ = chat_export
    merged = RunDir(run_dir).merged
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             for t, _ in banking_rows(2)]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert (enc["attention_mask"] == 0).any()  # one row is left-padded
    runtime = load_onnx_causal_lm(out / ONNX_FILE, threads=1)

    # The prompt in one pass with an empty cache, then one token on the cache it returned.
    longest = int(enc["attention_mask"].sum(-1).argmax())  # the row without padding
    ids, mask = enc["input_ids"][longest : longest + 1], enc["attention_mask"][longest : longest + 1]
    with torch.no_grad():
        full = model(input_ids=ids).logits.numpy()
    heads, size = runtime.cache_shape
    empty = {n: np.zeros((1, heads, 0, size), np.float32) for n in runtime.past_names}
    n = ids.shape[1] - 1
    first = runtime.session.run(None, {"input_ids": ids[:, :n].numpy(), "attention_mask": mask[:, :n].numpy(),
                                       "position_ids": np.arange(n)[None], **empty})
    np.testing.assert_allclose(first[0], full[:, :n], atol=1e-4, rtol=1e-4)
    past = dict(zip(runtime.past_names, first[1:]))
    last = runtime.session.run(["logits"], {"input_ids": ids[:, n:].numpy(), "attention_mask": mask.numpy(),
                                            "position_ids": np.array([[n]]), **past})[0]
    np.testing.assert_allclose(last, full[:, n:], atol=1e-4, rtol=1e-4)

    # Greedy generation on a left-padded batch, token for token as transformers generates it.
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=stop,
                              pad_token_id=tokenizer.pad_token_id)
    got = runtime.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=10, eos_token_id=stop,
                           pad_token_id=tokenizer.pad_token_id)
    assert got.tolist() == expected.tolist()

    # int8: the same shapes, logits near float32's (weights rounded to 1/127 of each channel's range).
    quantised = load_onnx_causal_lm(out / INT8_FILE, threads=1).session.run(
        ["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": np.arange(n + 1)[None],
                     **empty})[0]
    assert quantised.shape == full.shape
    assert np.linalg.norm(quantised - full) / np.linalg.norm(full) < 0.05

    # onnxruntime's dynamic quantisation (activations too) runs, near float32 but less so.
    dynamic = quantize_int8(out / ONNX_FILE, tmp_path / "dynamic.onnx", "dynamic")
    assert dynamic.stat().st_size < (out / ONNX_FILE).stat().st_size
    quantised = load_onnx_causal_lm(dynamic, threads=1).session.run(
        ["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": np.arange(n + 1)[None],
                     **empty})[0]
    assert np.linalg.norm(quantised - full) / np.linalg.norm(full) < 0.2
    with pytest.raises(ConfigError, match="one of weights, dynamic"):
        quantize_int8(out / ONNX_FILE, tmp_path / "x.onnx", "int4")


def _classifier_run(model_dir, tmp_path):
    from tunesmith.train.classify import train_classify

    words = {"card": "card_problem", "loan": "loan_question", "fee": "fee_dispute"}
    fillers = ["please help", "my", "why is there a", "question about the", "urgent:"]
    lines = ["text,label"] + [f"{fillers[i % 5]} {w} number {i},{words[w]}" for i, w in
                              ((i, list(words)[i % 3]) for i in range(60))]
    data = tmp_path / "labels.csv"
    data.write_text("\n".join(lines) + "\n")
    config = tiny_run_config(model_dir, data, batch_size=8, max_steps=12, eval_steps=6, learning_rate=5e-3,
                             max_length=32, best_metric="accuracy")
    config.method.stages = ["classify"]
    config.data.validation_split = 0.2
    train_classify(config, tmp_path / "run")
    return tmp_path / "run"


def test_load_onnx_chats_as_the_usage_command_says(chat_export):
    """`load_onnx(folder).chat(messages)`, the call the export's usage line prints, answers."""
    from tunesmith.export.build import usage
    from tunesmith.export.onnx import OnnxChat, load_onnx

    _, out, _, _ = chat_export
    [command] = usage("onnx", out, "chat")
    assert "load_onnx(" in command and ".chat(" in command
    model = load_onnx(out, threads=1)
    assert isinstance(model, OnnxChat) and model.stops
    answer = model.chat([{"role": "user", "content": "my card is lost"}], max_new_tokens=6)
    assert isinstance(answer, str) and "<|im_end|>" not in answer


def test_classifier_export_keeps_labels_and_predictions(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = _classifier_run(tiny_model_dir, tmp_path)
    out = tmp_path / "onnx"
    report = export_onnx(run, out, limit=40, threads=1)
    labels = ["card_problem", "fee_dispute", "loan_question"]
    assert json.loads((out / "labels.json").read_text()) == labels
    assert json.loads((out / "config.json").read_text())["id2label"] == {str(i): label for i, label in enumerate(labels)}
    assert report["task"] == "sequence-classification" and report["rows"] == 40 and report["labels"] == labels
    fp32, int8 = report["files"]
    assert fp32["agreement"] == 1.0 and fp32["accuracy"] == report["pytorch"]["accuracy"]
    assert int8["agreement"] >= 0.9 and int8["rows_per_s"] > 0 and report["pytorch"]["rows_per_s"] > 0

    model = AutoModelForSequenceClassification.from_pretrained(RunDir(run).merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(["my card number 3", "why is there a fee number 12 on my loan"], padding=True, return_tensors="np")
    assert (enc["attention_mask"] == 0).any()  # the shorter text is padded: the head must read its last real token
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    feed = {k: v.astype(np.int64) for k, v in enc.items()}
    [got] = open_session(out / ONNX_FILE, threads=1).run(["logits"], feed)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    [quantised] = open_session(out / INT8_FILE, threads=1).run(["logits"], feed)
    assert quantised.shape == expected.shape and np.abs(quantised - expected).max() < 0.1 * np.abs(expected).max() + 0.05

    # the usage line's call: load_onnx(folder).predict(texts), on the int8 file
    from tunesmith.export.build import usage
    from tunesmith.export.onnx import OnnxClassifier, load_onnx

    assert ".predict([" in usage("onnx", out, "clf")[0]
    loaded = load_onnx(out, threads=1)
    assert isinstance(loaded, OnnxClassifier) and loaded.labels == labels
    assert loaded.max_length == json.loads((out / "classifier.json").read_text())["max_length"]
    assert set(loaded.predict(["my card number 3", "a fee on my loan"])) <= set(labels)


REPORT = {"task": "causal-lm", "prompts": 16, "max_new_tokens": 64,
          "pytorch": {"stop_share": 1.0, "exact_match": 0.8}}
INT8 = {"file": INT8_FILE, "type": "int8", "stop_share": 1.0, "exact_match": 0.8, "token_agreement": 0.97}


@pytest.mark.parametrize(("figures", "fragments"), [
    (INT8 | {"stop_share": 0.0}, ["model_int8.onnx", "never ends its answers", "within 64 tokens",
                                  "without the int8 copy (--no-int8)"]),
    (INT8 | {"token_agreement": 0.6}, ["predicts 60% of PyTorch's answer tokens", "below the 90% an int8 file"]),
    (INT8 | {"exact_match": 0.6}, ["drops test exact match from 80% to 60%", "more than the 11% an int8 file may lose"]),
    (INT8 | {"file": ONNX_FILE, "type": "float32", "token_agreement": 0.9},
     ["model.onnx", "predicts 90%", "below the 95% a float32 file", "report this with the model's name"]),
])
def test_a_file_that_does_not_stop_or_keeps_too_little_fails_in_one_sentence(tmp_path, figures, fragments):
    with pytest.raises(ModelError) as error:
        _check(tmp_path, figures, REPORT)
    message = str(error.value)
    assert all(f in message for f in fragments), message
    assert message.count(". ") == 0 and message.endswith(".")
    _check(tmp_path, INT8 | {"file": figures["file"], "type": figures["type"], "token_agreement": 0.96}, REPORT)


def test_a_classifier_file_is_held_to_labels_and_accuracy(tmp_path):
    report = {"task": "sequence-classification", "rows": 100, "pytorch": {"accuracy": 0.8}}
    int8 = {"file": INT8_FILE, "type": "int8", "accuracy": 0.78, "agreement": 0.92}
    _check(tmp_path, int8, report)  # a few labels moved, accuracy kept
    with pytest.raises(ModelError, match="drops test accuracy from 80% to 70%"):
        _check(tmp_path, int8 | {"accuracy": 0.7}, report)
    with pytest.raises(ModelError, match="label on 85% of 100 test rows, below the 90% an int8 file"):
        _check(tmp_path, int8 | {"agreement": 0.85, "accuracy": 0.8}, report)  # even with the accuracy kept
    with pytest.raises(ModelError, match="label on 97% of 100 test rows, below the 98% a float32 file"):
        _check(tmp_path, int8 | {"file": ONNX_FILE, "type": "float32", "agreement": 0.97, "accuracy": 0.8}, report)


def test_export_refuses_what_it_cannot_export(tmp_path, tiny_run, monkeypatch):
    with pytest.raises(ModelError, match="not a run directory"):
        export_onnx(tmp_path / "nothing", tmp_path / "out")
    run_dir, _ = tiny_run
    with pytest.raises(ConfigError, match="one of weights, dynamic, not 'int4'"):
        export_onnx(run_dir, tmp_path / "out", quantize="int4")
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"needs onnxruntime: pip install onnx onnxscript onnx-ir onnxruntime"):
        export_onnx(run_dir, tmp_path / "out")
    monkeypatch.undo()
    reward = tmp_path / "reward"
    reward.mkdir()
    config = RunDir(run_dir).config.model_copy(deep=True)
    config.method.stages = ["reward"]
    from tunesmith.config import save_config

    save_config(config, reward / "config.yaml")
    with pytest.raises(ModelError, match="reward model.*--format hf"):
        export_onnx(reward, tmp_path / "out")
    assert not (tmp_path / "out").exists()
