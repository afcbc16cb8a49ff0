"""The audit trail of domain runs: an append-only JSON Lines log, one entry per event.

Every run under a domain pack (``config.domain``) writes an entry when its data is checked
(``data_check``), when it trains (``train``, or ``auto``), when it is evaluated (``eval``) and
when it is exported (``export``). An entry says what data the run saw (each file's SHA-256 and
row count, the data gate's findings per check and per identifier kind, the rows redacted), who
ran it (the OS user and host for the CLI; the project and API key id for the service), the
domain and its compliance profile, the resolved settings and the result.

Entries form a hash chain: each carries ``prev``, the ``hash`` of the entry before it, and its
own ``hash``, the SHA-256 of its canonical JSON (sorted keys, without ``hash``). Editing,
reordering or deleting an entry breaks the chain at that line, which ``verify`` reports. The
run folder keeps the ids and hashes of its entries (``RUN/audit.json``), so the model card
cites them and a log cut short after them is noticed too. The chain shows tampering; it does
not prevent it (whoever can write the file can rewrite the whole chain), so keep an exported
copy, or the hashes, where the writers of the log cannot reach.

Where: ``$TUNESMITH_HOME/audit.jsonl`` for the CLI (the folder tunesmith keeps its cache in),
``DATA_DIR/audit.jsonl`` for the service (``tunesmith serve --data-dir``).
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import json
import os
import re
import socket
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tunesmith.data.formats import load_data
from tunesmith.domains.packs import get_domain
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.models import tunesmith_home
from tunesmith.runs import RunDir

LOG_NAME = "audit.jsonl"
GENESIS = "0" * 64  # the `prev` of the first entry
EVENTS = ("data_check", "train", "auto", "eval", "export")
# The data files of a run, by their config field, in the order an entry lists them.
DATA_FIELDS = ("train", "validation", "test", "pretrain", "preference", "prompts", "replay_file")
CSV_COLUMNS = ("seq", "id", "time", "event", "actor", "domain", "profile", "template", "run", "data", "findings",
               "redactions", "result", "settings", "prev", "hash")


def default_log() -> Path:
    """The CLI's log: ``$TUNESMITH_HOME/audit.jsonl`` (default ``~/.cache/tunesmith``)."""
    return tunesmith_home() / LOG_NAME


def service_log(data_dir: str | Path) -> Path:
    """The service's log, in its data folder beside the database."""
    return Path(data_dir) / LOG_NAME


def cli_actor() -> dict:
    """Who runs a CLI command: the OS user at this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (a container)
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return {"kind": "cli", "user": user, "host": socket.gethostname(), "cwd": os.getcwd()}


def api_actor(project: str, key_id: str | None) -> dict:
    """Who asked the service: the API key's project and the key's id (never the key)."""
    return {"kind": "api", "project": project, "key": key_id or "unknown"}


def actor_text(actor: dict | None) -> str:
    """An actor in a few words: ``alice@host``, or ``project acme, key key_x``."""
    if not actor:
        return "unknown"
    if actor.get("kind") == "api":
        return f"project {actor.get('project')}, key {actor.get('key')}"
    return f"{actor.get('user')}@{actor.get('host')}"


@dataclass(frozen=True)
class Audit:
    """Where a run's entries go and whom they name; the default is the CLI's log and user."""

    log: Path = field(default_factory=default_log)
    actor: dict = field(default_factory=cli_actor)


# --------------------------------------------------------------------------- the log


def entry_hash(entry: dict) -> str:
    """SHA-256 of an entry's canonical JSON, without its own ``hash``."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _last_line(f) -> bytes:
    """The last non-empty line of a file open in binary mode, read backwards from the end."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    chunk, data = 8192, b""
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
        stripped = data.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    return data.rstrip(b"\n")


class _Locked:
    """The log open for appending, with an exclusive lock (POSIX ``flock``) while the last
    entry is read and the new one written: a CLI run and the service's worker may append at once."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only: entries name data files, users and projects.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.f = os.fdopen(fd, "a+b")
        try:
            import fcntl  # POSIX only; elsewhere appends are not locked

            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        except ImportError:
            pass
        return self.f

    def __exit__(self, *exc):
        self.f.close()  # closing releases the lock


def append(event: dict, log: str | Path | None = None) -> dict:
    """Append one entry to the log (``default_log()`` unless given) and return it as written:
    ``event`` plus ``seq``, ``id``, ``time`` (UTC, ISO 8601), ``prev`` and ``hash``. An
    ``event`` needs its ``event`` kind (one of ``EVENTS``)."""
    if event.get("event") not in EVENTS:
        raise ConfigError(f"an audit entry's event must be one of {', '.join(EVENTS)}, not {event.get('event')!r}.")
    path = Path(log) if log else default_log()
    with _Locked(path) as f:
        last = _last_line(f)
        if last:
            try:
                previous = json.loads(last)
                prev, seq = previous["hash"], int(previous["seq"]) + 1
            except (ValueError, KeyError, TypeError):
                raise TunesmithError(f"The audit log {path} ends in a line that is not an audit entry; "
                                     f"run `tunesmith audit verify --log {path}` and restore it from a copy.") from None
        else:
            prev, seq = GENESIS, 1
        entry = {"seq": seq, "id": f"aud_{uuid.uuid4().hex[:16]}",
                 "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **event, "prev": prev}
        entry["hash"] = entry_hash(entry)
        f.seek(0, os.SEEK_END)
        f.write((json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return entry


def read(log: str | Path | None = None) -> list[dict]:
    """Every entry of the log, in order (none when it does not exist yet)."""
    path = Path(log) if log else default_log()
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise TunesmithError(f"{path} line {number} is not JSON: the log was edited; "
                                 f"`tunesmith audit verify --log {path}` says where the chain breaks.") from None
    return out


def verify(log: str | Path | None = None) -> tuple[bool, int | None]:
    """Check the hash chain: each entry's ``hash`` matches its content and its ``prev`` is
    the ``hash`` of the entry before it (the first one's is ``GENESIS``), and ``seq`` counts
    up by one. Returns (True, None), or (False, the first line number that breaks it)."""
    path = Path(log) if log else default_log()
    if not path.exists():
        return True, None
    prev, seq = GENESIS, 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
            ok = (isinstance(entry, dict) and entry.get("prev") == prev and entry.get("hash") == entry_hash(entry)
                  and entry.get("seq") == seq + 1)
        except ValueError:
            ok = False
        if not ok:
            return False, number
        prev, seq = entry["hash"], entry["seq"]
    return True, None


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text}: write a date (2025-03-01) or a time (2025-03-01T14:00:00Z).") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _of_run(run: str | Path):
    """A test for the entries of run ``run``: those its ``RUN/audit.json`` lists, or whose run
    folder is that path (or, for a path that is not there, ends in that name)."""
    folder = RunDir(Path(run))
    ids = {e["id"] for e in run_entries(folder.path)}
    target = str(folder.path.resolve())
    name = Path(run).name

    def match(entry: dict) -> bool:
        where = str(entry.get("run") or "")
        return entry.get("id") in ids or where == target or (not folder.path.exists() and Path(where).name == name)

    return match


def select(log: str | Path | None = None, since: str | None = None, run: str | Path | None = None) -> list[dict]:
    """The log's entries from ``since`` (a date or ISO time, UTC) on, of run ``run`` when given."""
    entries = read(log)
    if since:
        start = _since(since)
        entries = [e for e in entries if _since(str(e.get("time"))) >= start]
    if run is not None:
        match = _of_run(run)
        entries = [e for e in entries if match(e)]
    return entries


def export(log: str | Path | None, out: str | Path, since: str | None = None, run: str | Path | None = None) -> int:
    """Write the log's entries (from ``since``, of ``run``: see ``select``) to ``out``: CSV when
    it ends in ``.csv`` (nested values as JSON text, the actor in words), JSON Lines
    otherwise, every entry as logged (so the copy verifies on its own when nothing was
    filtered). Returns the number of entries written."""
    entries = select(log, since, run)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for e in entries:
                row = []
                for column in CSV_COLUMNS:
                    value = actor_text(e.get("actor")) if column == "actor" else e.get(column)
                    row.append(json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (dict, list))
                               else "" if value is None else value)
                writer.writerow(row)
    else:
        with out.open("w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps(e, ensure_ascii=False, default=str) + "\n")
    return len(entries)


# --------------------------------------------------------------------------- what an entry says


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder (each file's relative name and content, in order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            digest.update(str(p.relative_to(path)).encode("utf-8") + b"\0")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_facts(path: str | Path, role: str = "train", columns: dict | None = None) -> dict:
    """A data file as an entry lists it: role, path (as the run's config names it; a CLI entry's
    actor has the folder it is relative to), SHA-256 and rows (None where it cannot be read
    as data; a file that is gone has no hash either)."""
    facts: dict = {"role": role, "path": str(path)}
    if not Path(path).exists():
        return facts | {"sha256": None, "rows": None, "note": "not found when the entry was written"}
    facts["sha256"] = sha256_of(path)
    try:
        facts["rows"] = len(load_data(path, columns=columns).records)
    except (TunesmithError, OSError, ValueError):
        facts["rows"] = None
    return facts


_IDENTIFIER_FINDING = re.compile(r"\d+ rows? contains? \d+ (\w+) identifiers")


def findings_summary(card: dict | None) -> dict:
    """The data gate's findings in an entry: errors and warnings, rows per check, and rows
    per identifier kind where the findings name their kinds."""
    if not card:
        return {}
    findings = card.get("findings") or []
    by_check: Counter = Counter()
    kinds: Counter = Counter()
    for f in findings:
        count = int(f.get("count") or 0)
        by_check[f.get("check", "?")] += count
        named = f.get("kinds")
        if isinstance(named, dict):
            kinds.update({str(k): int(v or 0) for k, v in named.items()})
        elif f.get("kind"):
            kinds[str(f["kind"])] += count
        elif f.get("check") == "identifiers" and (m := _IDENTIFIER_FINDING.match(str(f.get("message", "")))):
            kinds[m.group(1)] += count  # the gate writes one finding per kind: "N rows contain K person identifiers ..."
    stats = card.get("stats") or {}
    if isinstance(stats.get("identifiers"), dict) and not kinds:
        kinds.update({str(k): int(v or 0) for k, v in stats["identifiers"].items() if isinstance(v, (int, float))})
    out = {"errors": sum(1 for f in findings if f.get("severity") == "error"),
           "warnings": sum(1 for f in findings if f.get("severity") == "warning"),
           "rows_by_check": dict(by_check)}
    if kinds:
        out["identifiers"] = dict(kinds)
    if card.get("profile"):
        out["profile"] = card["profile"]
    if stats.get("trained_despite_errors"):
        out["trained_despite_errors"] = True
    return out


def redactions_from_log(log_path: str | Path) -> dict:
    """Rows redacted by ``fix_data`` and the placeholders per kind, from its ``fix_log.jsonl``."""
    rows, kinds = 0, Counter()
    path = Path(log_path)
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if item.get("action") == "redacted":
                rows += 1
                kinds.update({str(k): int(v or 0) for k, v in (item.get("kinds") or {}).items()})
    return {"rows": rows, "kinds": dict(kinds)}


def pack_fields(domain: str, template: str | None = None) -> dict:
    """The domain, its compliance profile and regulation, and the template, as entries name them."""
    pack = get_domain(domain)
    return {"domain": pack.name, "profile": pack.profile.name, "regulation": pack.profile.regulation,
            "template": template}


def run_entries(run_dir: str | Path) -> list[dict]:
    """The entries written about a run (id, event, time, hash), oldest first."""
    path = RunDir(Path(run_dir)).audit_file
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("entries") or [])
    except (ValueError, AttributeError):
        return []


def run_log(run_dir: str | Path) -> Path | None:
    """The log a run's entries were written to (as ``RUN/audit.json`` records it)."""
    path = RunDir(Path(run_dir)).audit_file
    try:
        log = json.loads(path.read_text(encoding="utf-8")).get("log") if path.exists() else None
    except (ValueError, AttributeError):
        return None
    return Path(log) if log else None


def full_entries(run_dir: str | Path) -> list[dict]:
    """A run's entries as the log holds them (every field); an entry the log no longer has
    (moved, cut short) appears as ``RUN/audit.json`` records it, with ``missing: True``."""
    brief = run_entries(run_dir)
    log = run_log(run_dir)
    found: dict[str, dict] = {}
    if brief and log is not None and log.exists():
        ids = {e["id"] for e in brief}
        try:
            found = {e["id"]: e for e in read(log) if e.get("id") in ids}
        except TunesmithError:
            found = {}
    return [found.get(e["id"]) or (e | {"missing": True}) for e in brief]


def _remember(run_dir: Path, entry: dict, log: Path) -> None:
    """Add an entry's id, event, time and hash to ``RUN/audit.json``."""
    folder = RunDir(run_dir)
    entries = run_entries(run_dir) + [{k: entry[k] for k in ("id", "event", "time", "hash")}]
    text = json.dumps({"log": str(log), "entries": entries}, indent=1, ensure_ascii=False) + "\n"
    tmp = folder.audit_file.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(folder.audit_file)


def _data_card(folder: RunDir) -> dict | None:
    for path in (folder.final.data_card_file, folder.data_card_file):
        if path.exists():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                return None
    return None


def run_data(folder: RunDir) -> list[dict]:
    """The data files a run's config names, each with its hash and rows."""
    config = folder.config
    out = []
    for name in DATA_FIELDS:
        path = getattr(config.data, name, None)
        if path:
            columns = config.data.columns if name in ("train", "validation", "test") else None
            out.append(file_facts(path, name, columns))
    return out


def record_run(event: str, run_dir: str | Path, audit: Audit | None = None, result: dict | None = None,
               data: list[dict] | None = None, **extra) -> dict | None:
    """Append an entry about the run in ``run_dir`` (if it has a domain; otherwise nothing,
    None) and keep its id in ``RUN/audit.json``. ``data`` defaults to the files its config
    names; the findings come from its data card; ``extra`` fields (``redactions``, ...) join
    the entry. Returns the entry."""
    folder = RunDir(Path(run_dir))
    config = folder.config
    if not config.domain:
        return None
    audit = audit or Audit()
    card = _data_card(folder)
    entry = {
        "event": event,
        "actor": audit.actor,
        **pack_fields(config.domain, config.template),
        "run": str(folder.path.resolve()),
        "data": run_data(folder) if data is None else data,
        "findings": findings_summary(card),
        "redactions": {"rows": 0, "kinds": {}},
        "settings": config.model_dump(mode="json"),
        "result": result or {},
        **extra,
    }
    written = append(entry, audit.log)
    _remember(folder.path, written, Path(audit.log))
    return written


def train_result(summary) -> dict:
    """What a ``train`` entry keeps of a ``TrainSummary``: the figures, not the per-stage detail."""
    figures = summary.to_json()
    figures.pop("stages", None)
    return figures


def eval_result(results) -> dict:
    """What an ``eval`` entry keeps of ``EvalResults``: the task, test set, metrics, alarms
    and the domain sections (abstention, probes, grounding) where measured."""
    r = results.to_json() if hasattr(results, "to_json") else dict(results)
    out = {"task": r.get("task"), "test": r.get("test"), "metrics": r.get("metrics")}
    for key in ("abstention", "domain", "grounding"):
        if r.get(key) is not None:
            out[key] = r[key]
    bias = (r.get("bias") or {}).get("tuned") or {}
    if bias:
        out["bias"] = {k: bias.get(k) for k in ("pairs", "changed_rate", "flagged")}
    if r.get("skipped"):
        out["skipped"] = r["skipped"]
    return out


def record_export(run_dir: str | Path, report: dict, audit: Audit | None = None) -> dict | None:
    """Append an ``export`` entry for a run under a domain (None otherwise): the format, where
    it went, whether it was verified in its runtime, and each exported file with its SHA-256."""
    folder = Path(report.get("folder") or "")
    files = [{"name": f["name"], "bytes": f["bytes"],
              "sha256": sha256_of(folder / f["name"]) if (folder / f["name"]).is_file() else None}
             for f in report.get("files") or []]
    result = {"format": report.get("format"), "quant": report.get("quant"), "lora": report.get("lora"),
              "folder": str(folder), "verified": report.get("verified"), "files": files}
    return record_run("export", run_dir, audit, result=result, data=[])


def record_check(domain: str, files: list[dict], findings: dict, result: dict | None = None,
                 audit: Audit | None = None, fix=None, run: str | None = None, redactions: dict | None = None) -> dict:
    """Append a ``data_check`` entry: the files checked (``file_facts``), the gate's findings
    (``findings_summary``), its ``result`` (rows, quality score, errors), the ``redactions``
    made (``redactions_from_log``), and, when ``fix`` (a ``FixResult``) wrote a cleaned copy,
    its redactions (from its log) and the copy's hash."""
    audit = audit or Audit()
    entry = {"event": "data_check", "actor": audit.actor, **pack_fields(domain), "run": run, "data": files,
             "findings": findings, "redactions": redactions or {"rows": 0, "kinds": {}}, "result": dict(result or {})}
    if fix is not None:
        entry["redactions"] = redactions_from_log(fix.log_path)
        entry["result"]["fixed"] = {"rows_in": fix.rows_in, "rows_out": fix.rows_out, "dropped": fix.dropped,
                                    "redacted": fix.redacted, "changed": fix.changed,
                                    "copy": file_facts(fix.out_path, "fixed")}
    return append(entry, audit.log)
