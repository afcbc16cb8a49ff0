"""The bundled SmolLM2 for real: convert, train a few LoRA steps, save, reload, generate."""

import json

import pytest
import torch

from conftest import write_chat_file

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _two_threads():
    # A real model wants both cores (conftest pins one thread for the tiny model).
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_smollm2_lora_train_reload_generate_stops_at_eos(tmp_path):
    from tunesmith.config import RunConfig
    from tunesmith.models import load_tokenizer
    from tunesmith.inference.generate import load_for_inference
    from tunesmith.train.sft import train_sft

    data = write_chat_file(tmp_path / "chat.jsonl", n=48)
    config = RunConfig.model_validate(
        {
            "data": {"train": str(data), "system_prompt": "Reply with the intent name only."},
            "train": {"max_steps": 4, "learning_rate": 1e-3, "pack_length": 256, "gradient_accumulation": 2,
                      "eval_steps": 4, "warmup_ratio": 0.0},
        }
    )
    run_dir = tmp_path / "run"
    summary = train_sft(config, run_dir)
    assert summary.global_step == 4
    losses = [r["train_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "train_loss" in r]
    assert losses[-1] < losses[0]

    loaded = load_for_inference(str(run_dir))
    tokenizer = load_tokenizer("smollm2-135m")
    assert loaded.system_prompt == "Reply with the intent name only."
    messages = [{"role": "system", "content": loaded.system_prompt},
                {"role": "user", "content": "I still have not received my new card, when will it arrive?"}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = loaded.model.generate(**enc, max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    assert tokenizer.eos_token_id in new, tokenizer.decode(new)  # it stopped by itself
    assert len(new) < 40


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """The main job, shortened: auto's choices (a classification head), the evaluation on 8
    test queries, and the ONNX export verified in onnxruntime."""
    import json

    import tunesmith.workflows.quickstart as qs
    from tunesmith.export.onnx import load_onnx

    said = []
    report = qs.run_quickstart(tmp_path / "qs", max_steps=2, max_test_rows=8, say=said.append)
    assert 0.0 <= report["base_accuracy"] <= 1.0 and 0.0 <= report["tuned_accuracy"] <= 1.0
    assert report["train"]["global_step"] == 2 and report["test_rows"] == 8
    assert any("classification head" in line for line in said) and "auto.gate" in report["decisions"]
    run = tmp_path / "qs"
    assert (run / "quickstart.json").exists() and (run / "report.html").exists()
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["task"] == "labels" and results["stage"] == "classify"
    assert results["forgetting"] is None  # a classification head writes no text: nothing to forget there
    assert results["bias"]["tuned"]["pairs"] >= 50 and results["bias"]["base"] is None
    assert f"{report['tuned_accuracy']:.1%}" in (run / "MODEL_CARD.md").read_text()
    exported = report["export"]
    assert exported["format"] == "onnx" and exported["checks"][0]["runtime"] == "pytorch"
    assert report["artifacts"]["export"] == exported["folder"]
    labels = load_onnx(exported["folder"], threads=1).predict(["I still have not received my new card"])
    assert labels[0] in json.loads((run / "labels.json").read_text())


def test_smollm2_teacher_writes_classification_rows(tmp_path):
    """The bundled model as teacher: it continues a list of seed examples, and the filters
    keep rows of the intended label."""
    from conftest import banking_rows
    from tunesmith.data.synth import SynthOptions, synthesize
    from tunesmith.inference.teacher import LocalTeacher

    rows = [r for r in banking_rows() if r[1] in ("card_arrival", "top_up_failed", "exchange_rate")]
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    out = tmp_path / "synth.jsonl"
    report = synthesize(out, LocalTeacher("smollm2-135m"), SynthOptions(n=6, max_candidates=48), seed_path=seed)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert report.kept == len(kept) >= 3
    assert all(r["label"] in ("card_arrival", "top_up_failed", "exchange_rate") and r["text"] for r in kept)
    seed_texts = {t for t, _ in rows}
    assert not seed_texts & {r["text"] for r in kept}


@pytest.mark.slow
def test_smollm2_classifier_head_learns_and_reloads(tmp_path):
    """SmolLM2 with a classification head on the bundled sample (10 intents): a few LoRA
    steps beat chance, and `predict` on the reloaded run gives the validation accuracy back."""
    import csv

    from tunesmith.config import RunConfig
    from tunesmith.workflows.quickstart import SAMPLE_TRAIN
    from tunesmith.inference.classifier import load_classifier, predict
    from tunesmith.workflows.train_eval import train

    with open(SAMPLE_TRAIN, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = sorted({r["category"] for r in rows})[:10]
    rows = [r for r in rows if r["category"] in keep]
    train_file, val_file = tmp_path / "train.csv", tmp_path / "val.csv"
    for path, part in ((train_file, rows[::2]), (val_file, rows[1::2])):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(part)
    config = RunConfig.model_validate(
        {
            "data": {"train": str(train_file), "validation": str(val_file)},
            "method": {"stages": ["classify"]},
            "train": {"max_steps": 12, "batch_size": 16, "eval_steps": 12},
        }
    )
    summary = train(config, tmp_path / "run")
    assert summary.eval_accuracy > 0.3, summary  # chance is 0.1
    texts = [r["text"] for r in rows[1::2]]
    predictions = predict(load_classifier(tmp_path / "run"), texts)
    accuracy = sum(p["label"] == r["category"] for p, r in zip(predictions, rows[1::2])) / len(texts)
    assert accuracy == pytest.approx(summary.eval_accuracy, abs=0.01)  # other batches, other padding


@pytest.mark.slow
def test_smollm2_dpo_and_grpo_on_real_data(tmp_path):
    """DPO on a slice of HH-RLHF moves the reward margin; GRPO with a LoRA adapter and the
    exact-match reward runs on Banking77 prompts with finite loss, reward and KL."""
    import gzip
    import math
    from pathlib import Path

    from tunesmith.config import RunConfig
    from tunesmith.data.formats import load_data
    from tunesmith.workflows.train_eval import train

    hh = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl.gz"
    if not hh.exists():
        pytest.skip("../shared/data/hh-rlhf-harmless is not beside the repository")
    pairs = tmp_path / "hh.jsonl"
    with gzip.open(hh, "rt") as f:
        lines = [line for line in f if len(line) < 900][:40]  # short dialogues: a CPU-sized slice
    pairs.write_text("".join(lines))
    assert load_data(pairs).task == "preference"
    config = RunConfig.model_validate({
        "data": {"train": str(pairs), "force": True},
        "method": {"stages": ["dpo"]},
        "train": {"max_steps": 6, "eval_steps": 6, "learning_rate": 5e-4, "warmup_ratio": 0.0},
    })
    summary = train(config, tmp_path / "dpo")
    margins = [r["rewards/margins"] for r in map(json.loads, (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines())
               if "rewards/margins" in r]
    assert math.isfinite(summary.train_loss) and margins[-1] > margins[0], margins

    data = write_chat_file(tmp_path / "chat.jsonl", n=24)
    config = RunConfig.model_validate({
        "data": {"train": str(data), "system_prompt": "Reply with the intent name only."},
        "method": {"stages": ["grpo"], "reward_functions": ["exact_match", "length"], "max_completion_length": 16},
        "train": {"max_steps": 3, "eval_steps": 3},
    })
    summary = train(config, tmp_path / "grpo")
    assert summary.global_step == 3 and math.isfinite(summary.train_loss)
    assert summary.rewards == ["exact_match", "length"] and summary.kl_end is not None
    assert (tmp_path / "grpo" / "samples.jsonl").exists()
