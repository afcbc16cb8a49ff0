"""Benchmark: human-feedback alignment of the bundled SmolLM2-135M on Anthropic's HH-RLHF
(harmless split, ../shared/data/hh-rlhf-harmless, 2,312 pairs). Measured, not assumed.

Run from the repository root, in the project's virtualenv:

    python benchmarks/align_hh_rlhf.py                     # about an hour on a 2-core CPU
    python benchmarks/align_hh_rlhf.py --steps 10 --prompts 20   # a quick check
    python benchmarks/align_hh_rlhf.py --model PATH --data PAIRS.jsonl --steps 1 --test-pairs 4 \
        --validation-pairs 4 --prompts 2 --max-length 64 --max-new-tokens 4   # a smoke test (CI)

Steps, each with tunesmith's own functions, as a user would run them:

 1. The data gate refuses the file (3 pairs with chosen = rejected, 4 with an empty side);
    `fix_data` (= `tunesmith data check --fix`) writes the cleaned pairs.
 2. tunesmith's seeded split holds out `--test-pairs` pairs (default 200) that no stage sees;
    each stage holds out `--validation-pairs` (100) more for early stopping.
 3. Reward model: `tunesmith train --method reward` (LoRA r=16 + a scalar head, automatic
    settings but `--max-length` 256, `--steps` optimizer steps of 8 pairs); its pairwise accuracy on the held-out
    pairs (`tunesmith score`): how often it scores the human-chosen answer higher.
 4. DPO: `tunesmith train --method dpo` (LoRA, sigmoid loss, beta 0.1, same step budget) from
    the bundled model.
 5. Win rate: base and DPO model answer `--prompts` held-out prompts greedily; the reward
    model from step 3 scores both answers; a win is a higher score for the tuned answer, a
    tie an identical answer.

Writes everything to `benchmarks/results/align_hh_rlhf.json` (runs under `--out`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "test.jsonl.gz"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="base model of every stage (name or local folder)")
    p.add_argument("--data", default=str(HH), help="preference pairs (HH-RLHF transcripts or any format tunesmith reads)")
    p.add_argument("--steps", type=int, default=80, help="optimizer steps of the reward model and of DPO")
    p.add_argument("--max-length", type=int, default=256, help="tokens per prompt+answer (earliest turns dropped)")
    p.add_argument("--test-pairs", type=int, default=200, help="pairs held out from every stage")
    p.add_argument("--prompts", type=int, default=120, help="held-out prompts answered by base and tuned model")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--validation-pairs", type=int, default=100, help="pairs each stage holds out for early stopping")
    p.add_argument("--reuse", action="store_true", help="keep finished stages under --out (resume a cut-off benchmark)")
    p.add_argument("--out", default="benchmarks/out/align_hh_rlhf")
    p.add_argument("--results", default="benchmarks/results/align_hh_rlhf.json")
    return p.parse_args()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def train_stage(stage: str, out: Path, n_train: int, args):
    """Train one stage on the training pairs (or reuse a finished one); its summary."""
    from tunesmith.config import RunConfig
    from tunesmith.runs import RunDir
    from tunesmith.workflows.train_eval import train

    run = out / stage
    if args.reuse and RunDir(run).summary_file.exists():
        return RunDir(run).summary()
    shutil.rmtree(run, ignore_errors=True)
    config = RunConfig.model_validate({
        "model": {"name": args.model},
        "data": {"train": str(out / "train.jsonl"), "test_split": 0.0, "validation_split": args.validation_pairs / n_train},
        "method": {"stages": [stage]},
        "train": {"max_steps": args.steps, "max_length": args.max_length},
    })
    return train(config, run)


def main() -> None:
    args = parse_args()
    from tunesmith.config import load_config
    from tunesmith.data.formats import load_data
    from tunesmith.data.quality import check_data, fix_data
    from tunesmith.data.splits import split_validation
    from tunesmith.inference.generate import generate, load_for_inference
    from tunesmith.inference.reward import load_reward_model, score_file
    from tunesmith.models import BUILTIN_MODELS, ensure_builtin

    out = REPO / args.out
    if not args.reuse:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.model in BUILTIN_MODELS:
        ensure_builtin(args.model)  # the GGUF is converted once, outside the timings
    data = Path(args.data).resolve()
    results: dict = {"data": str(data.relative_to(REPO.parent) if data.is_relative_to(REPO.parent) else data),
                     "args": vars(args)}

    # 1-2. Gate, fix, split.
    card = check_data(str(data), None)
    results["gate_errors"] = [f.message for f in card.errors()]
    fixed = fix_data(str(data), out / "clean.jsonl")
    pairs = load_data(out / "clean.jsonl").records
    train_pairs, test_pairs = split_validation(pairs, args.test_pairs / len(pairs), seed=7)
    write_jsonl(out / "train.jsonl", train_pairs)
    write_jsonl(out / "test.jsonl", test_pairs)
    results |= {"pairs_in": fixed.rows_in, "pairs_dropped": fixed.dropped, "pairs_redacted": fixed.redacted,
                "train_pairs": len(train_pairs), "test_pairs": len(test_pairs)}
    print(f"{len(pairs)} clean pairs: {len(train_pairs)} train, {len(test_pairs)} held out", flush=True)

    # 3. Reward model.
    rm_summary = train_stage("reward", out, len(train_pairs), args)
    rm = load_reward_model(out / "reward")
    _, scored = score_file(rm, str(out / "test.jsonl"))
    results["reward_model"] = {
        "steps": rm_summary.global_step,
        "train_s": round(rm_summary.train_runtime_s),  # the trainer's own clock
        "validation_pairwise_accuracy": rm_summary.pairwise_accuracy,
        "test_pairwise_accuracy": scored["pairwise_accuracy"],
        "test_mean_margin": scored["mean_margin"],
    }
    print("reward model:", results["reward_model"], flush=True)

    # 4. DPO.
    dpo_summary = train_stage("dpo", out, len(train_pairs), args)
    results["dpo"] = {
        "steps": dpo_summary.global_step,
        "train_s": round(dpo_summary.train_runtime_s),
        "learning_rate": load_config(out / "dpo" / "config.yaml").train.learning_rate,
        "validation_reward_accuracy": dpo_summary.reward_accuracy,
        "validation_reward_margin": dpo_summary.reward_margin,
    }
    print("dpo:", results["dpo"], flush=True)

    # 5. Win rate of tuned over base on held-out prompts, judged by the reward model.
    prompts = [p["prompt"] for p in test_pairs[: args.prompts]]
    answers = {}
    start = time.perf_counter()
    for name, base in (("base", True), ("dpo", False)):
        loaded = load_for_inference(str(out / "dpo"), base=base)
        answers[name] = generate(loaded, prompts, max_new_tokens=args.max_new_tokens, batch_size=16)
        del loaded
    scores = {
        name: rm.score([p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers[name])])
        for name in answers
    }
    wins = ties = 0
    for a_base, a_dpo, s_base, s_dpo in zip(answers["base"], answers["dpo"], scores["base"], scores["dpo"]):
        if a_base == a_dpo:
            ties += 1
        elif s_dpo > s_base:
            wins += 1
    n = len(prompts)
    results["win_rate"] = {
        "prompts": n,
        "wins": wins,
        "ties": ties,
        "losses": n - wins - ties,
        "win_rate": wins / n,
        "win_rate_excluding_ties": wins / max(1, n - ties),
        "mean_reward_base": sum(scores["base"]) / n,
        "mean_reward_dpo": sum(scores["dpo"]) / n,
        "generate_and_score_s": round(time.perf_counter() - start),
    }
    write_jsonl(out / "answers.jsonl", [
        {"prompt": p[-1]["content"], "base": b, "dpo": d, "base_score": sb, "dpo_score": sd}
        for p, b, d, sb, sd in zip(prompts, answers["base"], answers["dpo"], scores["base"], scores["dpo"])
    ])
    print("win rate:", results["win_rate"], flush=True)
    path = REPO / args.results
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
