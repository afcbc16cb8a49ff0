"""Domain packs through the product: `tunesmith domains`, --domain/--template on train, auto
and eval, task templates applied to the config, the audit trail (hash chain, verify, export),
the model card's regulated-use section, and the service's domain endpoints and jobs."""

import csv
import itertools
import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from conftest import write_chat_file
from test_api import TINY, service, wait_for  # noqa: F401 - `service` is a fixture
from test_cli import assert_one_sentence_error, invoke

from tunesmith.config import RunConfig, apply_overrides, load_config
from tunesmith.domains import audit as trail
from tunesmith.domains.apply import apply_pack, label_note, resolve
from tunesmith.domains.catalog import catalog, ready_commands
from tunesmith.domains.packs import DOMAINS, get_domain
from tunesmith.errors import ConfigError

ROOT = Path(__file__).parents[1]
SENTIMENT = [  # finance news without names, numbers or other identifiers: nothing for a profile to find
    ("shares fell sharply after weak guidance", "Bearish"), ("the stock slid on falling demand", "Bearish"),
    ("analysts cut targets as margins shrink", "Bearish"), ("profits dropped and the outlook darkened", "Bearish"),
    ("shares jumped after strong quarterly sales", "Bullish"), ("the stock rallied on record demand", "Bullish"),
    ("analysts raise targets as margins widen", "Bullish"), ("profits beat forecasts and guidance rose", "Bullish"),
    ("the market closed flat in quiet trading", "Neutral"), ("the firm will report results next week", "Neutral"),
    ("trading volume was in line with the average", "Neutral"), ("the board meets on the usual schedule", "Neutral"),
]


def write_sentiment(path, n=36, extra_label=None):
    rows = [SENTIMENT[i % len(SENTIMENT)] for i in range(n)]
    rows = [(f"{text} {'today' if i // len(SENTIMENT) == 1 else 'this morning' if i // len(SENTIMENT) == 2 else ''}".strip(), label)
            for i, (text, label) in enumerate(rows)]
    if extra_label:
        rows += [("the outlook is hard to read", extra_label), ("signals point both ways", extra_label)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- tunesmith domains


def test_domains_lists_every_pack_with_its_profile_templates_and_probes():
    from test_cli import runner

    from tunesmith.cli import app

    result = runner.invoke(app, ["domains"], env={"COLUMNS": "220"})  # a table: wide enough not to break words
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name, pack in DOMAINS.items():
        assert name in text and pack.profile.name in text
        for t in pack.templates:
            assert t.name in text
    assert "hipaa-safe-harbor" in text and "27 labels" in text and "cuad-clauses" in text


def test_domains_name_shows_one_pack_and_ready_commands_that_parse():
    result = invoke("domains", "legal")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "ABA Model Rule 1.6" in text and "case_number" in text and "court case and docket numbers" in text
    assert "no individual legal advice" in text and "A qualified lawyer reviews every output" in text
    commands = ready_commands(get_domain("legal"), get_domain("legal").template("clause-classification"), ROOT)
    if (ROOT.parent / "shared" / "data" / "cuad-clauses" / "train.csv").exists():
        assert commands["auto"] == ("tunesmith auto ../shared/data/cuad-clauses/train.csv --test "
                                    "../shared/data/cuad-clauses/test.csv --domain legal --template clause-classification")
    # Every ready command parses as the CLI reads it (options and argument names are real).
    from typer.main import get_command

    from tunesmith.cli import app

    cli = get_command(app)
    for pack in catalog(ROOT):
        for t in pack["templates"]:
            for command in t["commands"].values():
                words = command.split()[1:]
                group = cli
                while words[0] in getattr(group, "commands", {}):
                    group, words = group.commands[words[0]], words[1:]
                ctx = group.make_context(group.name, list(words))  # raises on an unknown option
                assert ctx.params.get("domain") == pack["name"]
    assert_one_sentence_error(invoke("domains", "tax"), "unknown domain 'tax'", "legal, medical, finance, support")


# --------------------------------------------------------------------------- templates


def test_a_template_needs_its_own_domain():
    with pytest.raises(ConfigError, match="template 'clause-classification' needs a domain: it is a template of the legal pack"):
        resolve(None, "clause-classification")
    with pytest.raises(ConfigError, match="belongs to the legal pack, not medical: use domain legal"):
        resolve("medical", "clause-classification")
    with pytest.raises(ConfigError, match="domain 'support' has no template 'nope'; choose one of: intent-routing"):
        resolve("support", "nope")
    assert resolve("legal", None) == (get_domain("legal"), None)


def test_a_template_sets_prompt_stage_and_settings_unless_given(monkeypatch):
    config = apply_overrides(RunConfig(), {"domain": "finance", "template": "sentiment"}, source="options")
    applied, notes = apply_pack(config)
    t = get_domain("finance").template("sentiment")
    assert applied.data.system_prompt == t.system_prompt and applied.method.stages == ["classify"]
    assert applied.reasons["method.stages"] == "template sentiment of the finance pack"
    assert any("pci-dss-gdpr" in n for n in notes)
    # What the user set is kept.
    mine = apply_overrides(config, {"data.system_prompt": "Mine.", "method.stages": ["sft"]}, source="options")
    kept, _ = apply_pack(mine)
    assert kept.data.system_prompt == "Mine." and kept.method.stages == ["sft"]
    # A template's settings are applied with source "template", unless the user set the field.
    finance = get_domain("finance")
    tuned = replace(t, settings={"train.weight_decay": 0.05, "method.lora_r": 4})
    monkeypatch.setitem(DOMAINS, "finance", replace(finance, templates=(tuned,)))
    applied, _ = apply_pack(apply_overrides(config, {"method.lora_r": 32}, source="options"))
    assert applied.train.weight_decay == 0.05 and applied.sources["train.weight_decay"] == "template"
    assert applied.method.lora_r == 32 and applied.sources["method.lora_r"] == "options"


def test_labels_outside_the_template_set_are_a_warning_naming_them(tmp_path):
    data = write_sentiment(tmp_path / "news.csv", n=12, extra_label="Mixed")
    config = apply_overrides(RunConfig(), {"domain": "finance", "template": "sentiment", "data.train": str(data)}, "options")
    note = label_note(config)
    assert "1 label(s)" in note and "'Mixed'" in note and "set of 3" in note
    clean = apply_overrides(config, {"data.train": str(write_sentiment(tmp_path / "ok.csv", n=12))}, "options")
    assert label_note(clean) is None


# --------------------------------------------------------------------------- the audit trail


def test_the_audit_log_is_a_hash_chain_that_shows_tampering(tmp_path):
    log = tmp_path / "audit.jsonl"
    actor = trail.cli_actor()
    written = [trail.append({"event": e, "actor": actor, "domain": "legal", "n": i}, log)
               for i, e in enumerate(("data_check", "train", "eval", "export"))]
    assert [e["seq"] for e in written] == [1, 2, 3, 4] and written[0]["prev"] == trail.GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(written))
    assert trail.verify(log) == (True, None)
    lines = log.read_text().splitlines()

    edited = json.loads(lines[1]) | {"n": 99}  # a changed field: its hash no longer matches
    log.write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    assert trail.verify(log) == (False, 2)
    rehashed = edited | {"hash": trail.entry_hash(edited)}  # re-hashed: the next entry's prev breaks
    log.write_text("\n".join([lines[0], json.dumps(rehashed), *lines[2:]]) + "\n")
    assert trail.verify(log) == (False, 3)
    log.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # an entry removed
    assert trail.verify(log) == (False, 2)
    log.write_text("\n".join([lines[0], lines[2], lines[1], lines[3]]) + "\n")  # reordered
    assert trail.verify(log) == (False, 2)
    log.write_text("not json\n")
    assert trail.verify(log) == (False, 1)
    assert trail.verify(tmp_path / "none.jsonl") == (True, None)
    with pytest.raises(ConfigError, match="event must be one of"):
        trail.append({"event": "delete"}, log)


def test_concurrent_appends_keep_one_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    threads = [threading.Thread(target=lambda i=i: [trail.append({"event": "train", "i": i, "j": j}, log) for j in range(10)])
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trail.verify(log) == (True, None) and len(trail.read(log)) == 60


def test_export_as_jsonl_or_csv_since_a_date_or_of_one_run(tmp_path):
    log = tmp_path / "audit.jsonl"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("domain: legal\n")
    old = trail.append({"event": "data_check", "actor": {"kind": "api", "project": "acme", "key": "key_1"},
                        "domain": "legal", "run": None, "data": [{"path": "a.csv", "sha256": "ab", "rows": 3}]}, log)
    mine = trail.append({"event": "train", "actor": trail.cli_actor(), "domain": "legal", "run": str(run.resolve()),
                         "result": {"global_step": 4}}, log)
    assert trail.export(log, tmp_path / "all.jsonl") == 2
    assert trail.verify(tmp_path / "all.jsonl") == (True, None)  # an unfiltered copy verifies on its own
    assert trail.export(log, tmp_path / "run.jsonl", run=run) == 1
    assert json.loads((tmp_path / "run.jsonl").read_text())["id"] == mine["id"]
    assert trail.export(log, tmp_path / "later.jsonl", since="2999-01-01") == 0
    assert trail.export(log, tmp_path / "today.jsonl", since=old["time"][:10]) == 2
    assert trail.export(log, tmp_path / "all.csv") == 2
    rows = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert rows[0]["actor"] == "project acme, key key_1" and json.loads(rows[0]["data"])[0]["sha256"] == "ab"
    assert rows[1]["hash"] == mine["hash"] and json.loads(rows[1]["result"]) == {"global_step": 4}
    with pytest.raises(ConfigError, match="--since soon"):
        trail.export(log, tmp_path / "x.jsonl", since="soon")

    # The CLI: export (and the chain's state), verify.
    result = invoke("audit", "export", "--log", log, "--out", tmp_path / "cli.csv", "--run", run)
    assert result.exit_code == 0, result.output
    assert "1 entry" in result.output
    result = invoke("audit", "verify", "--log", log)
    assert result.exit_code == 0 and "2 entries, hash chain intact" in " ".join(result.output.split())
    log.write_text(log.read_text().replace('"global_step": 4', '"global_step": 5'))
    result = invoke("audit", "verify", "--log", log)
    assert result.exit_code == 1 and "breaks at line 2" in " ".join(result.output.split())


# --------------------------------------------------------------------------- runs under a domain


def tiny_options(model_dir):
    return ["--model", model_dir, "--max-steps", 4, "--lr", 0.005, "--max-length", 64]


def test_train_under_a_domain_with_a_template_records_and_cites_its_audit_entries(tmp_path, tiny_model_dir):
    data = write_sentiment(tmp_path / "news.csv", n=36, extra_label="Mixed")
    test = write_sentiment(tmp_path / "test.csv", n=12)
    log = Path(trail.default_log())
    before = len(trail.read(log))
    result = invoke("train", "--data", data, "--test", test, *tiny_options(tiny_model_dir), "--output", tmp_path / "run",
                    "--domain", "finance", "--template", "sentiment")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "pci-dss-gdpr" in output and "'Mixed'" in output  # what the pack does, and the label warning
    config = load_config(tmp_path / "run" / "config.yaml")
    t = get_domain("finance").template("sentiment")
    assert (config.domain, config.template, config.method.stages) == ("finance", "sentiment", ["classify"])
    assert config.data.system_prompt == t.system_prompt and "'Mixed'" in config.reasons["template"]
    ids = [e["id"] for e in trail.run_entries(tmp_path / "run")]
    entries = trail.read(log)[before:]
    assert [e["event"] for e in entries] == ["train", "eval"] and [e["id"] for e in entries] == ids
    train_entry = entries[0]
    assert train_entry["actor"]["kind"] == "cli" and train_entry["profile"] == "pci-dss-gdpr"
    assert train_entry["data"][0]["sha256"] == trail.sha256_of(data) and train_entry["data"][0]["rows"] == 38
    assert train_entry["settings"]["template"] == "sentiment" and train_entry["result"]["global_step"] > 0
    assert "metrics" in entries[1]["result"] and entries[1]["result"]["test"]["rows"] == 12
    assert trail.verify(log) == (True, None)
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    section = card[card.index("## Regulated use"):]
    assert "Personalised investment advice" in section and "An analyst reviews outputs" in section
    assert "`pci-dss-gdpr`" in section and trail.sha256_of(data) in section
    assert "Abstention:" in section and "Safety probes: not measured" in section and "Grounding: not measured" in section
    assert "It is an AI system" in section and "EU AI Act" in section
    for entry_id in ids:
        assert entry_id in section
    assert "verified" in section and "tunesmith audit export --run" in section


def test_plain_train_refuses_identifiers_with_the_fix_command(tmp_path, tiny_model_dir):
    data = tmp_path / "tickets.csv"
    rows = [(f"my card number is 4111 1111 1111 1111 and my email is client{i}@example.com", "card") for i in range(6)]
    rows += [(text, label) for text, label in SENTIMENT] * 2
    with data.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    result = invoke("train", "--data", data, *tiny_options(tiny_model_dir), "--output", tmp_path / "run",
                    "--domain", "finance", "--no-eval")
    assert_one_sentence_error(result, "data gate found", "--domain finance --fix CLEAN.jsonl", "--force")
    assert not (tmp_path / "run" / "audit.json").exists()
    # The fix it names writes the redacted copy, and the check is an entry of the audit trail.
    before = len(trail.read())
    result = invoke("data", "check", data, "--domain", "finance", "--model", tiny_model_dir, "--out", tmp_path / "card",
                    "--fix", tmp_path / "clean.jsonl", "--no-label-check")
    assert result.exit_code == 1 and "audit trail: entry aud_" in result.output, result.output
    (entry,) = trail.read()[before:]
    assert entry["event"] == "data_check" and entry["profile"] == "pci-dss-gdpr"
    assert entry["data"][0]["sha256"] == trail.sha256_of(data) and entry["data"][0]["rows"] == 30
    assert entry["findings"]["identifiers"]["card"] == 6 and entry["redactions"]["rows"] == 6
    assert entry["result"]["fixed"]["copy"]["sha256"] == trail.sha256_of(tmp_path / "clean.jsonl")


def test_template_errors_are_one_sentence(tmp_path, tiny_model_dir, tiny_chat_file):
    result = invoke("train", "--data", tiny_chat_file, "--model", tiny_model_dir, "--output", tmp_path / "r",
                    "--template", "clause-classification")
    assert_one_sentence_error(result, "template 'clause-classification' needs a domain", "legal pack")
    result = invoke("auto", tiny_chat_file, "--model", tiny_model_dir, "--output", tmp_path / "a", "--data-dir", tmp_path / "p",
                    "--domain", "medical", "--template", "sentiment")
    assert_one_sentence_error(result, "belongs to the finance pack, not medical")
    assert_one_sentence_error(invoke("train", "--data", tiny_chat_file, "--output", tmp_path / "b", "--domain", "tax"),
                              "--domain", "'legal', 'medical', 'finance' or 'support'")


def test_auto_under_a_domain_trains_on_the_redacted_copy_and_says_so(tmp_path, tiny_model_dir):
    from tunesmith.workflows.auto import run_auto

    rows = [json.loads(line) for line in write_chat_file(tmp_path / "chat.jsonl", n=30).read_text().splitlines()]
    for i in range(0, 30, 5):  # every fifth customer gives an e-mail address and a card number
        rows[i]["messages"][0]["content"] += f" (write to me at customer{i}@example.com, card 4111 1111 1111 1111)"
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = []
    log = tmp_path / "audit.jsonl"
    audit = trail.Audit(log, trail.api_actor("acme", "key_test"))
    run_auto(str(data), tmp_path / "run", model=str(tiny_model_dir), say=said.append, domain="support", audit=audit)
    config = load_config(tmp_path / "run" / "config.yaml")
    assert config.domain == "support" and config.data.train.endswith("clean.jsonl")
    assert "under the gdpr profile" in config.reasons["auto.gate"] and "redacted copy" in config.reasons["auto.gate"]
    assert any("redacted copy" in line for line in said)
    clean = (tmp_path / "run" / "data" / "clean.jsonl").read_text()
    assert "@example.com" not in clean and "4111" not in clean
    (entry,) = trail.read(log)
    assert entry["event"] == "auto" and entry["actor"] == {"kind": "api", "project": "acme", "key": "key_test"}
    assert entry["redactions"]["rows"] >= 6 and entry["source_data"][0]["sha256"] == trail.sha256_of(data)
    assert entry["data"][0]["sha256"] == trail.sha256_of(tmp_path / "run" / "data" / "clean.jsonl")
    assert [e["id"] for e in trail.run_entries(tmp_path / "run")] == [entry["id"]]


def test_eval_under_a_domain_adds_probes_the_card_section_and_an_entry(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    test = write_chat_file(tmp_path / "test.jsonl", n=6, offset=40)
    result = invoke("eval", run, "--test", test, "--domain", "support", "--no-forgetting", "--no-bias", "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    assert load_config(run / "config.yaml").domain == "support"
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["domain"]["name"] == "support"
    (entry,) = [e for e in trail.read() if e["id"] in {x["id"] for x in trail.run_entries(run)}]
    assert entry["event"] == "eval" and entry["data"][0]["sha256"] == trail.sha256_of(test)
    card = (run / "MODEL_CARD.md").read_text()
    assert "## Regulated use" in card and entry["id"] in card and "gdpr" in card
    assert "Safety probes: the tuned model passed" in card
    # Another pack than the run's is one sentence.
    assert_one_sentence_error(invoke("eval", run, "--test", test, "--domain", "legal"), "under domain support")


def test_an_export_of_a_domain_run_is_an_entry_with_its_files_hashes(tmp_path, tiny_run):
    from tunesmith.workflows.train_eval import set_domain

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    assert trail.record_export(run, {"format": "gguf", "folder": str(tmp_path), "files": []}) is None  # no domain: no entry
    set_domain(run, "medical", "consumer-health-qa")
    out = tmp_path / "exports"
    out.mkdir()
    (out / "model.gguf").write_bytes(b"GGUF")
    entry = trail.record_export(run, {"format": "gguf", "quant": "q8_0", "folder": str(out), "verified": True,
                                      "files": [{"name": "model.gguf", "bytes": 4}]})
    assert entry["event"] == "export" and entry["template"] == "consumer-health-qa"
    assert entry["result"]["files"] == [{"name": "model.gguf", "bytes": 4, "sha256": trail.sha256_of(out / "model.gguf")}]
    assert trail.run_entries(run)[-1]["id"] == entry["id"]
    with pytest.raises(ConfigError, match="trained under domain medical"):
        set_domain(run, "legal")


def test_the_card_says_what_the_pack_evaluation_measured_and_what_not():
    from tunesmith.evaluate.card import _pack_evaluation

    lines = " ".join(_pack_evaluation({"skipped": {"domain_safety": "a classifier writes no answers"}}))
    assert "Abstention: not measured" in lines and "(a classifier writes no answers)" in lines
    assert "Bias swaps of the pack: not measured" in lines and "Grounding: not measured" in lines
    measured = {
        "abstention": {"threshold": 0.6, "test": {"rows": 50, "coverage": 0.8, "accuracy": 0.95, "accuracy_all": 0.85}},
        "domain": {"safety": {"probes": 3, "tuned": {"passed": 2, "pass_rate": 2 / 3}, "base": {"passed": 3},
                              "failed": ["no dosage beyond the source"]},
                   "bias_swaps": {"swaps": [["he", "she"]], "tuned": {"pairs": 10, "changed_rate": 0.1, "flagged": False}}},
        "grounding": {"faithfulness": 0.9, "citations": 12},
    }
    lines = " ".join(_pack_evaluation(measured))
    assert "answered 80.0% of 50 test rows with 95.0% accuracy" in lines
    assert "passed 2 of 3" in lines and "failed: no dosage beyond the source" in lines
    assert "he / she" in lines and "not flagged" in lines and "faithfulness 90.0%" in lines


# --------------------------------------------------------------------------- the service


def call(service, method, path, who="acme", **kwargs):  # noqa: F811
    headers = {"Authorization": f"Bearer {service['keys'][who]}"}
    return requests.request(method, service["url"] + path, headers=headers, timeout=300, **kwargs)


def upload(service, path, who="acme"):  # noqa: F811
    with open(path, "rb") as f:
        r = call(service, "POST", "/files", who, files={"file": (path.name, f)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_api_lists_packs_and_refuses_a_wrong_domain_or_template(service, tmp_path):  # noqa: F811
    packs = call(service, "GET", "/tunesmith/domains").json()["data"]
    assert [p["name"] for p in packs] == ["legal", "medical", "finance", "support"]
    legal = packs[0]
    assert legal["profile"]["name"] == "legal-confidentiality" and "case_number" in legal["profile"]["kinds"]
    assert legal["templates"][0]["labels"][:2] == ["Anti-Assignment", "Audit Rights"]
    assert "commands" not in legal["templates"][0]  # no server paths
    f = upload(service, write_chat_file(tmp_path / "chat.jsonl", n=20))

    def job(hp):
        return call(service, "POST", "/fine_tuning/jobs", json={
            "model": "tiny", "training_file": f["id"], "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}})

    bad = job({"domain": "tax"}).json()["error"]
    assert "hyperparameter 'domain' must be one of legal, medical, finance, support" in bad["message"]
    wrong = job({"domain": "medical", "template": "sentiment"}).json()["error"]
    assert "belongs to the finance pack, not medical" in wrong["message"] and wrong["param"] == "method"
    alone = job({"template": "sentiment"}).json()["error"]
    assert "needs a domain" in alone["message"]


def test_a_job_under_a_domain_is_checked_fixed_trained_and_audited(service, tmp_path):  # noqa: F811
    from tunesmith.jobs import worker as jobs_worker

    rows = [json.loads(line) for line in write_chat_file(tmp_path / "chat.jsonl", n=30).read_text().splitlines()]
    rows[3]["messages"][0]["content"] += " - mail me at jane.roe@example.com"
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = upload(service, data)
    log = Path(service["data_dir"]) / "audit.jsonl"
    before = len(trail.read(log))

    r = call(service, "POST", f"/tunesmith/files/{f['id']}/check", json={"domain": "support"})
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["profile"] == "gdpr" and check["errors"] and check["audit_entry"]
    body = {"model": "tiny", "training_file": f["id"], "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"max_steps": 2, "eval_steps": 2, "n_epochs": 1, "domain": "support",
                            "template": "reply-drafting", **TINY}}}}
    refused = call(service, "POST", "/fine_tuning/jobs", json=body).json()["error"]
    assert refused["code"] == "invalid_training_file" and f"/files/{f['id']}/fix?domain=support" in refused["message"]

    fixed = call(service, "POST", f"/tunesmith/files/{f['id']}/fix?domain=support")
    assert fixed.status_code == 200, fixed.text
    fixed = fixed.json()
    assert fixed["data_card"]["domains"]["support"]["errors"] == [] and fixed["data_card"]["fixes"]["redacted"] >= 1
    body["training_file"] = fixed["id"]
    preview = call(service, "POST", "/tunesmith/fine_tuning/preview", json=body)
    assert preview.status_code == 200, preview.text
    created = call(service, "POST", "/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]
    thread = threading.Thread(target=jobs_worker.run_worker, args=(service["db"], service["data_dir"]),
                              kwargs={"name": "w-domain", "poll_s": 0.2, "once": True, "log": lambda *a: None})
    thread.start()
    thread.join(timeout=600)
    job = wait_for(lambda: (j := call(service, "GET", f"/fine_tuning/jobs/{job_id}").json())["status"]
                   in ("succeeded", "failed") and j, what="the job")
    assert job["status"] == "succeeded", job.get("error")

    entries = trail.read(log)[before:]
    assert [e["event"] for e in entries] == ["data_check", "data_check", "train"]
    assert all(e["actor"]["project"] == "acme" and e["actor"]["key"].startswith("key") for e in entries)
    assert entries[1]["redactions"]["rows"] >= 1 and entries[2]["template"] == "reply-drafting"
    assert trail.verify(log) == (True, None)
    run = Path(service["data_dir"]) / "runs" / job_id
    assert load_config(run / "config.yaml").data.system_prompt == get_domain("support").template("reply-drafting").system_prompt
    assert [e["id"] for e in trail.run_entries(run)] == [entries[2]["id"]]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it as root)")
def test_the_job_form_offers_the_packs_and_sends_domain_and_template(service, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    upload(service, write_chat_file(tmp_path / "chat.jsonl", n=20))
    root = service["url"].removesuffix("/v1")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(root + "/")
            page.fill("#key", service["keys"]["acme"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Datasets")).to_be_visible()
            page.get_by_role("link", name="New fine-tune").click()
            expect(page.get_by_role("heading", name="New fine-tune")).to_be_visible()
            expect(page.locator("#domain option")).to_have_count(5)  # none and the four packs
            expect(page.locator("#template")).to_be_disabled()
            page.select_option("#domain", "legal")
            expect(page.locator("#domain-hint")).to_contain_text("legal-confidentiality")
            expect(page.locator("#template option")).to_have_count(3)
            with page.expect_request(lambda r: r.url.endswith("/tunesmith/fine_tuning/preview")
                                     and "clause-classification" in (r.post_data or "")) as sent:
                page.select_option("#template", "clause-classification")
            expect(page.locator("#method")).to_have_value("classify")  # the template's task
            expect(page.locator("#domain-hint")).to_contain_text("Name the category of the clause")
            hp = sent.value.post_data_json["method"]["classify"]["hyperparameters"]
            assert hp["domain"] == "legal" and hp["template"] == "clause-classification"
        finally:
            browser.close()


def test_auto_keeps_the_majority_label_where_redaction_made_rows_identical(tmp_path, tiny_model_dir):
    """CUAD has clauses that differ only in a party's name and carry different labels: once
    the names are redacted they conflict. That is the pack's doing, so auto resolves it (the
    majority label of each) and says so, instead of stopping on an error it created."""
    from tunesmith.workflows.auto import run_auto

    names = ["Acme Corporation", "Globex Corporation", "Initech Inc.", "Umbrella Corporation"]
    rows = [{"text": f"This Agreement shall be governed by the laws of the State of Delaware, clause {i}.",
             "label": "Governing Law"} for i in range(20)]
    rows += [{"text": f"{name} may not assign this Agreement without prior written consent.", "label": label}
             for name, label in zip(names, ["Anti-Assignment", "Anti-Assignment", "Anti-Assignment", "Change Of Control"])]
    rows += [{"text": f"The term of this Agreement is {i} years from the Effective Date.", "label": "Expiration Date"}
             for i in range(2, 22)]
    data = tmp_path / "clauses.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = []
    run_auto(str(data), tmp_path / "run", model=str(tiny_model_dir), say=said.append, domain="legal",
             audit=trail.Audit(tmp_path / "audit.jsonl", trail.api_actor("acme", "key_test")))
    config = load_config(tmp_path / "run" / "config.yaml")
    assert "each keeps its majority label (3 rows dropped" in config.reasons["auto.gate"]
    clean = [json.loads(line) for line in Path(config.data.train).read_text().splitlines()]
    assigned = [r for r in clean if "may not assign" in r["text"]]
    assert len(assigned) == 1 and assigned[0]["label"] == "Anti-Assignment" and "Acme" not in assigned[0]["text"]


def test_a_fix_with_a_conflict_policy_applies_it_again_once_redaction_made_rows_identical(tmp_path):
    from tunesmith.data.quality import fix_data

    names = ["Acme Corporation", "Globex Corporation", "Initech Inc.", "Umbrella Corporation"]
    rows = [{"text": f"{name} may not assign this Agreement without prior written consent.", "label": label}
            for name, label in zip(names, ["Anti-Assignment", "Anti-Assignment", "Change Of Control", "Anti-Assignment"])]
    data = tmp_path / "clauses.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fixed = fix_data(data, tmp_path / "out" / "clean.jsonl", conflicts="keep-majority", profile=get_domain("legal").profile)
    kept = [json.loads(line) for line in (tmp_path / "out" / "clean.jsonl").read_text().splitlines()]
    assert [r["label"] for r in kept] == ["Anti-Assignment"] * 3 and "Acme" not in kept[0]["text"]
    log = [json.loads(line) for line in Path(fixed.log_path).read_text().splitlines()]
    assert [line["reason"] for line in log if line["action"] == "dropped"] == ["conflicting answer once redacted (keep-majority)"]


def test_category_labels_are_not_read_as_identifiers(tmp_path):
    """CUAD's categories ("Cap on Liability", "Rofr/Rofo/Rofn") read as a person and an
    organisation to the named-entity model; labels are category names, which --fix does not
    redact, so flagging them made the gate impossible to pass."""
    from tunesmith.data.quality import check_data

    rows = [{"text": "The aggregate liability of either party shall not exceed the fees paid.", "label": "Cap on Liability"},
            {"text": "The other party shall have a right of first refusal on any sale.", "label": "Rofr/Rofo/Rofn"},
            {"text": "Neither party may assign this agreement without consent.", "label": "Joint IP Ownership"}] * 4
    data = tmp_path / "clauses.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = check_data(data, label_check=False, profile=get_domain("legal").profile)
    assert not [f for f in card.findings if f.check == "identifiers"]
