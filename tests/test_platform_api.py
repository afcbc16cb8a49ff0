"""tunesmith's own routes under /v1/tunesmith/ (what the web UI calls beside OpenAI's):
safe fixes for an uploaded file, the preview of a job's "auto" values, fine-tuned models
with their metrics, and their weights to download. Against a live server, with a real
worker process training the tiny model."""

import hashlib
import hmac
import io
import json
import time
import zipfile
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from conftest import write_chat_file
from test_api import TINY, service, start_worker, wait_for  # noqa: F401 - `service` is a fixture


def call(service, method, path, who="acme", **kwargs):  # noqa: F811
    headers = {"Authorization": f"Bearer {service['keys'][who]}"} if who else {}
    return requests.request(method, service["url"] + path, headers=headers, timeout=300, **kwargs)


def upload(service, path, who="acme"):  # noqa: F811
    with open(path, "rb") as f:
        r = call(service, "POST", "/files", who, files={"file": (path.name, f)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()


def error(r, status):
    assert r.status_code == status, r.text
    return r.json()["error"]


def dirty_file(path):
    """30 good chat rows, then a duplicate, an empty answer, an e-mail address, and HTML
    with a control character."""
    write_chat_file(path, n=30)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    chat = lambda q, a: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}  # noqa: E731
    rows += [rows[0], chat("Where is my refund?", ""), chat("Mail me at jane.doe@example.com about my card", "card_arrival"),
             chat("<b>Why</b> was I charged\x07 twice?", "transaction_charged_twice")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_safe_fixes_make_a_new_checked_file_and_keep_the_original(service, tmp_path):  # noqa: F811
    original = upload(service, dirty_file(tmp_path / "tickets.jsonl"))
    card = original["data_card"]
    assert card["rows"] == 34 and len(card["errors"]) == 1
    by_check = {f["check"]: f for f in card["findings"]}
    assert {"schema", "duplicates", "pii", "encoding"} <= set(by_check)
    assert card["findings"][0]["severity"] == "error"  # errors first
    assert by_check["pii"]["examples"] == [{"row": 33, "text": "user: Mail me at jane.doe@example.com about my card "
                                                                 "assistant: card_arrival"}]

    r = call(service, "POST", f"/tunesmith/files/{original['id']}/fix")
    assert r.status_code == 200, r.text
    fixed = r.json()
    assert fixed["id"] != original["id"] and fixed["filename"] == "tickets.clean.jsonl" and fixed["purpose"] == "fine-tune"
    clean = fixed["data_card"]
    assert clean["fixed_from"] == original["id"]
    assert {k: clean["fixes"][k] for k in ("rows_in", "rows_out", "dropped", "redacted", "changed")} == {
        "rows_in": 34, "rows_out": 32, "dropped": 2, "redacted": 1, "changed": 1}
    assert {(line["row"], line["action"]) for line in clean["fixes"]["log"]} == {
        (31, "dropped"), (32, "dropped"), (33, "redacted"), (34, "changed")}
    assert clean["rows"] == 32 and clean["errors"] == [] and clean["warnings"] == []
    text = call(service, "GET", f"/files/{fixed['id']}/content").text
    assert "[EMAIL]" in text and "jane.doe" not in text and "<b>" not in text and "\\u0007" not in text
    # The original is untouched, and the cleaned file trains: a job on it is accepted.
    assert "jane.doe@example.com" in call(service, "GET", f"/files/{original['id']}/content").text
    assert call(service, "GET", f"/files/{original['id']}").json()["data_card"]["rows"] == 34

    # Nothing to fix, someone else's file, a result file: one sentence each.
    again = error(call(service, "POST", f"/tunesmith/files/{fixed['id']}/fix"), 400)
    assert again["code"] == "nothing_to_fix" and "tickets.clean.jsonl" in again["message"]
    assert error(call(service, "POST", f"/tunesmith/files/{original['id']}/fix", "globex"), 404)["code"] == "file_not_found"
    assert error(call(service, "POST", "/tunesmith/files/file-nope/fix"), 404)["code"] == "file_not_found"


def test_preview_resolves_auto_values_with_reasons_before_launch(service, tmp_path):  # noqa: F811
    f = upload(service, write_chat_file(tmp_path / "chat.jsonl", n=60))
    body = {"model": "tiny", "training_file": f["id"],
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    jobs_before = len(call(service, "GET", "/fine_tuning/jobs").json()["data"])
    r = call(service, "POST", "/tunesmith/fine_tuning/preview", json=body)
    assert r.status_code == 200, r.text
    p = r.json()
    resolved, reasons = p["resolved"], p["resolved"]["reasons"]
    assert p["hardware"].startswith("CPU") or "GB" in p["hardware"]
    assert resolved["n_epochs"] == 2 and "n_epochs" not in reasons  # as the user set it
    assert isinstance(resolved["batch_size"], int) and "batch_size" in reasons
    assert resolved["learning_rate"] > 0 and "learning_rate" in reasons
    assert resolved["data.validation_split"] == 0.1 and "60 rows" in reasons["data.validation_split"]
    assert "only 60 rows" in reasons["data.test_split"]
    assert 16 <= resolved["train.max_length"] <= 2048 and reasons["train.max_length"]
    assert len(call(service, "GET", "/fine_tuning/jobs").json()["data"]) == jobs_before  # a preview creates no job

    # learning_rate_multiplier scales the automatic rate, and says so.
    body["method"]["supervised"]["hyperparameters"] = {"learning_rate_multiplier": 2}
    scaled = call(service, "POST", "/tunesmith/fine_tuning/preview", json=body).json()["resolved"]
    assert scaled["learning_rate"] == pytest.approx(2 * resolved["learning_rate"])
    assert "learning_rate_multiplier 2" in scaled["reasons"]["learning_rate"]

    # It refuses what creating the job would refuse, with the same sentence.
    bad = dict(body, method={"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 8}}})
    assert "Unknown hyperparameter 'lora_rank'" in error(call(service, "POST", "/tunesmith/fine_tuning/preview", json=bad), 400)["message"]
    assert error(call(service, "POST", "/tunesmith/fine_tuning/preview", json=dict(body, model="gpt-5")), 400)["param"] == "model"
    wrong = error(call(service, "POST", "/tunesmith/fine_tuning/preview", json=dict(body, method={"type": "classify"})), 400)
    assert "holds chat data" in wrong["message"]
    assert error(call(service, "POST", "/tunesmith/fine_tuning/preview", "globex", json=body), 404)["param"] == "training_file"


@pytest.fixture(scope="module")
def evaluated_job(service, tmp_path_factory):  # noqa: F811
    """A finished job with a test split (220 rows), so it has a report and metrics."""
    data = write_chat_file(tmp_path_factory.mktemp("eval") / "support.jsonl", n=220)
    f = upload(service, data)
    hp = {"max_steps": 4, "eval_steps": 2, **TINY}
    r = call(service, "POST", "/fine_tuning/jobs", json={"model": "tiny", "training_file": f["id"], "suffix": "dl",
                                                          "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}})
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    worker = start_worker(service, "w-platform")
    try:
        job = wait_for(lambda: (j := call(service, "GET", f"/fine_tuning/jobs/{job_id}").json())["status"]
                       in ("succeeded", "failed", "cancelled") and j, timeout=600, what="the job to finish")
    finally:
        worker.terminate()
        _, log = worker.communicate(timeout=60)
    assert job["status"] == "succeeded", (job.get("error"), log[-3000:])
    return {"job": job, "file": f}


def test_models_list_their_metrics_alarms_and_weights(service, evaluated_job):  # noqa: F811
    job = evaluated_job["job"]
    models = call(service, "GET", "/tunesmith/models").json()["data"]
    m = next(m for m in models if m["id"] == job["fine_tuned_model"])
    assert m["job"] == job["id"] and m["base"] == "tiny" and m["method"] == "sft" and m["adapter"] == "lora"
    assert m["test_rows"] == 22 and set(m["metrics"]) == {"base", "tuned"} and m["metrics"]["tuned"]
    assert isinstance(m["alarms"], list)
    assert m["weights"] == ["adapter", "merged", "gguf", "ollama", "onnx"]
    assert all(other["id"] != m["id"] for other in call(service, "GET", "/tunesmith/models", "globex").json()["data"])


def test_report_and_card_name_files_and_jobs_never_server_paths(service, evaluated_job):  # noqa: F811
    job, f = evaluated_job["job"], evaluated_job["file"]
    names = {call(service, "GET", f"/files/{i}").json()["filename"]: i for i in job["result_files"]}
    assert {"report.html", "MODEL_CARD.md"} <= set(names)
    for name in ("report.html", "MODEL_CARD.md"):
        text = call(service, "GET", f"/files/{names[name]}/content").text
        assert str(service["data_dir"]) not in text, name
        assert f"support.jsonl ({f['id']})" in text, name
    assert job["id"] in call(service, "GET", f"/files/{names['report.html']}/content").text


def _zip(r) -> zipfile.ZipFile:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(r.content))


def test_download_a_gguf_export_verified_on_first_request(service, evaluated_job):  # noqa: F811
    model_id = evaluated_job["job"]["fine_tuned_model"]
    archive = _zip(call(service, "GET", "/tunesmith/models/download", params={"model": model_id, "weights": "gguf"}))
    top = model_id.replace(":", "-")
    assert {f"{top}/model.gguf", f"{top}/report.json", f"{top}/README.md"} <= set(archive.namelist())
    report = json.loads(archive.read(f"{top}/report.json"))
    assert report["format"] == "gguf" and report["verified"] and report["checks"][0]["runtime"] == "pytorch"
    # The card in the zip was written after the export: it shows the export's figures.
    assert "## Deployment" in archive.read(f"{top}/README.md").decode()


def test_download_the_adapter_and_the_merged_model(service, evaluated_job, tmp_path):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.inference.generate import load_for_inference

    model_id = evaluated_job["job"]["fine_tuned_model"]
    adapter = _zip(call(service, "GET", "/tunesmith/models/download", params={"model": model_id, "weights": "adapter"}))
    top = model_id.replace(":", "-")
    names = set(adapter.namelist())
    assert {f"{top}/adapter_config.json", f"{top}/adapter_model.safetensors", f"{top}/README.md"} <= names
    assert len(names) == len(adapter.namelist())  # no name twice
    assert adapter.read(f"{top}/README.md").decode().startswith("---")  # the model card, with its metadata block

    # The merged model is a plain model folder that transformers loads without PEFT, and it
    # computes what the server's own merged model computes.
    link = call(service, "POST", "/tunesmith/models/download_link", params={"model": model_id, "weights": "merged"})
    assert link.status_code == 200, link.text
    url = service["url"].removesuffix("/v1") + link.json()["url"]
    merged = _zip(requests.get(url, timeout=120))  # no API key: the link carries a signature
    merged.extractall(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / top).eval()
    served = load_for_inference(str(service["data_dir"] / "runs" / evaluated_job["job"]["id"])).model
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, served(ids).logits, atol=1e-4)

    # A changed or expired link is refused; so are other projects and weights the model lacks.
    query = {k: v[0] for k, v in parse_qs(urlsplit(link.json()["url"]).query).items()}
    tampered = dict(query, weights="adapter")
    assert error(call(service, "GET", "/tunesmith/models/download", None, params=tampered), 403)["code"] == "invalid_link"
    key = (service["data_dir"] / "download.key").read_bytes()
    past = int(time.time()) - 1
    old = dict(query, expires=past, signature=hmac.new(key, f"{model_id}\nmerged\n{past}".encode(), hashlib.sha256).hexdigest())
    assert error(call(service, "GET", "/tunesmith/models/download", None, params=old), 403)["code"] == "link_expired"
    assert error(call(service, "GET", "/tunesmith/models/download", None, params={"model": model_id}), 401)
    assert error(call(service, "POST", "/tunesmith/models/download_link", "globex", params={"model": model_id}), 404)
    full = error(call(service, "GET", "/tunesmith/models/download", params={"model": model_id, "weights": "full"}), 400)
    assert full["message"] == f"{model_id} has no full weights to download; it has: adapter, merged, gguf, ollama, onnx."


def test_preview_resolves_each_kind_of_stage_as_its_recipe_would(tmp_path, tiny_model_dir):
    """No server: `stages.preview` reads the data the way each stage reads it."""
    import csv

    from conftest import banking_rows
    from tunesmith.config import RunConfig
    from tunesmith.errors import DataError
    from tunesmith.train.stages import preview

    labelled = tmp_path / "intents.csv"
    with labelled.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *banking_rows(250)])
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.", "rejected": "No."}) + "\n"
                             for i in range(30)))
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"Clause {i}: the supplier shall deliver within {i} days." for i in range(40)))

    def run(stage, data):
        return preview(RunConfig.model_validate({"model": {"name": str(tiny_model_dir)}, "data": {"train": str(data)},
                                                 "method": {"stages": [stage]}}))

    classify = run("classify", labelled)
    assert classify.train.best_metric == "accuracy" and classify.data.test_split == 0.1  # 250 rows: 25 held out
    assert "225 rows" in classify.reasons["data.validation_split"]  # the split is of the rows left to train on
    dpo = run("dpo", pairs)
    assert dpo.method.beta == 0.1 and "30 pairs" in dpo.reasons["train.epochs"]
    pretrain = run("pretrain", text)
    assert "tokens of text" in pretrain.reasons["train.epochs"] and pretrain.train.best_metric == "loss"
    with pytest.raises(DataError, match="classification needs text\\+label rows"):
        run("classify", pairs)
