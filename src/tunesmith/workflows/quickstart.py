"""The main job on the embedded default, the platform in one command: what `tunesmith auto`
does for the bundled Banking77 sample (data gate, automatic choices with their reasons, a
classification head on SmolLM2, base-vs-tuned evaluation on the held-out test sample with a
report and a model card), then an ONNX export of the tuned model, verified in onnxruntime
against PyTorch, with the command that runs it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.export.build import export_run
from tunesmith.runs import RunDir
from tunesmith.workflows.auto import run_auto

# auto's own plan for the sample (two passes over it): a fixed number of steps rather than a
# wall-time budget, so a busy machine takes longer instead of failing. One pass was tried and
# left the head at 20% validation accuracy.
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE_TRAIN = SAMPLES / "banking77_train.csv"
SAMPLE_TEST = SAMPLES / "banking77_test.csv"
# The bundled sample as a chat task (query in, intent name out) is what the benchmarks compare
# (generation against a head, tunesmith against TRL, exports): short on purpose, since every
# token of it is paid for in every training example.
SYSTEM_PROMPT = "Name the intent."


def chat_config(model: str = "smollm2-135m", max_steps: int | None = None, max_test_rows: int | None = None) -> RunConfig:
    """The bundled sample as a chat task, one pass over its 1,232 rows; the rest resolved."""
    return RunConfig.model_validate(
        {
            "model": {"name": model},
            "data": {"train": str(SAMPLE_TRAIN), "test": str(SAMPLE_TEST), "system_prompt": SYSTEM_PROMPT},
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
    say: Callable[[str], None] = lambda line: None,
    export: bool = True,
    report_to: list[str] | None = None,
) -> dict:
    """Run `auto` on the bundled sample (`max_steps` caps its steps), `say` getting each decision, then export the tuned model to ONNX (unless `export` is False). Writes the headline figures and where every artifact
    is to `quickstart.json` and returns them."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    overrides = {"train.max_steps": max_steps, "eval.max_rows": max_test_rows, "train.report_to": report_to or None}
    result = run_auto(str(SAMPLE_TRAIN), run_dir, str(SAMPLE_TEST), "auto", None, model, None, False, 0, None,
                      callbacks=train_callbacks, eval_progress=eval_progress, say=say,
                      overrides={k: v for k, v in overrides.items() if v is not None})
    results, summary = result.evaluation, result.summary
    trained = time.perf_counter() - start
    exported = export_run(run_dir, "onnx", progress=eval_progress) if export else None
    folder = RunDir(run_dir)
    report = {
        "test_rows": results.test.rows,
        "base_accuracy": results.metrics["base"]["accuracy"],
        "tuned_accuracy": results.metrics["tuned"]["accuracy"],
        "macro_f1": results.metrics["tuned"].get("macro_f1"),
        "decisions": result.decisions,
        "train_seconds": round(summary.train_runtime_s, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "export_seconds": round(time.perf_counter() - start - trained, 1) if exported else None,
        "train": summary.to_json(),
        "artifacts": {
            "report": str(folder.report_file),
            "model_card": str(folder.model_card_file),
            "results": str(folder.results_file),
            "weights": str(folder.final.weights) if folder.final.weights else None,
            "export": exported["folder"] if exported else None,
        },
        "export": exported,  # export/build.py's report: files, verification table, commands
    }
    (run_dir / "quickstart.json").write_text(json.dumps(report, indent=2))
    return report
