"""The operator's side of `tunesmith serve`: its settings from a YAML file (`--config`) and
options, with the server-side resources jobs may name checked before the server starts.

```yaml
models: {legal-7b: /srv/models/legal-7b}           # base models beyond the built-in ones
max_upload_mb: 256
reward_functions: {format_ok: /srv/rewards.py:reward_format}   # FILE.py or FILE.py:FUNCTION
reward_models: {helpful: /srv/runs/helpful-rm}     # a reward-model run folder
judges:
  qwen: {url: "http://judge.internal:8000/v1", model: Qwen2.5-72B-Instruct, key_env: JUDGE_KEY}
```

Clients name these by their NAME only; the paths, URLs and keys stay on the server.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path
from urllib.parse import urlparse

import yaml
from pydantic import TypeAdapter, ValidationError

from tunesmith.config import load_config
from tunesmith.errors import ConfigError
from tunesmith.jobs.spec import BUILTIN_REWARD_FUNCTIONS
from tunesmith.models import is_model_dir
from tunesmith.runs import final_stage_dir, is_run_dir
from tunesmith.serve.deps import Settings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")  # what clients type: no ':', '/' or space
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FROM_FILE = {f.name for f in dataclasses.fields(Settings)} - {"data_dir", "database_url"}


def server_settings(data_dir: Path, database_url: str, config_file: str | Path | None = None, **options) -> Settings:
    """Settings from the `--config` YAML file, then the options given (None = not given),
    with every model folder, reward function, reward model and judge checked."""
    values: dict = load_server_config(config_file) if config_file else {}
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, dict):  # repeatable NAME=... options add to the file's entries
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    settings = Settings(data_dir=Path(data_dir), database_url=database_url, **values)
    settings.models = {name: check_model(name, folder) for name, folder in settings.models.items()}
    settings.reward_functions = {n: check_reward_function(n, spec) for n, spec in settings.reward_functions.items()}
    settings.reward_models = {n: check_reward_model(n, run) for n, run in settings.reward_models.items()}
    settings.judges = {n: check_judge(n, judge) for n, judge in settings.judges.items()}
    return settings


def load_server_config(path: str | Path) -> dict:
    """The Settings fields a server config file sets, each checked against its type."""
    path = Path(path).expanduser()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError:
        raise ConfigError(f"Server config {path} cannot be read; check the path.") from None
    except yaml.YAMLError:
        raise ConfigError(f"Server config {path} is not valid YAML; fix the syntax.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Server config {path} must be a mapping of setting: value.")
    hints = typing.get_type_hints(Settings)
    out = {}
    for key, value in raw.items():
        if key not in FROM_FILE:
            raise ConfigError(f"Server config {path}: unknown setting '{key}'; use {', '.join(sorted(FROM_FILE))}.")
        try:
            out[key] = TypeAdapter(hints[key]).validate_python(value, strict=False)
        except ValidationError as exc:
            raise ConfigError(f"Server config {path}: {key}: {exc.errors()[0]['msg']}.") from None
        if isinstance(out[key], (int, float)) and not isinstance(out[key], bool) and out[key] <= 0:
            raise ConfigError(f"Server config {path}: {key} must be above 0.")
    return out


def pairs(option: str, specs: list[str] | None, what: str = "VALUE") -> dict[str, str] | None:
    """`NAME=VALUE` options as a dict (None when the option was not given)."""
    if not specs:
        return None
    out = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        if not value or not NAME.fullmatch(name):
            raise ConfigError(f"{option} {spec}: write NAME={what}, with no ':', '/' or space in NAME.")
        out[name] = value
    return out


def judges_from_options(specs: list[str] | None) -> dict[str, dict] | None:
    """`--judge NAME=URL[,MODEL[,KEY_ENV]]` options as judge entries."""
    given = pairs("--judge", specs, "URL[,MODEL[,KEY_ENV]]")
    if given is None:
        return None
    out = {}
    for name, value in given.items():
        url, model, key_env = (value.split(",", 2) + [None, None])[:3]
        out[name] = {"url": url, "model": model or None, "key_env": key_env or None}
    return out


def _name(kind: str, name: str) -> None:
    if not NAME.fullmatch(name):
        raise ConfigError(f"{kind} name '{name}': use letters, digits, '_', '.' and '-' only (no ':', '/' or space).")


def check_model(name: str, folder: str) -> str:
    _name("model", name)
    path = Path(folder).expanduser()
    if not is_model_dir(path):
        raise ConfigError(f"model {name}: {folder} is not a Hugging Face model folder (no config.json).")
    return str(path.resolve())


def check_reward_function(name: str, spec: str) -> str:
    """`FILE.py` or `FILE.py:FUNCTION` as an absolute spec, after checking the file parses and
    defines what it should (without running it: that happens in the worker)."""
    _name("reward function", name)
    if name in BUILTIN_REWARD_FUNCTIONS:
        raise ConfigError(f"reward function name '{name}' is a built-in one; choose another name.")
    file, _, function = spec.partition(":")
    path = Path(file).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"reward function {name}: {file} is not a .py file; give FILE.py or FILE.py:FUNCTION.")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"reward function {name}: {file} does not parse ({exc}); fix it.") from None
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if function and function not in defined:
        raise ConfigError(f"reward function {name}: {file} defines no function {function}.")
    if not function and not any(d.startswith("reward_") for d in defined):
        raise ConfigError(f"reward function {name}: {file} defines no function named reward_*; give {file}:FUNCTION.")
    return f"{path.resolve()}:{function}" if function else str(path.resolve())


def check_reward_model(name: str, run: str) -> str:
    _name("reward model", name)
    path = Path(run).expanduser()
    if not is_run_dir(path):
        raise ConfigError(f"reward model {name}: {run} is not a tunesmith run folder (no config.yaml).")
    final = final_stage_dir(path)
    if load_config(final / "config.yaml").method.stages[-1] != "reward":
        raise ConfigError(f"reward model {name}: {run} is not a reward-model run (train one with --method reward).")
    return str(final.resolve())


def check_judge(name: str, judge: dict) -> dict:
    _name("judge", name)
    if not isinstance(judge, dict) or set(judge) - {"url", "model", "key_env"} or "url" not in judge:
        raise ConfigError(f"judge {name}: give url, and optionally model and key_env.")
    url = urlparse(str(judge["url"]))
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(f"judge {name}: {judge['url']} is not an http(s) URL.")
    key_env = judge.get("key_env")
    if key_env is not None and not ENV_NAME.fullmatch(str(key_env)):
        raise ConfigError(f"judge {name}: key_env {key_env} is not an environment variable name.")
    return {"url": str(judge["url"]), "model": judge.get("model"), "key_env": key_env}
