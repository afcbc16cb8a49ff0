"""Every benchmark script keeps working: their figures are quoted in the README and
BENCHMARKS.md, so a script that no longer loads, or no longer runs, is a broken claim.

Three levels, cheapest first:
- each script imports (its measurement runs only under `__main__`), and every tunesmith name
  it imports, inside its functions too, still exists;
- each answers `--help` in a fresh interpreter;
- each runs end to end in a smoke-test variant: one or two training steps, a handful of rows,
  the tests' tiny random Llama where the script trains or serves a model. The figures mean
  nothing; the point is that the whole script, its parsing of run folders and results
  included, still works. Outputs go to a temporary folder, never to benchmarks/results.
"""

import ast
import csv
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
SAMPLES = ROOT / "src" / "tunesmith" / "samples"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_script_imports(script):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # each runs its measurement only under `__main__`
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunesmith"):
            target = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names
                        if not hasattr(target, a.name) and not (hasattr(target, "__path__")
                        and importlib.util.find_spec(f"{node.module}.{a.name}"))]
    assert not missing, f"{script.name} imports names that no longer exist: {missing}"


def _env(tmp_path: Path) -> dict:
    """One thread (the tiny model gains nothing from more, and two spin against each other on
    a 2-core machine), offline, and temporary folders under the test's own."""
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TMPDIR=str(tmp_path))


def _run(script: str, args: list, tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT args` from a scratch folder (so a relative default output path
    cannot land in the repository); fails with the end of its output."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (f"{script} {' '.join(map(str, args))} exited {result.returncode}\n"
                                    f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_script_answers_help(script, tmp_path):
    result = _run(script.name, ["--help"], tmp_path, timeout=120)
    assert "usage:" in result.stdout


# --------------------------------------------------------------------------- smoke runs


def small_banking(path: Path, intents: int = 4, per_intent: int = 10, split: str = "train") -> Path:
    """A Banking77 CSV of `per_intent` rows for each of the first `intents` intents (from the
    bundled sample's `split`): few rows keep the data gate's embedding-based label check cheap,
    few intents let every validation label also occur in training."""
    by_label = defaultdict(list)
    with (SAMPLES / f"banking77_{split}.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            by_label[row["category"]].append(row)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        for label in sorted(by_label)[:intents]:
            writer.writerows({"text": r["text"], "category": label} for r in by_label[label][:per_intent])
    return path


def hh_pairs(path: Path, n: int = 30) -> Path:
    """HH-RLHF-style transcripts (chosen/rejected) with one planted problem, a pair whose two
    sides are the same, which the benchmark's data gate reports and `fix_data` drops."""
    with (SAMPLES / "banking77_train.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[::40][:n]
    with path.open("w") as f:
        for i, row in enumerate(rows):
            prompt = f"\n\nHuman: {row['text']}\n\nAssistant:"
            chosen = f"{prompt} I can help with {row['category'].replace('_', ' ')}."
            f.write(json.dumps({"chosen": chosen, "rejected": chosen if i == 3 else f"{prompt} No."}) + "\n")
    return path


def _data_gate(tmp_path, model):
    result = _run("data_gate.py", ["--sizes", "300,600"], tmp_path)  # exits 1 if it finds fewer problems than planted
    assert "planted vs found" in result.stdout


def _sft_vs_trl(tmp_path, model):
    out = tmp_path / "sft_vs_trl.json"
    _run("sft_vs_trl.py", ["--model", model, "--data", SAMPLES / "banking77_train.csv", "--rows", 24, "--steps", 2,
                           "--batch-size", 4, "--max-length", 64, "--json", out], tmp_path)
    result = json.loads(out.read_text())
    assert result["tunesmith"]["optimizer_steps"] == result["trl"]["optimizer_steps"] == 2
    assert result["speedup_real_tokens_per_s"] > 0


def _classify_vs_generate(tmp_path, model):
    out = tmp_path / "classify_vs_generate.json"
    _run("classify_vs_generate.py", ["--model", model, "--train", small_banking(tmp_path / "train.csv"),
                                     "--test", SAMPLES / "banking77_test.csv", "--examples", 8, "--test-rows", 4,
                                     "--out", tmp_path / "out", "--results", out], tmp_path)
    result = json.loads(out.read_text())
    assert [a["arm"] for a in result["arms"]] == ["classify", "generate"] and result["test_rows"] == 4
    assert all(a["steps"] >= 1 and 0 <= a["test_accuracy"] <= 1 for a in result["arms"])


def _peft_methods(tmp_path, model):
    out = tmp_path / "peft_methods.json"
    # Two steps: the speed column is the median over the steps after the first.
    _run("peft_methods.py", ["--model", model, "--data", small_banking(tmp_path / "banking.csv"), "--methods", "lora,ia3",
                             "--steps", 2, "--train-rows", 32, "--validation-rows", 8,
                             "--out", tmp_path / "out", "--results", out], tmp_path)
    result = json.loads(out.read_text())
    assert [m["method"] for m in result["methods"]] == ["lora", "ia3"]
    assert all(m["trainable_params"] > 0 and m["tokens_per_s"] > 0 for m in result["methods"])


def _synthetic_lift(tmp_path, model):
    out = tmp_path / "out"
    # The tiny model is the teacher too: it writes noise, which the filters mostly drop.
    _run("synthetic_lift.py", ["--model", model, "--teacher", model, "--train", small_banking(tmp_path / "train.csv"),
                               "--test", SAMPLES / "banking77_test.csv", "--per-intent", 2, "--synth-per-intent", 1,
                               "--steps", 1, "--test-rows", 4, "--out", out], tmp_path)
    result = json.loads((out / "results.json").read_text())
    assert set(result["arms"]) == {"seed", "seed+synthetic", "seed+augmented"} and result["seed_rows"] == 8
    assert result["filter_report"]["candidates"] > 0


def _align_hh_rlhf(tmp_path, model):
    out = tmp_path / "align.json"
    _run("align_hh_rlhf.py", ["--model", model, "--data", hh_pairs(tmp_path / "pairs.jsonl"), "--steps", 1,
                              "--test-pairs", 4, "--validation-pairs", 4, "--prompts", 2, "--max-length", 64,
                              "--max-new-tokens", 4, "--out", tmp_path / "out", "--results", out], tmp_path)
    result = json.loads(out.read_text())
    assert result["gate_errors"] and result["pairs_dropped"] >= 1  # the planted pair
    assert result["reward_model"]["steps"] == result["dpo"]["steps"] == 1
    assert result["win_rate"]["prompts"] == 2


def _ddp_scaling(tmp_path, model):
    out = tmp_path / "ddp.json"
    _run("ddp_scaling.py", ["--model", model, "--data", small_banking(tmp_path / "banking.csv"), "--processes", 2,
                            "--steps", 2, "--json", out], tmp_path)
    result = json.loads(out.read_text())
    assert (result["one"]["processes"], result["many"]["processes"]) == (1, 2)
    assert result["many"]["gradient_accumulation_per_process"] <= result["one"]["gradient_accumulation_per_process"]


def _load(tmp_path, model):
    out = tmp_path / "load.json"
    # Builds its own tiny model; exits 1 on any 5xx or transport error.
    _run("load.py", ["--clients", 4, "--keys", 2, "--seconds", 3, "--baseline-seconds", 1, "--think-ms", 100,
                     "--max-tokens", 2, "--json", out], tmp_path)
    result = json.loads(out.read_text())
    assert result["totals"]["requests"] > 0 and result["totals"].get("5xx", 0) == 0 and result["server_alive_after"]


def _serve_load(tmp_path, model):
    out = tmp_path / "serve_load.json"
    _run("serve_load.py", ["--model", f"tiny={model}", "--clients", 2, "--requests", 1, "--adapters", 1,
                           "--max-tokens", 2, "--threads", 1, "--json", out], tmp_path)
    result = json.loads(out.read_text())
    assert len(result["load"]) == 4 and all(r["errors"] == 0 for r in result["load"].values()), result["load"]
    assert result["memory"]["engine"]["peak_rss_mb"] > 0


def _export_edge(tmp_path, model):
    out = tmp_path / "export_edge.json"
    _run("export_edge.py", ["--model", model, "--steps", 1, "--rows", 2, "--formats", "hf,gguf:q8_0",
                            "--out", tmp_path / "out", "--results", out], tmp_path)
    result = json.loads(out.read_text())
    table = result["table"]
    assert table[0]["runtime"] == "pytorch" and [r["format"] for r in table].count("pytorch") == 1
    assert {"hf", "gguf"} <= {r["format"] for r in table} and all(r["speed_vs_pytorch"] for r in table)


def _gpu_throughput(tmp_path, model):
    out = tmp_path / "gpu_throughput.json"
    # Without a GPU it runs only with --allow-cpu: the toy shape, the tests' tokenizer, a few rows.
    _run("gpu_throughput.py", ["--allow-cpu", "--shape", "tiny", "--steps", 2, "--tokenizer", model,
                               "--short-data", small_banking(tmp_path / "banking.csv"),
                               "--long-data", hh_pairs(tmp_path / "hh.jsonl"), "--rows", 12, "--long-tokens", 64,
                               "--out", out], tmp_path)
    result = json.loads(out.read_text())
    for workload in ("short", "long"):
        arms = result["workloads"][workload]["arms"]
        assert set(arms) == {"tunesmith", "trl-best", "trl-default"}, arms
        assert all(a["steps"] == 2 and a["tokens_per_s"] > 0 and a["peak_memory_gb"] > 0 for a in arms.values()), arms


def _budget(tmp_path, model):
    out = tmp_path / "budget.json"
    # auto keeps to its budget by planning, and the tiny model's planned steps take seconds, so
    # it ends well inside 3m; the plain loop trains until its own budget is spent.
    result = _run("budget.py", ["--model", model, "--train", small_banking(tmp_path / "train.csv"),
                                "--test", small_banking(tmp_path / "test.csv", per_intent=3, split="test"),
                                "--budget", "3m", "--plain-budget", "15s", "--out", tmp_path / "out",
                                "--results", out], tmp_path)
    result = json.loads(out.read_text())
    auto, plain = result["arms"]
    assert (auto["arm"], plain["arm"]) == ("auto", "plain") and auto["test_rows"] == plain["test_rows"] == 12
    assert auto["wall_over_budget"] <= 1.10 and auto["steps"] >= 1 and 0 <= auto["test_accuracy"] <= 1
    assert plain["steps"] >= 1 and plain["wall_seconds"] <= 15 * 1.10 and 0 <= plain["test_accuracy"] <= 1
    assert "auto_accuracy_over_plain" in result["ratios"]


SMOKE_RUNS = {
    "align_hh_rlhf": _align_hh_rlhf,
    "budget": _budget,
    "classify_vs_generate": _classify_vs_generate,
    "data_gate": _data_gate,
    "ddp_scaling": _ddp_scaling,
    "export_edge": _export_edge,
    "gpu_throughput": _gpu_throughput,
    "load": _load,
    "peft_methods": _peft_methods,
    "serve_load": _serve_load,
    "sft_vs_trl": _sft_vs_trl,
    "synthetic_lift": _synthetic_lift,
}
# Scripts that only get the import and --help checks, each with the reason it cannot run cheaply.
HELP_ONLY: dict[str, str] = {}


def test_every_benchmark_has_a_smoke_run_or_a_reason():
    scripts = {s.stem for s in SCRIPTS}
    assert scripts == set(SMOKE_RUNS) | set(HELP_ONLY), (
        f"add a smoke run to SMOKE_RUNS (or a reason to HELP_ONLY) for: {sorted(scripts - set(SMOKE_RUNS) - set(HELP_ONLY))}; "
        f"no such script: {sorted(set(SMOKE_RUNS) | set(HELP_ONLY) - scripts)}")


@pytest.mark.parametrize("name", sorted(SMOKE_RUNS))
def test_benchmark_smoke_run(name, tmp_path, tiny_model_dir):
    SMOKE_RUNS[name](tmp_path, str(tiny_model_dir))
