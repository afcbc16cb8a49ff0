"""`tunesmith models`: the base models a run can start from."""

from __future__ import annotations

from rich.table import Table

from tunesmith.cli.common import console, user_errors
from tunesmith.models import list_models


@user_errors
def list_models_cmd() -> None:
    """List the built-in base models (usable offline). Any local Hugging Face model folder
    or hub id (when online) works too."""
    table = Table(title="Base models")
    for col in ("name", "parameters", "licence", "status", "description"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m["name"], f"{m['params'] / 1e6:.0f}M", m["licence"], m["status"], m["description"])
    console.print(table)
    console.print("Also accepted: a local model folder (--model ./my-model) or a hub id when online.")
