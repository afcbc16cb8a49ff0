"""`tunesmith export`: one entry for every format. It writes the export into its folder
(default `RUN/exports/<format>[-<type>]/`), verified by the format's own module, and saves the
figures beside it as `report.json`, with the commands that run the export: the CLI prints
them, the API serves the folder as a zip, and the model card's deployment section reads them.

| format | written by | verified in |
| --- | --- | --- |
| hf | `export.hf` (merged safetensors, tokenizer, chat template, stop tokens) | transformers (greedy answers against the run) |
| gguf | `export.gguf` (Python, the `gguf` library) | transformers' GGUF loader, and llama.cpp where llama-cpp-python is installed |
| ollama | `export.ollama` (the GGUF file and a Modelfile) | as gguf |
| onnx | `export.onnx` (float32 and int8 weights) | onnxruntime |
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import ConfigError, ModelError
from tunesmith.export.gguf import GGUF_FILE, export_gguf, export_gguf_lora
from tunesmith.export.hf import export_hf
from tunesmith.export.ollama import export_ollama
from tunesmith.export.onnx import export_onnx
from tunesmith.export.verify import (
    answer_budget,
    answer_figures,
    check_figures,
    greedy_answers,
    reference,
    verification_rows,
)
from tunesmith.runs import LABELS_FILE, RunDir

FORMATS = ("hf", "gguf", "ollama", "onnx")
REPORT_FILE = "report.json"
DEFAULT_QUANT = "q8_0"  # GGUF: near-lossless and half the size of f16; q4_0 is the small one

Progress = Callable[[str, int, int], None]  # (what, done, total)


def export_folder(run: str | Path, fmt: str, quant: str | None = None, lora: bool = False) -> Path:
    """Where an export of the run lives unless the user names a folder: inside the run, so
    deleting the run deletes it."""
    name = fmt if fmt in ("hf", "onnx") else f"{fmt}-{quant or DEFAULT_QUANT}" + ("-lora" if lora else "")
    return RunDir(Path(run)).exports / name


def export_run(run: str | Path, fmt: str, out: str | Path | None = None, quant: str | None = None, lora: bool = False,
               verify: bool = True, limit: int = 16, progress: Progress | None = None, int8: bool = True) -> dict:
    """Export the run in `fmt` to `out` (default `export_folder`), verify it (unless `verify` is
    False) and write `out/report.json`; `int8` False leaves out ONNX's int8 copy. Returns the
    report: format, folder, files with their sizes, seconds, the verification figures and the
    commands that run it. Raises ModelError or ConfigError (one sentence) when the run cannot
    take this format or the export fails its check."""
    folder = RunDir(Path(run))
    if not folder.exists:
        raise ModelError(f"{run} is not a run directory (no config.yaml); give the folder `tunesmith train` wrote.")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}.")
    if quant and fmt not in ("gguf", "ollama"):
        raise ConfigError(f"--quant chooses a GGUF type, which the {fmt} format does not take; leave it out"
                          + (" (onnx writes float32 and int8; --no-int8 skips int8)." if fmt == "onnx" else "."))
    if lora and fmt != "gguf":
        raise ConfigError("--lora writes the adapter alone as a GGUF LoRA file; use it with --format gguf.")
    if not folder.final.adapter and lora:
        raise ModelError(f"{run} has no LoRA adapter (it was trained with full weights); export it without --lora.")
    quant = quant or DEFAULT_QUANT
    out = Path(out) if out else export_folder(folder.path, fmt, quant, lora)
    out.mkdir(parents=True, exist_ok=True)
    step = progress or (lambda what, done, total: None)
    step(f"export {fmt}", 0, 1)
    start = time.perf_counter()
    figures = _write(folder.path, fmt, out, quant, lora, verify, limit, step, int8)
    report = {
        "format": fmt,
        "run": str(folder.path),
        "folder": str(out),
        "quant": quant if fmt in ("gguf", "ollama") else None,
        "lora": lora,
        "files": _files(out),
        "seconds": round(time.perf_counter() - start, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "verified": verify,
        "figures": figures,
        "checks": check_rows(fmt, figures) if verify else [],
        "use": usage(fmt, out, folder.path.name, lora),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    step(f"export {fmt}", 1, 1)
    return report


def _write(run: Path, fmt: str, out: Path, quant: str, lora: bool, verify: bool, limit: int, step: Progress,
           int8: bool) -> dict:
    if fmt == "hf":
        export_hf(run, out)
        return verify_hf(run, out, limit) if verify else {}
    if fmt == "gguf":
        if lora:  # the adapter alone, with the base it applies to; llama.cpp checks the pair
            adapter_quant = quant if quant in ("f32", "f16", "bf16", "q8_0") else "f16"
            return export_gguf_lora(run, out, adapter_quant, base_quant=quant, verify=verify, limit=limit)
        return export_gguf(run, out / GGUF_FILE, quant, verify, limit)
    if fmt == "ollama":
        return export_ollama(run, out, quant, verify, limit)
    if out.exists() and not any(out.iterdir()):
        out.rmdir()  # export_onnx moves its verified folder into place
    return export_onnx(run, out, quantize="weights" if int8 else None, limit=limit, progress=step)


def verify_hf(run: Path, out: Path, limit: int = 16) -> dict:
    """The exported folder loaded by transformers as a user loads it, stopping on the stop tokens
    of its own generation config, against the run's PyTorch model on its test prompts (a
    classifier or reward model folder is its merged weights as they are: nothing to generate)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if RunDir(run).final.stage in ("classify", "reward"):
        return {}
    prompts, references, source = verification_rows(run, limit)
    tokenizer = AutoTokenizer.from_pretrained(out)
    budget = answer_budget(references, tokenizer)
    torch_answers = reference(run, prompts, budget)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    load_s = time.perf_counter() - start
    stops = GenerationConfig.from_pretrained(out).eos_token_id
    answers = greedy_answers(model, tokenizer, prompts, budget, RunDir(run).final.config.data.system_prompt,
                             stop_ids=stops if isinstance(stops, list) else [stops])
    runtime = answer_figures(answers, torch_answers, references) | {"load_s": round(load_s, 2)}
    pytorch = answer_figures(torch_answers, None, references)
    check_figures("The exported folder in transformers", "f32", runtime | {"prompts": len(prompts), "max_new_tokens": budget},
                  pytorch)
    return {"verification": {"prompts": len(prompts), "source": source, "max_new_tokens": budget, "pytorch": pytorch,
                             "runtimes": {"transformers": runtime}}}


def _files(out: Path) -> list[dict]:
    return [{"name": str(p.relative_to(out)), "bytes": p.stat().st_size}
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != REPORT_FILE]


def check_rows(fmt: str, figures: dict) -> list[dict]:
    """The verification as rows of one table, whatever the format: runtime, file type, load
    seconds, speed, agreement with PyTorch's greedy answers (or labels), share of answers that
    stop, test metric; the PyTorch model first, as the reference."""
    if not figures:
        return []
    if fmt == "onnx":  # PyTorch and each file: tokens/s and exact match, or rows/s and accuracy (a classifier)
        unit = "rows/s" if "rows_per_s" in figures["pytorch"] else "tokens/s"

        def row(runtime: str, f: dict, kind: str) -> dict:
            return {"runtime": runtime, "type": kind, "load_s": f.get("load_s"), "speed": f.get("tokens_per_s", f.get("rows_per_s")),
                    "unit": unit, "agreement": f.get("agreement", 1.0), "token_agreement": f.get("token_agreement"),
                    "stop_share": f.get("stop_share"), "metric": f.get("exact_match", f.get("accuracy")),
                    "size_mb": round(f["bytes"] / 1e6, 1) if "bytes" in f else None}

        return [row("pytorch", figures["pytorch"], "float32")] + [row("onnxruntime", f, f["type"]) for f in figures["files"]]
    check = figures.get("verification")
    if not check or "runtimes" not in check:  # nothing ran it (e.g. a LoRA file without llama.cpp at hand)
        return []
    size = round(figures["bytes"] / 1e6, 1) if "bytes" in figures else None
    rows = [{"runtime": "pytorch", "type": "float32", "load_s": None, "speed": check["pytorch"]["tokens_per_s"],
             "unit": "tokens/s", "agreement": 1.0, "token_agreement": 1.0, "stop_share": check["pytorch"]["stop_share"],
             "metric": check["pytorch"].get("exact_match"), "size_mb": None}]
    for name, f in check["runtimes"].items():
        rows.append({"runtime": name, "type": figures.get("quant") or "float32", "load_s": f.get("load_s"),
                     "speed": f["tokens_per_s"], "unit": "tokens/s", "agreement": f.get("agreement"),
                     "token_agreement": f.get("token_agreement"),
                     "stop_share": f.get("stop_share"), "metric": f.get("exact_match"), "size_mb": size})
    return rows


def usage(fmt: str, out: Path, name: str, lora: bool = False) -> list[str]:
    """Commands that run the export as its users would type them."""
    name = name.lower().replace("_", "-")
    if fmt == "gguf" and lora:
        return [f"llama-cli -m {out / 'base.gguf'} --lora {out / 'adapter.gguf'} -cnv"]
    if fmt == "gguf":
        return [f"llama-cli -m {out / 'model.gguf'} -cnv",
                f"llama-server -m {out / 'model.gguf'} --port 8080   # OpenAI-compatible API on /v1",
                (f"python -c \"from llama_cpp import Llama; m = Llama('{out / 'model.gguf'}'); "
                "print(m.create_chat_completion([{'role': 'user', 'content': 'Hello'}])['choices'][0]['message']['content'])\"")]
    if fmt == "ollama":
        return [f"ollama create {name} -f {out / 'Modelfile'}", f"ollama run {name}"]
    if fmt == "onnx" and (out / LABELS_FILE).exists():  # a classifier
        return [(f"python -c \"from tunesmith.export.onnx import load_onnx; m = load_onnx('{out}'); "
                "print(m.predict(['I still have not received my new card']))\"")]
    if fmt == "onnx":
        return [(f"python -c \"from tunesmith.export.onnx import load_onnx; m = load_onnx('{out}'); "
                "print(m.chat([{'role': 'user', 'content': 'Hello'}]))\"")]
    return [(f"python -c \"from transformers import pipeline; p = pipeline('text-generation', '{out}'); "
            "print(p([{'role': 'user', 'content': 'Hello'}])[0]['generated_text'][-1]['content'])\"")]


def export_reports(run: str | Path) -> list[dict]:
    """The reports of the run's exports (for the model card), oldest first."""
    exports = RunDir(Path(run)).exports
    reports = [json.loads(p.read_text()) for p in exports.glob(f"*/{REPORT_FILE}")] if exports.exists() else []
    return sorted(reports, key=lambda r: r.get("created", ""))
