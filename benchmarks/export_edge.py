"""Benchmark: the bundled sample's chat model in every export format on this CPU, against PyTorch float32
in the same run. Measured, not assumed.

Run from the repository root, in the project's virtualenv:

    python benchmarks/export_edge.py --run runs/chat-run          # a finished chat run of the bundled sample
    python benchmarks/export_edge.py --steps 150                 # trains the bundled sample as chat itself first
    python benchmarks/export_edge.py --model PATH --steps 1 --rows 2 --formats hf,gguf:q8_0   # a smoke test (CI)

For each format `tunesmith export` writes the file and verifies it: the run's test rows (the
Banking77 test sample: query in, intent out) are answered greedily, one at a time as a local
runtime serves them, by the PyTorch model and by the exported file in its runtime. Reported
per file and runtime: size, load seconds, tokens/s (single stream), test accuracy (exact
intent), agreement with PyTorch's answers and the speed ratio against PyTorch float32.
GGUF runs in transformers' GGUF loader (it dequantises: a check of the file, not a speed) and,
where llama-cpp-python is installed, in llama.cpp itself; ONNX in onnxruntime. Ollama serves
the same GGUF file through llama.cpp, so it is not measured twice.

Writes `benchmarks/results/export_edge.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tunesmith.export.build import export_run
from tunesmith.runs import RunDir
from tunesmith.train.stages import train_run
from tunesmith.workflows.quickstart import chat_config

DEFAULT_FORMATS = "hf,gguf:f16,gguf:q8_0,gguf:q4_0,onnx"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a finished chat run to export (default: train the bundled sample as chat first)")
    p.add_argument("--model", default="smollm2-135m", help="base model when training (name or local folder)")
    p.add_argument("--steps", type=int, default=150, help="training steps when no --run is given")
    p.add_argument("--rows", type=int, default=48, help="test rows each export answers")
    p.add_argument("--formats", default=DEFAULT_FORMATS, help="comma-separated FORMAT[:TYPE] list")
    p.add_argument("--out", default="benchmarks/out/export_edge")
    p.add_argument("--results", default="benchmarks/results/export_edge.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    run = Path(args.run) if args.run else out / "run"
    if not RunDir(run).exists or not RunDir(run).final.summary_file.exists():
        start = time.perf_counter()
        train_run(chat_config(args.model, args.steps), run)
        print(f"trained {run} in {time.perf_counter() - start:.0f} s")
    rows, reports = [], {}
    for spec in args.formats.split(","):
        fmt, _, quant = spec.partition(":")
        start = time.perf_counter()
        report = export_run(run, fmt, out / f"{fmt}-{quant or 'default'}", quant or None, limit=args.rows)
        reports[spec] = report
        print(f"{spec}: exported and verified in {time.perf_counter() - start:.0f} s")
        for check in report["checks"]:
            if check["runtime"] == "pytorch" and any(r["runtime"] == "pytorch" for r in rows):
                continue  # one PyTorch row: every format answers the same rows with the same model
            rows.append({"format": "pytorch" if check["runtime"] == "pytorch" else fmt, **check})
    baseline = next(r for r in rows if r["runtime"] == "pytorch")
    for r in rows:
        r["speed_vs_pytorch"] = round(r["speed"] / baseline["speed"], 2) if r["speed"] and baseline["speed"] else None
    print_table(rows)
    result = {"run": str(run), "rows": args.rows, "cpu_threads": os.cpu_count(), "table": rows, "reports": reports}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.results}")


def print_table(rows: list[dict]) -> None:
    header = ("format", "runtime", "type", "size MB", "load s", "tokens/s", "x PyTorch", "accuracy", "agreement")
    print(" | ".join(header))
    for r in rows:
        cells = (r["format"], r["runtime"], r["type"], _num(r["size_mb"]), _num(r["load_s"]), _num(r["speed"]),
                 _num(r["speed_vs_pytorch"]), _pct(r["metric"]), _pct(r["agreement"]))
        print(" | ".join(cells))


def _num(value) -> str:
    return "-" if value is None else f"{value:g}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
