"""The `tunesmith` command. Each command parses its options, calls one library function and
renders the result with rich; user errors print one sentence, never a traceback.

One module per command group; this file lists every command, in the order `--help` shows them."""

from __future__ import annotations

import typer

from tunesmith.cli import audit, data, domains, evaluate, export, inference, models, service, train

app = typer.Typer(help="Turn a general-purpose LLM into a specialist for your task.", no_args_is_help=True)

app.command("models")(models.list_models_cmd)
app.command("train")(train.train_cmd)
app.command("predict")(inference.predict_cmd)
app.command("score")(inference.score_cmd)
app.command("eval")(evaluate.eval_cmd)
app.command("generate")(inference.generate_cmd)
app.command("chat")(inference.chat_cmd)
app.command("export")(export.export_cmd)
app.command("quickstart")(train.quickstart_cmd)
app.command("tune")(train.tune_cmd)
app.command("auto")(train.auto_cmd)
app.command("domains")(domains.domains_cmd)
app.command("worker")(service.worker_cmd)
app.command("serve")(service.serve_cmd)
app.add_typer(data.app, name="data")
app.add_typer(service.keys_app, name="keys")
app.add_typer(audit.app, name="audit")

__all__ = ["app"]
