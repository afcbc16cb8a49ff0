"""`tunesmith audit export|verify`: the audit trail of domain runs (`domains/audit.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.common import console, err, user_errors

app = typer.Typer(help="The audit trail of runs under a domain pack: export it, verify its hash chain.",
                  no_args_is_help=True)

LogOpt = Annotated[Path | None, typer.Option(help="The log to read (default: $TUNESMITH_HOME/audit.jsonl, the CLI's).")]
ServiceOpt = Annotated[Path | None, typer.Option(help="Read the service's log instead: DATA_DIR/audit.jsonl of `tunesmith serve --data-dir`.")]


def _log(log: Path | None, data_dir: Path | None) -> Path:
    # domains.audit imports the data loaders (numpy): not for `tunesmith --help`
    from tunesmith.domains.audit import default_log, service_log
    from tunesmith.errors import TunesmithError

    if log and data_dir:
        raise TunesmithError("Give --log or --data-dir, not both.")
    return log or (service_log(data_dir) if data_dir else default_log())


@app.command("export")
@user_errors
def export_cmd(
    out: Annotated[Path, typer.Option(help="File to write: .csv for a table (nested values as JSON), otherwise JSON Lines.")],
    since: Annotated[str | None, typer.Option(help="Only entries from this date or time on (UTC), e.g. 2025-03-01.")] = None,
    run: Annotated[Path | None, typer.Option(help="Only the entries of this run folder.")] = None,
    log: LogOpt = None,
    data_dir: ServiceOpt = None,
) -> None:
    """Write the audit log's entries (each: event, time, actor, domain and profile, data files
    with SHA-256 and rows, findings, redactions, settings, result, hash chain) to OUT, and say
    whether the chain verifies."""
    # domains.audit imports the data loaders (numpy): not for `tunesmith --help`
    from tunesmith.domains.audit import export, verify

    path = _log(log, data_dir)
    if not path.exists():
        err.print(f"no audit log at {path} yet: it is written by runs under a domain (--domain).")
    count = export(path, out, since, run)
    ok, bad = verify(path)
    console.print(f"{count} entr{'y' if count == 1 else 'ies'} of {path} written to {out}")
    if not ok:
        err.print(f"[red]warning:[/red] the log's hash chain breaks at line {bad}: an entry was changed, removed or "
                  "reordered there (`tunesmith audit verify`).")
        raise typer.Exit(1)


@app.command("verify")
@user_errors
def verify_cmd(log: LogOpt = None, data_dir: ServiceOpt = None) -> None:
    """Check the audit log's hash chain: every entry's hash matches its content and names the
    entry before it. Exit code 1, with the first line that breaks it, when it does not."""
    # domains.audit imports the data loaders (numpy): not for `tunesmith --help`
    from tunesmith.domains.audit import read, verify

    path = _log(log, data_dir)
    ok, bad = verify(path)
    if not ok:
        err.print(f"[red]the hash chain of {path} breaks at line {bad}[/red]: that entry, or the one before it, was "
                  "changed, removed or reordered; compare it with an exported copy.")
        raise typer.Exit(1)
    entries = read(path)
    last = f"; last entry {entries[-1]['id']} ({entries[-1]['event']}, {entries[-1]['time']}), hash {entries[-1]['hash']}" if entries else ""
    console.print(f"{path}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, hash chain intact{last}",
                  highlight=False, soft_wrap=True)
