"""`tunesmith export`: a run to where it will run (merged Hugging Face, GGUF, Ollama, ONNX), verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunesmith.cli.common import (
    EvalBars,
    console,
    convert_builtin_once,
    err,
    user_errors,
)
from tunesmith.runtime import quiet_libraries


@user_errors
def export_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory written by `tunesmith train`.")],
    format: Annotated[str, typer.Option("--format", "-f", help="hf (merged safetensors), gguf (llama.cpp, LM Studio), "
                                        "ollama (GGUF + Modelfile) or onnx (float32 + int8, onnxruntime).")] = "gguf",
    quant: Annotated[str | None, typer.Option(help="GGUF type: f32, f16, bf16, q8_0 (default), q5_1, q5_0, q4_1, q4_0; "
                                                 "q4_k_m and the other K-quants where llama-cpp-python is installed.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write (default: RUN/exports/FORMAT[-TYPE]).")] = None,
    lora: Annotated[bool, typer.Option("--lora", help="GGUF: the LoRA adapter alone (llama-cli --lora), not the merged model.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Load the export in its runtime and compare its "
                                         "answers with the PyTorch model on the run's test rows.")] = True,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Test rows the verification answers.")] = 16,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="ONNX: also write and check the int8 copy (model_int8.onnx).")] = True,
) -> None:
    """Export a run for deployment and check the exported file gives the tuned model's answers.
    Writes the export and its figures (size, load time, speed, agreement with PyTorch, test
    metric) to OUT/report.json, then prints the commands that run it."""
    quiet_libraries()
    # heavy: imported when the command runs, not for --help
    from tunesmith.domains.audit import record_export  # pydantic (runs)
    from tunesmith.evaluate.card import refresh_card  # pydantic, yaml
    from tunesmith.export.build import export_run  # pydantic (runs)

    convert_builtin_once(str(run))
    bars = EvalBars(err)
    try:
        report = export_run(run, format, out, quant, lora, verify, limit, progress=bars, int8=int8)
    finally:
        bars.stop()
    print_export(report)
    # A run under a domain pack: the export joins its audit trail (before the card is rewritten, so the card cites it).
    if entry := record_export(run, report):
        console.print(f"audit trail: entry {entry['id']} (`tunesmith audit export --run {run} --out audit.csv`)")
    if card := refresh_card(run):
        console.print(f"Model card (with a deployment section): {card}")


def print_export(report: dict) -> None:
    """The files, the verification table and the commands that run the export."""
    size = sum(f["bytes"] for f in report["files"]) / 1e6
    console.print(f"[bold]{report['format']}[/bold] export of {report['run']} in {report['folder']} "
                  f"({size:.1f} MB, {report['seconds']:.0f} s)")
    rows = report["checks"]
    if rows:
        table = Table(title=f"Verified on {_rows(report)}", caption="agreement: share of answers (or labels) identical "
                      "to the PyTorch model's; tokens: share of PyTorch's answer tokens the export predicts, fed the same "
                      "answer (what the check gates on); stops: share of answers that end on an end-of-turn token")
        for col in ("runtime", "type", "size MB", "load s", "speed", "agreement", "tokens", "stops", "metric"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["runtime"], r["type"], _num(r["size_mb"]), _num(r["load_s"]),
                          f"{r['speed']:.1f} {r['unit']}" if r["speed"] is not None else "-",
                          _pct(r["agreement"]), _pct(r.get("token_agreement")), _pct(r["stop_share"]), _pct(r["metric"]))
        console.print(table)
        skipped = report["figures"].get("verification", {}).get("skipped", {})
        for runtime, why in skipped.items():
            console.print(f"[dim]not verified in {runtime}: {why}[/dim]")
    elif not report["verified"]:
        console.print("[yellow]not verified (--no-verify)[/yellow]")
    console.print("Run it:")
    for command in report["use"]:
        console.print(f"  {command}", soft_wrap=True, highlight=False)
    console.print(f"Figures: {Path(report['folder']) / 'report.json'}")


def _rows(report: dict) -> str:
    figures = report["figures"]
    check = figures.get("verification", figures)
    return f"{check.get('prompts', check.get('rows', '?'))} test rows ({check.get('source', 'the run')})"


def _num(value) -> str:
    return "-" if value is None else f"{value:g}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"
