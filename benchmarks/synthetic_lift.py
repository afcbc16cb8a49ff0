"""Benchmark: does synthetic data help in a low-data setting? Banking77, measured.

Run from the repository root, in the project's virtualenv:

    python benchmarks/synthetic_lift.py                          # 5 seed rows per intent, 5 synthetic
    python benchmarks/synthetic_lift.py --test-rows 300 --steps 10   # a quick check that it works
    python benchmarks/synthetic_lift.py --model PATH --teacher PATH --train SMALL.csv --test TEST.csv \
        --per-intent 2 --synth-per-intent 1 --steps 1 --test-rows 4   # a smoke test (CI)

Steps, all in this one process:

 1. seed: `--per-intent` labelled rows per intent sampled from Banking77's train split.
 2. synthetic: `tunesmith data synth` (label-conditioned, with every filter on) grows the
    seed by `--synth-per-intent` rows per intent with the teacher (`--teacher`, default the
    bundled SmolLM2-135M). The filter report is printed and kept.
 3. augmented (unless --no-augment): rule-based variants of the seed (typo, case, punct,
    dropout, swap) for comparison, one per method per row, a no-teacher baseline.
 4. Each training set fine-tunes the bundled model with LoRA as the quickstart does (query in,
    intent out), with the same step budget (`--steps`), the same settings and no validation
    split (every seed row trains in every arm). `--equal-epochs` adds a seed+synthetic arm
    with more steps, as many passes over its rows as the seed arm makes over the seed, and
    its control: the seed alone with that same larger number of steps.
 5. Each tuned model answers the whole Banking77 test split (3,080 queries) greedily; the
    score is exact-match accuracy of the intent name.
 6. To explain the result, a referee (logistic regression on MiniLM embeddings of all real
    training rows) checks the labels of the kept synthetic rows, of the rows the label check
    dropped, and of the real test rows for comparison.

It prints accuracy per arm and the lift over seed only, and writes everything (rows, filter
report, answers, results.json) under `--out`. Steps 2-5 skip work already done in `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "banking77"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-intent", type=int, default=5, help="seed rows per intent")
    p.add_argument("--synth-per-intent", type=int, default=5, help="synthetic rows kept per intent")
    p.add_argument("--model", default="smollm2-135m", help="the model every arm fine-tunes (name or local folder)")
    p.add_argument("--train", default=str(SHARED / "train.csv"),
                   help="Banking77-style CSV (text,category): the seed is drawn from it and the referee trained on it")
    p.add_argument("--test", default=str(SHARED / "test.csv"), help="Banking77-style CSV the arms are scored on")
    p.add_argument("--teacher", default="smollm2-135m", help="local teacher model")
    p.add_argument("--teacher-url", default=None, help="OpenAI-compatible endpoint instead of a local teacher")
    p.add_argument("--teacher-model", default=None)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps for every arm (~16 rows each)")
    p.add_argument("--test-rows", type=int, default=0, help="test queries to score (0: the whole split)")
    p.add_argument("--no-augment", action="store_true", help="skip the rule-based augmentation arm")
    p.add_argument("--equal-epochs", action="store_true",
                   help="add an arm: seed+synthetic with steps scaled up so it makes as many passes as the seed arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/synthetic_lift")
    return p.parse_args()


def read_banking(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{"text": r["text"], "label": r["category"]} for r in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n")


def accuracy(run: str, prompts, labels) -> tuple[float, list[str]]:
    """Exact-match accuracy of the run's greedy answers (intent names are a few tokens, so 24
    new tokens are plenty)."""
    from tunesmith.evaluate.metrics import exact_match
    from tunesmith.inference.generate import generate, load_for_inference

    answers = generate(load_for_inference(run), prompts, max_new_tokens=24, batch_size=32)
    return exact_match(answers, labels), answers


def train_and_test(name: str, train_file: Path, out: Path, steps: int, prompts, labels, seed: int,
                   model: str = "smollm2-135m") -> dict:
    from tunesmith.config import RunConfig
    from tunesmith.data.load import write_jsonl
    from tunesmith.train.sft import train_sft
    from tunesmith.workflows.quickstart import SYSTEM_PROMPT

    run_dir = out / f"run-{name}"
    result_file = run_dir / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    config = RunConfig.model_validate({
        "model": {"name": model},
        "data": {"train": str(train_file), "system_prompt": SYSTEM_PROMPT, "validation_split": 0.0, "test_split": 0.0},
        "train": {"max_steps": steps, "epochs": 100, "seed": seed},
    })
    start = time.perf_counter()
    summary = train_sft(config, run_dir)
    train_s = time.perf_counter() - start
    acc, answers = accuracy(str(run_dir), prompts, labels)
    write_jsonl(run_dir / "test_answers.jsonl",
                [{"text": p[-1]["content"], "label": y, "answer": a} for p, y, a in zip(prompts, labels, answers)])
    result = {"arm": name, "train_rows": summary.train_rows, "steps": summary.global_step,
              "train_loss": summary.train_loss, "train_seconds": round(train_s), "accuracy": acc}
    result_file.write_text(json.dumps(result, indent=2))
    print(f"  {name}: accuracy {acc:.1%} ({summary.train_rows} rows, {train_s:.0f} s training)", flush=True)
    return result


def label_noise(train: list[dict], test: list[dict], synth_rows: list[dict], dropped_rows: list[dict]) -> dict:
    """How often a stronger referee, a logistic regression on MiniLM embeddings of all 10,003
    real training rows, agrees with the label a synthetic row was written for. Its accuracy
    on the real test split is the yardstick: real rows score about that much."""
    from sklearn.linear_model import LogisticRegression

    from tunesmith.data.labels import embed

    referee = LogisticRegression(max_iter=1000).fit(embed([r["text"] for r in train]), [r["label"] for r in train])

    def agreement(rows: list[dict]) -> float | None:
        if not rows:
            return None
        predicted = referee.predict(embed([r["text"] for r in rows]))
        return round(float(sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)), 4)

    label_dropped = [r for r in dropped_rows if r["reason"].startswith("label check") and r.get("label")]
    return {"real_test_rows": agreement(test), "kept_synthetic_rows": agreement(synth_rows),
            "rows_dropped_by_the_label_check": agreement(label_dropped)}


def main() -> None:
    args = parse_args()
    import torch

    from tunesmith.data.augment import augment, parse_methods
    from tunesmith.data.synth import SynthOptions, synthesize
    from tunesmith.inference.teacher import make_teacher
    from tunesmith.runtime import quiet_libraries as _quiet_libraries

    _quiet_libraries()
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = read_banking(Path(args.train))
    test = read_banking(Path(args.test))
    rng = random.Random(args.seed)
    if args.test_rows:
        test = rng.sample(test, args.test_rows)
    by_label = defaultdict(list)
    for r in train:
        by_label[r["label"]].append(r)
    seed_rows = [r for label in sorted(by_label) for r in rng.sample(by_label[label], args.per_intent)]
    seed_file = out / "seed.jsonl"
    write_rows(seed_file, seed_rows)
    print(f"seed: {len(seed_rows)} rows ({args.per_intent} per intent x {len(by_label)} intents)", flush=True)

    teacher = make_teacher(args.teacher if not args.teacher_url else None, args.teacher_url, args.teacher_model)
    synth_file = out / "synthetic.jsonl"
    start = time.perf_counter()
    report = synthesize(synth_file, teacher, SynthOptions(n=args.synth_per_intent * len(by_label), seed=args.seed),
                        seed_path=seed_file,
                        on_progress=lambda r: print(f"  synth: kept {r.kept}, dropped {sum(r.dropped.values())}", flush=True))
    synth_s = time.perf_counter() - start
    print("filter report:", json.dumps(report.to_dict(), indent=2), flush=True)
    synth_rows = [json.loads(line) for line in synth_file.read_text().splitlines()]
    arms = {"seed": seed_file}
    write_rows(out / "seed+synthetic.jsonl", seed_rows + synth_rows)
    arms["seed+synthetic"] = out / "seed+synthetic.jsonl"
    if not args.no_augment:
        augmented, _ = augment(seed_rows, "classify", parse_methods("typo,case,punct,dropout,swap"), seed=args.seed)
        write_rows(out / "seed+augmented.jsonl", augmented)
        arms["seed+augmented"] = out / "seed+augmented.jsonl"

    prompts = [[{"role": "user", "content": r["text"]}] for r in test]
    labels = [r["label"] for r in test]
    steps = dict.fromkeys(arms, args.steps)
    if args.equal_epochs:
        arms["seed+synthetic, equal epochs"] = arms["seed+synthetic"]
        steps["seed+synthetic, equal epochs"] = round(args.steps * (len(seed_rows) + len(synth_rows)) / len(seed_rows))
        # The control: the seed alone with that many steps, so more compute is not mistaken for better data.
        arms["seed, same longer budget"] = seed_file
        steps["seed, same longer budget"] = steps["seed+synthetic, equal epochs"]
    results = {name: train_and_test(name.replace(", ", "-").replace(" ", "-"), path, out, steps[name], prompts, labels, args.seed,
                                    args.model)
               for name, path in arms.items()}
    base = results["seed"]["accuracy"]
    dropped_rows = [json.loads(line) for line in (out / "synthetic.dropped.jsonl").read_text().splitlines()]
    noise = label_noise(train, test, synth_rows, dropped_rows)
    print(f"referee (LR on all real train rows) agrees with the label of: {json.dumps(noise)}", flush=True)
    summary = {
        "teacher": teacher.name, "seed_rows": len(seed_rows), "synthetic_rows": len(synth_rows),
        # Near 0 when OUT already held every row from an earlier run.
        "synthesis_seconds_this_run": round(synth_s), "test_rows": len(test), "steps": args.steps,
        "filter_report": report.to_dict(), "referee_label_agreement": noise, "arms": results,
        "lift_synthetic": results["seed+synthetic"]["accuracy"] - base,
        **({"lift_augmented": results["seed+augmented"]["accuracy"] - base} if "seed+augmented" in results else {}),
        **({"lift_synthetic_equal_epochs_over_seed_same_steps": results["seed+synthetic, equal epochs"]["accuracy"]
            - results["seed, same longer budget"]["accuracy"]} if args.equal_epochs else {}),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    # Lift is measured against the seed alone trained for the same number of steps.
    seed_at = {r["steps"]: r["accuracy"] for name, r in results.items() if name.startswith("seed,") or name == "seed"}
    print(f"\n{'arm':<30} {'rows':>6} {'steps':>6} {'accuracy':>9} {'lift':>7}")
    for name, r in results.items():
        print(f"{name:<30} {r['train_rows']:>6} {r['steps']:>6} {r['accuracy']:>9.1%} "
              f"{r['accuracy'] - seed_at.get(r['steps'], base):>+7.1%}")
    print(f"teacher {teacher.name}; {len(test)} test queries; results in {out}/results.json")


if __name__ == "__main__":
    main()
