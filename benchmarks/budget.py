"""Benchmark: does `tunesmith auto --budget` keep its promise, and does it beat a plain
hand-written training loop given the same time? Measured, not assumed.

Run from the repository root, in the project's virtualenv:

    python benchmarks/budget.py                                  # Banking77, 15 minutes per arm
    python benchmarks/budget.py --budget 5m --arms auto          # only the budget promise
    python benchmarks/budget.py --model PATH --train SMALL.csv --test SMALL_TEST.csv \
        --budget 3m --plain-budget 15s                           # a smoke test (CI)

Both arms get Banking77's train split (10,003 rows, columns text,category) and are scored
on its test split (3,080 rows), with the bundled SmolLM2-135M unless `--model` says other:

 - auto: `tunesmith auto TRAIN --test TEST --budget B --output OUT/auto` in a subprocess,
   timed from launch to exit (interpreter start, data gate, probe, training, before/after
   evaluation, report and registration all count). Its accuracy, macro-F1 and the test rows
   it scored come from `OUT/auto/eval/results.json` (`metrics.tuned`, `test.rows`; under a
   tight budget auto may score a seeded sample of the test rows, which the table shows).
 - plain: the strongest plain baseline a user would write without tunesmith, in this
   process: `AutoModelForSequenceClassification` from the same base model folder, peft LoRA
   (r=16, alpha 32, dropout 0.05, all linear layers, the `score` head trained in full),
   AdamW at 2e-4 with 5% linear warmup and linear decay, 32 shuffled rows a step, 64 tokens
   at most, seed 0. It times a forward pass over 64 test rows before training and keeps
   that, scaled to the test set, for its own prediction; the first 3 steps' time sets the
   planned step count (and so the schedule), and training stops when its time is up. Its
   wall time counts loading, training and predicting the full test set.

Prints a table (wall seconds, wall / budget, steps, test accuracy, macro-F1, rows scored)
and the ratios: auto's wall time over its budget ("within 10%" when at most 1.10), and
auto's accuracy over the plain loop's. Writes them to `benchmarks/results/budget.json`
(runs under `--out`). The smoke run (tests/test_benchmarks.py) uses the tests' tiny random
Llama, a few rows of four intents, `--budget 3m` and `--plain-budget 15s`; its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "banking77"

# The plain loop's settings (what a careful user writes by hand).
LORA_R, LORA_ALPHA, LORA_DROPOUT = 16, 32, 0.05
LEARNING_RATE, WARMUP_RATIO = 2e-4, 0.05
BATCH_SIZE, EVAL_BATCH_SIZE = 32, 64
TIMED_STEPS = 3  # steps whose mean time plans the schedule
EVAL_MARGIN = 1.1  # on the scaled prediction time: the timed batch is one sample of lengths


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", default="15m", help="auto's wall-time budget: 90s, 15m, 1h30m, ...")
    p.add_argument("--plain-budget", default=None, help="the plain loop's budget (default: --budget)")
    p.add_argument("--arms", default="auto,plain")
    p.add_argument("--model", default=None, help="base model: a tunesmith model name or local folder "
                   "(default: the bundled SmolLM2-135M)")
    p.add_argument("--train", default=str(SHARED / "train.csv"), help="Banking77-style training CSV (text,category)")
    p.add_argument("--test", default=str(SHARED / "test.csv"), help="Banking77-style test CSV (text,category)")
    p.add_argument("--max-length", type=int, default=64, help="the plain loop's tokens per query")
    p.add_argument("--out", default="benchmarks/out/budget")
    p.add_argument("--results", default="benchmarks/results/budget.json")
    return p.parse_args()


def read_rows(path: str) -> list[dict]:
    """(text, label) rows of a Banking77 CSV (columns text,category)."""
    with open(path, newline="") as f:
        return [{"text": r["text"], "label": r["category"]} for r in csv.DictReader(f)]


def macro_f1(predicted: list[str], labels: list[str]) -> float:
    """Macro-F1 over the true intents of the scored rows (a prediction outside them is a miss)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predicted, labels=sorted(set(labels)), average="macro", zero_division=0))


# --------------------------------------------------------------------------- auto


def run_auto_arm(args, budget: str, seconds: float, out: Path) -> dict:
    """`tunesmith auto` as a user runs it, timed from launch to exit."""
    run_dir = out / "auto"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(out / "service", ignore_errors=True)
    command = [sys.executable, "-m", "tunesmith.cli", "auto", args.train, "--test", args.test, "--budget", budget,
               "--output", str(run_dir), "--data-dir", str(out / "service")]  # registered away from ~/.tunesmith
    if args.model:
        command += ["--model", args.model]
    log = out / "auto.log"
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy(), check=False).returncode
    wall = time.perf_counter() - start
    if code != 0:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"tunesmith auto exited {code} after {wall:.0f} s ({log}):\n{tail}")
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    tuned = results["metrics"]["tuned"]
    summary = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    reasons = _config(run_dir).get("reasons", {})
    return {
        "arm": "auto",
        "budget_seconds": seconds,
        "wall_seconds": round(wall, 1),
        "wall_over_budget": round(wall / seconds, 3),
        "steps": summary.get("global_step"),
        "test_accuracy": tuned.get("accuracy"),
        "test_macro_f1": tuned.get("macro_f1"),
        "test_rows": results["test"]["rows"],
        "test_source": results["test"]["source"],
        "eval_seconds": results.get("seconds"),
        "plan": reasons.get("auto.budget"),
    }


def _config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


# --------------------------------------------------------------------------- plain


def run_plain_arm(args, seconds: float, out: Path) -> dict:
    """The hand-written loop (see the module docstring), held to `seconds` wall time."""
    start = time.perf_counter()
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.models import resolve_model

    torch.manual_seed(0)
    train, test = read_rows(args.train), read_rows(args.test)
    labels = sorted({r["label"] for r in train})
    label2id = {label: i for i, label in enumerate(labels)}
    path = resolve_model(args.model or "smollm2-135m")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=LORA_R, lora_alpha=LORA_ALPHA,
                                             lora_dropout=LORA_DROPOUT, target_modules="all-linear",
                                             modules_to_save=["score"]))
    model.to(device)

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def encode(texts: list[str]):
        return tokenizer(texts, truncation=True, max_length=args.max_length, padding=True, return_tensors="pt").to(device)

    def logits(texts: list[str]):
        with torch.inference_mode(), autocast():
            return model(**encode(texts)).logits.float()

    # The time kept for predicting the test set, measured on one batch before training.
    model.eval()
    timed = time.perf_counter()
    logits([r["text"] for r in test[:EVAL_BATCH_SIZE]])
    reserve = (time.perf_counter() - timed) * len(test) / min(EVAL_BATCH_SIZE, len(test)) * EVAL_MARGIN
    train_until = start + seconds - reserve
    model.train()

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    plan = {"total": None}  # planned steps, set from the first steps' time

    def schedule(step: int) -> float:
        total = plan["total"] or 1  # before any plan only step 0 runs, at rate 0 (as in transformers' schedule)
        warmup = max(1, round(WARMUP_RATIO * total))
        if step < warmup:
            return step / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = random.Random(0)
    batches: list[list[dict]] = []
    steps, losses, training_start = 0, [], time.perf_counter()
    step_start = training_start
    while True:
        if not batches:  # a new epoch of shuffled rows
            rows = train[:]
            order.shuffle(rows)
            batches = [rows[i : i + BATCH_SIZE] for i in range(0, len(rows), BATCH_SIZE)]
        batch = batches.pop(0)
        enc = encode([r["text"] for r in batch])
        target = torch.tensor([label2id[r["label"]] for r in batch], device=device)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(**enc).logits.float(), target)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        losses.append(float(loss))
        now = time.perf_counter()
        if steps in (1, TIMED_STEPS):  # a first plan from the (slow) first step, the plan from the first three
            per_step = (now - training_start) / steps
            plan["total"] = max(steps + 1, steps + math.floor((train_until - now) / per_step))
            for group in optimizer.param_groups:  # the next step's rate, under the plan
                group["lr"] = LEARNING_RATE * schedule(steps)
        last_step = now - step_start
        step_start = now
        if (plan["total"] and steps >= plan["total"]) or now + last_step > train_until:
            break
    train_s = time.perf_counter() - training_start

    model.eval()
    evaluating = time.perf_counter()
    texts = [r["text"] for r in test]
    by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    predicted: list[str] = [""] * len(texts)
    for i in range(0, len(by_length), EVAL_BATCH_SIZE):
        chunk = by_length[i : i + EVAL_BATCH_SIZE]
        for j, k in zip(chunk, logits([texts[j] for j in chunk]).argmax(-1).tolist()):
            predicted[j] = labels[k]
    eval_s = time.perf_counter() - evaluating
    wall = time.perf_counter() - start
    truth = [r["label"] for r in test]
    (out / "plain").mkdir(parents=True, exist_ok=True)
    with (out / "plain" / "test_predictions.jsonl").open("w") as f:
        for r, p in zip(test, predicted):
            f.write(json.dumps({"text": r["text"], "label": r["label"], "predicted": p}, ensure_ascii=False) + "\n")
    return {
        "arm": "plain",
        "budget_seconds": seconds,
        "wall_seconds": round(wall, 1),
        "wall_over_budget": round(wall / seconds, 3),
        "steps": steps,
        "planned_steps": plan["total"],
        "train_seconds": round(train_s, 1),
        "eval_reserve_seconds": round(reserve, 1),
        "eval_seconds": round(eval_s, 1),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "test_accuracy": sum(p == y for p, y in zip(predicted, truth)) / len(truth),
        "test_macro_f1": macro_f1(predicted, truth),
        "test_rows": len(truth),
        "test_source": args.test,
        "device": device,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    import torch

    from tunesmith.runtime import quiet_libraries as _quiet_libraries
    from tunesmith.workflows.auto import parse_budget

    _quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain_budget = args.plain_budget or args.budget
    budgets = {"auto": (args.budget, parse_budget(args.budget)), "plain": (plain_budget, parse_budget(plain_budget))}
    results = []
    for arm in args.arms.split(","):
        if arm not in budgets:
            raise SystemExit(f"--arms: {arm} is not one of auto, plain")
        text, seconds = budgets[arm]
        print(f"--- {arm} (budget {text})", flush=True)
        result = run_auto_arm(args, text, seconds, out) if arm == "auto" else run_plain_arm(args, seconds, out)
        print(json.dumps(result), flush=True)
        results.append(result)

    print(f"\nBanking77-style data ({Path(args.train).name} -> {Path(args.test).name}), "
          f"{args.model or 'SmolLM2-135M'}, {torch.get_num_threads()} CPU threads")
    print(f"{'arm':<7}{'budget s':>9}{'wall s':>8}{'wall/budget':>12}{'steps':>7}{'accuracy':>10}{'macro-F1':>10}"
          f"{'rows':>6}")
    for r in results:
        print(f"{r['arm']:<7}{r['budget_seconds']:>9.0f}{r['wall_seconds']:>8.0f}{r['wall_over_budget']:>12.3f}"
              f"{r['steps'] if r['steps'] is not None else '-':>7}{r['test_accuracy']:>10.1%}"
              f"{r['test_macro_f1']:>10.3f}{r['test_rows']:>6}")
    by_arm = {r["arm"]: r for r in results}
    ratios: dict = {}
    if "auto" in by_arm:
        a = by_arm["auto"]
        ratios["auto_wall_over_budget"] = a["wall_over_budget"]
        ratios["auto_within_10_percent"] = a["wall_over_budget"] <= 1.10
        print(f"auto wall / budget: {a['wall_over_budget']:.3f} "
              f"({'within 10%' if ratios['auto_within_10_percent'] else 'OVER by more than 10%'})")
    if "auto" in by_arm and "plain" in by_arm:
        a, p = by_arm["auto"], by_arm["plain"]
        ratio = a["test_accuracy"] / p["test_accuracy"] if p["test_accuracy"] else float("inf")
        ratios["auto_accuracy_over_plain"] = round(ratio, 3) if math.isfinite(ratio) else None
        same_rows = a["test_rows"] == p["test_rows"]
        ratios["same_test_rows"] = same_rows
        print(f"auto accuracy / plain accuracy: {ratio:.3f} ({a['test_accuracy']:.1%} vs {p['test_accuracy']:.1%}"
              + ("" if same_rows else f"; auto scored {a['test_rows']} of the {p['test_rows']} rows") + ")")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(
        {"budget": args.budget, "plain_budget": plain_budget, "model": args.model or "smollm2-135m",
         "train": args.train, "test": args.test, "threads": torch.get_num_threads(), "arms": results,
         "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
