"""Benchmark: every adaptation method tunesmith offers, side by side on Banking77 with the
bundled SmolLM2-135M and the same step budget.

Run from the repository root, in the project's virtualenv:

    python benchmarks/peft_methods.py                       # 11 methods, 30 steps of 32 queries
    python benchmarks/peft_methods.py --methods lora,ia3 --steps 5   # a quick check
    python benchmarks/peft_methods.py --model PATH --data SMALL.csv --methods lora,ia3 --steps 2 \
        --train-rows 32 --validation-rows 8   # a smoke test (CI: the tiny model, 4 intents x 10 rows)

Each method trains the classification formulation (`--task classify`: a head on the
decoder; the adapter plus the head are trained, or every weight for `full`) with
tunesmith's automatic settings for that method (learning rate included), on the same 2,000
training rows, for `--steps` optimizer steps of 32 queries. It is then scored on the same
500 validation rows (drawn from the rest of Banking77's train split). Prints trainable
parameters, training training tokens/s (median over steps) and validation accuracy per method, and writes them to
`benchmarks/results/peft_methods.json` (runs under `--out`).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "banking77"
METHODS = "lora,rslora,dora,pissa,olora,loha,lokr,ia3,prompt,prefix,full"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--model", default=None, help="base model: a tunesmith model name or local folder "
                   "(default: the bundled SmolLM2-135M)")
    p.add_argument("--data", default=str(SHARED / "train.csv"),
                   help="Banking77-style CSV (text,category) the train and validation rows are drawn from")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--validation-rows", type=int, default=500)
    p.add_argument("--out", default="benchmarks/out/peft_methods")
    p.add_argument("--results", default="benchmarks/results/peft_methods.json")
    return p.parse_args()


def write_split(data: str, out: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    """Seeded disjoint train/validation samples of Banking77's train split."""
    with open(data, newline="") as f:
        rows = list(csv.DictReader(f))
    random.Random(0).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train.csv", rows[:n_train]), ("validation.csv", rows[n_train : n_train + n_val])):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(part)
        paths.append(out / name)
    return paths[0], paths[1]


def training_speed(run_dir: Path) -> float:
    """Median tokens/s over the training steps (step 1 warms up; evaluation and checkpoint
    time are not training time)."""
    import statistics

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return round(statistics.median(r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > 1), 1)


def main() -> None:
    args = parse_args()
    import torch
    import yaml

    from tunesmith.config import RunConfig
    from tunesmith.runtime import quiet_libraries as _quiet_libraries
    from tunesmith.workflows.train_eval import train

    _quiet_libraries()
    out = Path(args.out)
    train_file, val_file = write_split(args.data, out, args.train_rows, args.validation_rows)
    results = []
    for method in args.methods.split(","):
        run_dir = out / method
        shutil.rmtree(run_dir, ignore_errors=True)
        config = RunConfig.model_validate(
            {
                **({"model": {"name": args.model}} if args.model else {}),
                "data": {"train": str(train_file), "validation": str(val_file), "test_split": 0.0, "force": True},
                "method": {"stages": ["classify"], "adapter": method},
                # One evaluation, at the end: the budget goes to training.
                "train": {"batch_size": 32, "max_steps": args.steps, "eval_steps": args.steps},
            }
        )
        print(f"--- {method}", flush=True)
        s = train(config, run_dir)
        lr = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["learning_rate"]
        result = {
            "method": method,
            "trainable_params": s.trainable_params,
            "trainable_share": s.trainable_params / s.total_params,
            "learning_rate": lr,
            "tokens_per_s": training_speed(run_dir),
            "train_seconds": round(s.train_runtime_s, 1),
            "validation_accuracy": s.eval_accuracy,
            "validation_macro_f1": s.eval_macro_f1,
        }
        print(json.dumps(result), flush=True)
        results.append(result)

    print(f"\nBanking77 classification, {args.model or 'SmolLM2-135M'}, {args.steps} steps x 32 queries from {args.train_rows} rows, "
          f"{args.validation_rows} validation rows, {torch.get_num_threads()} CPU threads")
    print(f"{'method':<8}{'trainable':>13}{'share':>8}{'lr':>9}{'tokens/s':>10}{'train s':>9}{'accuracy':>10}{'macro-F1':>10}")
    for r in results:
        print(f"{r['method']:<8}{r['trainable_params']:>13,}{r['trainable_share']:>8.2%}{r['learning_rate']:>9.0e}"
              f"{r['tokens_per_s']:>10.0f}{r['train_seconds']:>9.0f}{r['validation_accuracy']:>10.1%}{r['validation_macro_f1']:>10.3f}")
    # Methods measured before (with the same settings) stay in the file; ones run now replace theirs.
    path = Path(args.results)
    settings = {"steps": args.steps, "batch": 32, "train_rows": args.train_rows, "validation_rows": args.validation_rows,
                "threads": torch.get_num_threads()}
    previous = json.loads(path.read_text()) if path.exists() else {}
    same = all(previous.get(k) == v for k, v in settings.items())
    kept = previous.get("methods", []) if same else []
    merged = {r["method"]: r for r in kept + results}
    order = METHODS.split(",")
    methods = sorted(merged.values(), key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**settings, "methods": methods}, indent=2) + "\n")


if __name__ == "__main__":
    main()
