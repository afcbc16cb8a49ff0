"""The main job on the embedded default: fine-tune the bundled SmolLM2 on the bundled
Banking77 sample as a chat task (query in, intent name out) and compare test accuracy of
the base and the tuned model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tunesmith.config import RunConfig

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_TRAIN = SAMPLES / "banking77_train.csv"
SAMPLE_TEST = SAMPLES / "banking77_test.csv"
# Short on purpose: every token of it is paid for in every training example.
SYSTEM_PROMPT = "Name the intent."


def quickstart_config(model: str = "smollm2-135m", max_steps: int | None = None) -> RunConfig:
    """The quickstart's settings: everything else is resolved automatically."""
    return RunConfig.model_validate(
        {
            "model": {"name": model},
            "data": {"train": str(SAMPLE_TRAIN), "system_prompt": SYSTEM_PROMPT},
            # One pass over the 1,232 sample rows fits a ten-minute budget on a 2-core CPU.
            "train": {"epochs": 1, "max_steps": max_steps},
        }
    )


def held_out_queries() -> tuple[list[list[dict]], list[str]]:
    from tunesmith.data.formats import load_data

    data = load_data(SAMPLE_TEST)
    prompts = [[{"role": "user", "content": r["text"]}] for r in data.records]
    return prompts, [r["label"] for r in data.records]


def accuracy(target: str, base: bool, prompts, labels, on_batch: Callable[[int], None] | None = None) -> tuple[float, list[str]]:
    """Exact-match accuracy of greedy answers; intent names are a few tokens, so 24 new
    tokens is plenty and keeps the untuned model's rambling cheap."""
    from tunesmith.evaluate.metrics import exact_match
    from tunesmith.serve.engine import generate, load_for_inference

    loaded = load_for_inference(target, base=base)
    answers = generate(loaded, prompts, max_new_tokens=24, batch_size=32, on_batch=on_batch)
    return exact_match(answers, labels), answers


def run_quickstart(
    run_dir: str | Path,
    model: str = "smollm2-135m",
    max_steps: int | None = None,
    train_callbacks: list | None = None,
    on_eval_batch: Callable[[str, int], None] | None = None,
) -> dict:
    """Train, then score base and tuned model on the held-out test sample. Writes
    `quickstart.json` and the answers to `eval/` in the run directory."""
    from tunesmith.serve.engine import write_jsonl
    from tunesmith.train.sft import train_sft

    run_dir = Path(run_dir)
    start = time.perf_counter()
    summary = train_sft(quickstart_config(model, max_steps), run_dir, callbacks=train_callbacks)
    train_s = time.perf_counter() - start

    prompts, labels = held_out_queries()
    results = {}
    for which, base in (("base", True), ("tuned", False)):
        step = (lambda n, w=which: on_eval_batch(w, n)) if on_eval_batch else None
        acc, answers = accuracy(str(run_dir), base, prompts, labels, step)
        results[which] = acc
        (run_dir / "eval").mkdir(exist_ok=True)
        write_jsonl(
            run_dir / "eval" / f"test_answers_{which}.jsonl",
            [{"text": p[-1]["content"], "label": y, "answer": a} for p, y, a in zip(prompts, labels, answers)],
        )
    report = {
        "test_rows": len(labels),
        "base_accuracy": results["base"],
        "tuned_accuracy": results["tuned"],
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "train": summary,
    }
    (run_dir / "quickstart.json").write_text(json.dumps(report, indent=2))
    return report
