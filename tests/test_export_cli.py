"""`tunesmith export` on the tiny run: the folder, report.json and the verification table for
each format, the commands printed to run it, and one-sentence refusals."""

import json

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.export.build import check_rows, export_folder, export_reports, export_run


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run[0]


def test_gguf_export_writes_a_verified_file_and_its_report(run):
    report = export_run(run, "gguf", quant="q8_0", limit=4)
    out = export_folder(run, "gguf", "q8_0")
    assert report["folder"] == str(out) and (out / "model.gguf").exists()
    assert json.loads((out / "report.json").read_text()) == report
    assert [f["name"] for f in report["files"]] == ["model.gguf"] and report["files"][0]["bytes"] > 0
    rows = report["checks"]
    # PyTorch first as the reference, then each runtime that loaded the file.
    assert rows[0]["runtime"] == "pytorch" and rows[0]["agreement"] == 1.0
    assert "transformers" in [r["runtime"] for r in rows[1:]]
    assert all(r["type"] == "q8_0" and 0 <= r["agreement"] <= 1 and r["speed"] > 0 for r in rows[1:])
    assert any("llama-cli -m" in c and str(out / "model.gguf") in c for c in report["use"])
    assert export_reports(run)[-1]["folder"] == str(out)


def test_ollama_export_has_a_modelfile_and_its_commands(run, tmp_path):
    report = export_run(run, "ollama", out=tmp_path / "ollama", quant="q8_0", verify=False)
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and "PARAMETER stop" in modelfile
    assert report["checks"] == [] and report["verified"] is False
    assert report["use"][0].startswith("ollama create ") and report["use"][1].startswith("ollama run ")


def test_hf_export_is_verified_against_the_run(run, tmp_path):
    report = export_run(run, "hf", out=tmp_path / "hf", limit=3)
    assert (tmp_path / "hf" / "generation_config.json").exists()
    rows = report["checks"]
    assert [r["runtime"] for r in rows] == ["pytorch", "transformers"]
    assert rows[1]["agreement"] == 1.0  # the merged folder is the tuned model itself


def test_check_rows_reads_the_onnx_report_shape():
    figures = {"pytorch": {"rows_per_s": 50.0, "accuracy": 0.8},
               "files": [{"file": "model.onnx", "type": "float32", "bytes": 1_000_000, "load_s": 0.1, "rows_per_s": 90.0,
                          "agreement": 1.0, "accuracy": 0.8},
                         {"file": "model_int8.onnx", "type": "int8", "bytes": 300_000, "load_s": 0.1, "rows_per_s": 120.0,
                          "agreement": 0.95, "accuracy": 0.75}]}
    rows = check_rows("onnx", figures)
    assert [(r["runtime"], r["type"], r["unit"]) for r in rows] == [
        ("pytorch", "float32", "rows/s"), ("onnxruntime", "float32", "rows/s"), ("onnxruntime", "int8", "rows/s")]
    assert rows[2]["metric"] == 0.75 and rows[2]["size_mb"] == 0.3 and rows[0]["speed"] == 50.0


def test_onnx_export_of_a_chat_run_has_both_graphs_checked(run, tmp_path):
    pytest.importorskip("onnxruntime")
    report = export_run(run, "onnx", out=tmp_path / "onnx", limit=2)
    rows = report["checks"]
    assert [(r["runtime"], r["type"]) for r in rows] == [("pytorch", "float32"), ("onnxruntime", "float32"),
                                                         ("onnxruntime", "int8")]
    assert all(r["unit"] == "tokens/s" and r["speed"] > 0 and r["token_agreement"] is not None for r in rows[1:])
    assert {"model.onnx", "model_int8.onnx"} <= {f["name"] for f in report["files"]}


def test_cli_prints_the_table_and_the_commands(run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(run), "--format", "gguf", "--quant", "f16", "--out",
                                      str(tmp_path / "g"), "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output and "llama-cli -m" in result.output
    assert (tmp_path / "g" / "report.json").exists()


@pytest.mark.parametrize("args, says", [
    (["--format", "tflite"], "unknown export format 'tflite'"),
    (["--format", "onnx", "--quant", "q4_0"], "--quant chooses a GGUF type"),
    (["--format", "hf", "--lora"], "--lora writes the adapter alone"),
])
def test_cli_refuses_wrong_options_in_one_sentence(run, args, says):
    result = CliRunner().invoke(app, ["export", str(run), *args])
    assert result.exit_code == 1 and says in " ".join(result.output.split()) and "Traceback" not in result.output


def test_cli_refuses_a_folder_that_is_no_run(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--format", "gguf"])
    assert result.exit_code == 1 and "is not a run directory" in " ".join(result.output.split())


def test_model_card_has_a_deployment_section_from_the_reports(run):
    from tunesmith.evaluate.card import _deployment_section, _Run

    export_run(run, "gguf", quant="q8_0", verify=False)
    section = _deployment_section(_Run(run, {}))
    assert section.startswith("## Deployment") and "### gguf q8_0 (`exports/gguf-q8_0`" in section
    assert "llama-cli -m" in section


def test_gguf_lora_export_writes_the_adapter_and_its_base(run):
    report = export_run(run, "gguf", lora=True, limit=2)
    names = [f["name"] for f in report["files"]]
    assert names == ["adapter.gguf", "base.gguf"] and report["folder"].endswith("gguf-q8_0-lora")
    assert report["use"] == [f"llama-cli -m {report['folder']}/base.gguf --lora {report['folder']}/adapter.gguf -cnv"]
    # llama.cpp is the one runtime that applies a GGUF LoRA: checked where it is installed, said where not.
    verification = report["figures"]["verification"]
    assert "llama.cpp" in verification.get("runtimes", {}) or "llama.cpp" in verification["skipped"]


def test_onnx_without_int8_writes_the_float_graph_alone(run, tmp_path):
    pytest.importorskip("onnxruntime")
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--no-int8", "--limit", "1",
                                      "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    names = {f["name"] for f in json.loads((tmp_path / "onnx" / "report.json").read_text())["files"]}
    assert "model.onnx" in names and "model_int8.onnx" not in names
