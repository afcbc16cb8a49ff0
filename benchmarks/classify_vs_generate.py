"""Benchmark: Banking77 intent detection as a classifier head versus as generation, with the
bundled SmolLM2-135M and the same training budget. Measured, not assumed.

Run from the repository root, in the project's virtualenv:

    python benchmarks/classify_vs_generate.py                      # 4,800 training examples each
    python benchmarks/classify_vs_generate.py --examples 320 --test-rows 200   # a quick check
    python benchmarks/classify_vs_generate.py --model PATH --train SMALL.csv \
        --test src/tunesmith/samples/banking77_test.csv --examples 8 --test-rows 4   # a smoke test (CI)

Both arms train LoRA (r=16, all linear layers) with tunesmith's automatic settings on
Banking77's train split (10,003 rows; 200 held out for validation) and see the same number
of training examples (`--examples`, default 4,800: DESIGN.md's plain-loop floor of 150
steps of 32 queries, which reached 78.7% test accuracy in 15 minutes):

 - classify: `tunesmith train --task classify` (LoRA + a sequence-classification head), 32
   queries per step; test predictions with `tunesmith.train.classify.predict`.
 - generate: `tunesmith train` on the quickstart's formulation (system prompt, query in,
   intent name out), packed; its step count is set from the resolved packing so that it
   sees the same number of examples on average; greedy answers, exact match.

Each tuned model labels the whole test split (3,080 queries). Prints test accuracy,
macro-F1, training time and evaluation time per arm, and writes them to
`benchmarks/results/classify_vs_generate.json` (runs under `--out`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "banking77"


def accuracy(run: str, prompts, labels) -> tuple[float, list[str]]:
    """Exact-match accuracy of the run's greedy answers (intent names are a few tokens, so 24
    new tokens are plenty)."""
    from tunesmith.evaluate.metrics import exact_match
    from tunesmith.inference.generate import generate, load_for_inference

    answers = generate(load_for_inference(run), prompts, max_new_tokens=24, batch_size=32)
    return exact_match(answers, labels), answers


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=4800, help="training examples seen by each arm")
    p.add_argument("--test-rows", type=int, default=0, help="test queries to score (0: the whole split)")
    p.add_argument("--arms", default="classify,generate")
    p.add_argument("--model", default=None, help="base model: a tunesmith model name or local folder "
                   "(default: the bundled SmolLM2-135M)")
    p.add_argument("--train", default=str(SHARED / "train.csv"), help="Banking77-style training CSV (text,category)")
    p.add_argument("--test", default=str(SHARED / "test.csv"), help="Banking77-style test CSV (text,category)")
    p.add_argument("--out", default="benchmarks/out/classify_vs_generate")
    p.add_argument("--results", default="benchmarks/results/classify_vs_generate.json")
    return p.parse_args()


def test_rows(path: str, n: int) -> list[dict]:
    from tunesmith.data.formats import load_data

    records = load_data(path).records
    return records[:n] if n else records


def macro_f1(predicted: list[str], labels: list[str]) -> float:
    """Macro-F1 over the 77 true intents (an answer that is no intent counts as a miss, not
    as a class of its own)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predicted, labels=sorted(set(labels)), average="macro", zero_division=0))


def run_classify(args, out: Path, rows: list[dict]) -> dict:
    from tunesmith.config import RunConfig
    from tunesmith.inference.classifier import load_classifier, predict
    from tunesmith.data.load import write_jsonl
    from tunesmith.workflows.train_eval import train

    batch = 32
    config = RunConfig.model_validate(
        {
            **_model(args),
            "data": {"train": args.train, "test_split": 0.0, "force": True},
            "method": {"stages": ["classify"], "adapter": "lora"},
            "train": {"batch_size": batch, "max_steps": math.ceil(args.examples / batch)},
        }
    )
    summary = train(config, out / "classify")
    start = time.perf_counter()
    predictions = predict(load_classifier(out / "classify"), [r["text"] for r in rows], batch_size=64)
    eval_s = time.perf_counter() - start
    predicted = [p["label"] for p in predictions]
    labels = [r["label"] for r in rows]
    write_jsonl(out / "classify" / "test_predictions.jsonl",
                [{"text": r["text"], "label": r["label"], **p} for r, p in zip(rows, predictions)])
    return {
        "arm": "classify",
        "steps": summary.global_step,
        "examples_seen": summary.global_step * batch,
        "learning_rate": _config(out / "classify")["train"]["learning_rate"],
        "train_seconds": round(summary.train_runtime_s, 1),
        "test_accuracy": sum(p == y for p, y in zip(predicted, labels)) / len(labels),
        "test_macro_f1": macro_f1(predicted, labels),
        "eval_seconds": round(eval_s, 1),
    }


def run_generate(args, out: Path, rows: list[dict]) -> dict:
    from tunesmith.config import RunConfig
    from tunesmith.data.formats import token_lengths
    from tunesmith.data.rows import load_chat_rows
    from tunesmith.data.load import write_jsonl
    from tunesmith.models import load_tokenizer
    from tunesmith.train.auto import resolve
    from tunesmith.workflows.quickstart import SYSTEM_PROMPT
    from tunesmith.workflows.train_eval import train

    config = RunConfig.model_validate(
        {
            **_model(args),
            "data": {"train": args.train, "test_split": 0.0, "system_prompt": SYSTEM_PROMPT, "force": True},
            "method": {"stages": ["sft"], "adapter": "lora"},
        }
    )
    # Packing puts a varying number of examples into a step: resolve the settings first and
    # give this arm the steps that hold `--examples` examples on average.
    tokenizer = load_tokenizer(config.model.name)
    chats = load_chat_rows(config.data.train, config)
    resolved = resolve(config, chats, tokenizer, has_validation_file=False, kind="chat")
    mean_tokens = sum(token_lengths(chats, "chat", tokenizer)) / len(chats)
    t = resolved.train
    per_step = int(t.pack_length) * int(t.batch_size) * int(t.gradient_accumulation) / mean_tokens
    config.train.max_steps = math.ceil(args.examples / per_step)
    summary = train(config, out / "generate")
    prompts = [[{"role": "user", "content": r["text"]}] for r in rows]
    labels = [r["label"] for r in rows]
    start = time.perf_counter()
    acc, answers = accuracy(str(out / "generate"), prompts, labels)
    eval_s = time.perf_counter() - start
    write_jsonl(out / "generate" / "test_answers.jsonl",
                [{"text": r["text"], "label": r["label"], "answer": a} for r, a in zip(rows, answers)])
    tokens_per_example = summary.train_tokens / summary.train_rows
    return {
        "arm": "generate",
        "steps": summary.global_step,
        "examples_seen": round(summary.tokens_seen / tokens_per_example),
        "learning_rate": _config(out / "generate")["train"]["learning_rate"],
        "train_seconds": round(summary.train_runtime_s, 1),
        "test_accuracy": acc,
        "test_macro_f1": macro_f1(answers, labels),
        "eval_seconds": round(eval_s, 1),
    }


def _model(args) -> dict:
    """The config's model section: `--model`, or tunesmith's default base (the bundled model)."""
    return {"model": {"name": args.model}} if args.model else {}


def _config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def main() -> None:
    args = parse_args()
    import torch

    from tunesmith.runtime import quiet_libraries as _quiet_libraries

    _quiet_libraries()
    out = Path(args.out)
    rows = test_rows(args.test, args.test_rows)
    results = []
    for arm in args.arms.split(","):
        shutil.rmtree(out / arm, ignore_errors=True)
        print(f"--- {arm}", flush=True)
        result = (run_classify if arm == "classify" else run_generate)(args, out, rows)
        print(json.dumps(result), flush=True)
        results.append(result)

    print(f"\nBanking77, {args.model or 'SmolLM2-135M'} + LoRA r=16, {args.examples} training examples per arm, "
          f"{len(rows)} test queries, {torch.get_num_threads()} CPU threads")
    print(f"{'arm':<10}{'steps':>7}{'examples':>10}{'train s':>9}{'accuracy':>10}{'macro-F1':>10}{'eval s':>8}")
    for r in results:
        print(f"{r['arm']:<10}{r['steps']:>7}{r['examples_seen']:>10}{r['train_seconds']:>9.0f}"
              f"{r['test_accuracy']:>10.1%}{r['test_macro_f1']:>10.3f}{r['eval_seconds']:>8.0f}")
    if len(results) == 2:
        c, g = results
        print(f"classify / generate: accuracy {c['test_accuracy'] - g['test_accuracy']:+.1%}, "
              f"training time x{c['train_seconds'] / g['train_seconds']:.2f}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(
        {"examples": args.examples, "test_rows": len(rows), "threads": torch.get_num_threads(), "arms": results}, indent=2
    ) + "\n")


if __name__ == "__main__":
    main()
