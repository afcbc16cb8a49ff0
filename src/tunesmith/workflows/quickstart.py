"""The main job on the embedded default: fine-tune the bundled SmolLM2 on the bundled
Banking77 sample as a chat task (query in, intent name out), then measure the base and the
tuned model on the held-out test sample: accuracy, per-intent figures, forgetting, bias,
a report and a model card."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.workflows.train_eval import train

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE_TRAIN = SAMPLES / "banking77_train.csv"
SAMPLE_TEST = SAMPLES / "banking77_test.csv"
# Short on purpose: every token of it is paid for in every training example.
SYSTEM_PROMPT = "Name the intent."


def quickstart_config(model: str = "smollm2-135m", max_steps: int | None = None, max_test_rows: int | None = None) -> RunConfig:
    """The quickstart's settings: everything else is resolved automatically."""
    return RunConfig.model_validate(
        {
            "model": {"name": model},
            "data": {"train": str(SAMPLE_TRAIN), "test": str(SAMPLE_TEST), "system_prompt": SYSTEM_PROMPT},
            # One pass over the 1,232 sample rows fits a ten-minute budget on a 2-core CPU.
            "train": {"epochs": 1, "max_steps": max_steps},
            "eval": {"max_rows": max_test_rows},
        }
    )


def run_quickstart(
    run_dir: str | Path,
    model: str = "smollm2-135m",
    max_steps: int | None = None,
    train_callbacks: list | None = None,
    eval_progress: Callable[[str, int, int], None] | None = None,
    max_test_rows: int | None = None,
) -> dict:
    """Train, then measure base and tuned model on the held-out test sample (the evaluation
    that ends every `tunesmith train` with a test set: `eval/results.json`, `report.html`,
    `MODEL_CARD.md`). Writes the headline figures to `quickstart.json`."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    summary = train(quickstart_config(model, max_steps, max_test_rows), run_dir, train_callbacks, eval_progress=eval_progress)
    results = summary.evaluation
    report = {
        "test_rows": results.test.rows,
        "base_accuracy": results.metrics["base"]["accuracy"],
        "tuned_accuracy": results.metrics["tuned"]["accuracy"],
        "train_seconds": round(summary.train_runtime_s, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "train": summary.to_json(),
        "evaluation": "eval/results.json",
    }
    (run_dir / "quickstart.json").write_text(json.dumps(report, indent=2))
    return report
