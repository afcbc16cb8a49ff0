"""Benchmark: one training process against `--num-processes N` (DDP) on the same machine.

Run from the repository root, in the project's virtualenv:

    python benchmarks/ddp_scaling.py                       # 2 processes, 24 steps
    python benchmarks/ddp_scaling.py --processes 4 --steps 40 --json benchmarks/results/ddp_scaling.json
    python benchmarks/ddp_scaling.py --model PATH --data SMALL.csv --steps 2   # a smoke test (CI)

Both runs are `tunesmith train` of the bundled SmolLM2-135M (LoRA, chat SFT) on the bundled
Banking77 sample, every setting automatic, for `--steps` optimizer steps, without the
evaluation. The resolver gives each of the N processes 1/N of the gradient accumulation, so
both runs see the same number of examples per optimizer update and should trace the same
loss curve. Printed: the trainer's own training time of each run (model loading excluded),
seconds per step, the speed-up, and the training loss over the last 5 steps.

On a CPU, N processes share the cores (each gets cores/N threads), so the speed-up shows
what data parallelism gains over threads inside one process; on N GPUs it is the usual
DDP scaling. Timings on a shared CPU are indicative only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).parents[1] / "src" / "tunesmith" / "samples" / "banking77_train.csv"


def run(processes: int, steps: int, out: Path, data: Path = SAMPLE, model: str | None = None) -> dict:
    command = [sys.executable, "-m", "tunesmith.cli", "train", "--data", str(data), "--method", "sft",
               "--max-steps", str(steps), "--no-eval", "--output", str(out), "--num-processes", str(processes),
               *(["--model", model] if model else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((out / "run.json").read_text())
    losses = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in json.loads(line)]
    config = (out / "config.yaml").read_text()
    accumulation = next(line.split(":")[1].strip() for line in config.splitlines() if "gradient_accumulation:" in line)
    return {"processes": processes, "train_s": summary["train_runtime_s"], "wall_s": round(wall, 1),
            "s_per_step": summary["train_runtime_s"] / steps, "last_losses": losses[-5:],
            "gradient_accumulation_per_process": int(accumulation)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--model", default=None, help="base model, a name or local folder (default: the bundled SmolLM2-135M)")
    parser.add_argument("--data", type=Path, default=SAMPLE, help="training file (default: the bundled Banking77 sample)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args.steps, Path(tmp) / "one", args.data, args.model)
        many = run(args.processes, args.steps, Path(tmp) / "many", args.data, args.model)
    speedup = one["s_per_step"] / many["s_per_step"]
    for r in (one, many):
        loss = sum(r["last_losses"]) / len(r["last_losses"])
        print(f"{r['processes']} process(es): {r['s_per_step']:.2f} s/step (training {r['train_s']:.0f} s, wall "
              f"{r['wall_s']:.0f} s), accumulation {r['gradient_accumulation_per_process']} per process, "
              f"loss over the last 5 steps {loss:.3f}")
    print(f"speed-up of {args.processes} processes over 1: {speedup:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "one": one, "many": many, "speedup": round(speedup, 3)},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
