"""A fine-tuning job request names only allow-listed, bounded hyperparameters, and server
resources (reward functions, reward models, judges) only by the operator's names."""

import json
import math

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.config import RunConfig, save_config
from tunesmith.errors import ConfigError
from tunesmith.jobs import store
from tunesmith.jobs.spec import (
    BY_STAGE,
    COMMON,
    RESOURCE_KEYS,
    STAGE_NAMES,
    Judge,
    Resources,
    build_config,
    server_overrides,
)

from conftest import write_chat_file


def method(stage: str, **hp) -> dict:
    return {"type": stage, stage: {"hyperparameters": hp}}


def config_of(stage: str = "supervised", overrides=None, **hp) -> RunConfig:
    return build_config("tiny", method(stage, **hp), "train.jsonl", None, 7, overrides=overrides)


NOTHING = Resources()


def no_models(_model_id):
    return None


# --------------------------------------------------------------------------- client-named resources


@pytest.mark.parametrize("stage, hp, refusal", [
    # A path or URL where a server resource goes: never taken.
    ("grpo", {"reward_functions": ["/tmp/evil.py"]}, "Unknown reward function '/tmp/evil.py'"),
    ("grpo", {"reward_functions": ["evil.py:reward_x"]}, "Unknown reward function"),
    ("grpo", {"reward_model": "/srv/runs/rm"}, "Unknown reward model '/srv/runs/rm'"),
    ("grpo", {"judge": "http://attacker.example/v1"}, "Unknown judge 'http://attacker.example/v1'"),
    # Config fields that hold paths or URLs are not hyperparameters at all.
    ("grpo", {"judge_url": "http://attacker.example/v1"}, "Unknown hyperparameter 'judge_url'"),
    ("grpo", {"judge_key_env": "AWS_SECRET_ACCESS_KEY"}, "Unknown hyperparameter 'judge_key_env'"),
    ("supervised", {"pretrain": "/etc/passwd"}, "Unknown hyperparameter 'pretrain'"),
    ("supervised", {"replay_file": "/etc/passwd"}, "Unknown hyperparameter 'replay_file'"),
    ("supervised", {"preference": "/etc/shadow"}, "Unknown hyperparameter 'preference'"),
    ("supervised", {"columns": {"text": "x"}}, "Unknown hyperparameter 'columns'"),
    ("supervised", {"reward_functions": ["exact_match"]}, "Unknown hyperparameter 'reward_functions' for method sft"),
    ("supervised", {"beta": 0.1}, "Unknown hyperparameter 'beta' for method sft"),
    ("dpo", {"reward_model": "rm"}, "Unknown hyperparameter 'reward_model' for method dpo"),
    # A regex as target_modules would reach peft's re.fullmatch: names only.
    ("supervised", {"target_modules": "(a+)+$"}, "hyperparameter 'target_modules' must be"),
    ("supervised", {"target_modules": ["q_proj", "../x"]}, "hyperparameter 'target_modules' must be"),
])
def test_client_cannot_name_server_paths_urls_or_unlisted_settings(stage, hp, refusal):
    with pytest.raises(ConfigError, match=refusal.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+").replace("$", r"\$")):
        m = method(stage, **hp)
        overrides = server_overrides(m, NOTHING, no_models)
        build_config("tiny", m, "train.jsonl", None, 7, overrides=overrides)


def test_registered_resources_resolve_to_server_values(tmp_path):
    resources = Resources(reward_functions={"fmt": "/srv/rewards.py:reward_fmt"}, reward_models={"helpful": "/srv/runs/rm"},
                          judges={"qwen": Judge("http://judge.internal/v1", "Qwen2.5", "JUDGE_KEY")})
    m = method("grpo", reward_functions=["exact_match", "fmt"], reward_model="helpful", judge="qwen", num_generations=4)
    overrides = server_overrides(m, resources, no_models)
    assert overrides == {"method.reward_functions": ["exact_match", "/srv/rewards.py:reward_fmt"],
                         "method.reward_model": "/srv/runs/rm", "method.judge_url": "http://judge.internal/v1",
                         "method.judge_model": "Qwen2.5", "method.judge_key_env": "JUDGE_KEY"}
    config = build_config("tiny", m, "train.jsonl", None, 7, overrides=overrides)
    assert config.method.reward_functions == ["exact_match", "/srv/rewards.py:reward_fmt"]
    assert config.method.judge_url == "http://judge.internal/v1" and config.method.judge_key_env == "JUDGE_KEY"
    # The project's own fine-tuned reward model, by its id.
    own = server_overrides(method("rloo", reward_model="ft:tiny:acme::abc"), resources,
                           lambda i: "/data/runs/ftjob-1" if i == "ft:tiny:acme::abc" else None)
    assert own == {"method.reward_model": "/data/runs/ftjob-1"}


def test_the_judge_key_goes_only_to_the_registered_judge(stub_openai, monkeypatch):
    from tunesmith.train.rl import build_rewards

    stub_openai.key = "judge-secret"  # the stub answers 401 to any other key
    stub_openai.reply = lambda messages: "8"
    monkeypatch.setenv("OPS_JUDGE_KEY", "judge-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "server-openai-key")
    resources = Resources(judges={"ops": Judge(stub_openai.url, "stub", "OPS_JUDGE_KEY")})
    m = method("grpo", judge="ops")
    config = build_config("tiny", m, "train.jsonl", None, 7, overrides=server_overrides(m, resources, no_models))
    (judge,) = build_rewards(config)
    assert judge([[{"role": "user", "content": "hi"}]], ["hello"]) == [pytest.approx(7 / 9)]
    monkeypatch.delenv("OPS_JUDGE_KEY")
    with pytest.raises(ConfigError, match="OPS_JUDGE_KEY is not set"):
        build_rewards(config)


# --------------------------------------------------------------------------- bounds and types


@pytest.mark.parametrize("hp, refusal", [
    ({"n_epochs": 0}, "'n_epochs'"),
    ({"n_epochs": 10**9}, "'n_epochs'"),
    ({"n_epochs": -1}, "'n_epochs'"),
    ({"n_epochs": math.nan}, "'n_epochs' must be a finite number"),
    ({"n_epochs": math.inf}, "'n_epochs' must be a finite number"),
    ({"n_epochs": "3"}, "'n_epochs' must be a finite number or \"auto\""),
    ({"batch_size": 0}, "'batch_size'"),
    ({"batch_size": True}, "'batch_size' must be a whole number"),
    ({"batch_size": 2.5}, "'batch_size' must be a whole number"),
    ({"batch_size": 10**12}, "'batch_size'"),
    ({"learning_rate": 5.0}, "'learning_rate'"),
    ({"learning_rate": -1e-4}, "'learning_rate'"),
    ({"learning_rate_multiplier": 0}, "'learning_rate_multiplier'"),
    ({"learning_rate_multiplier": 1e6}, "'learning_rate_multiplier'"),
    ({"max_steps": 2**63}, "'max_steps'"),
    ({"max_steps": 0}, "'max_steps'"),
    ({"lora_r": 10**9}, "'lora_r'"),
    ({"warmup_ratio": 1.5}, "'warmup_ratio'"),
    ({"validation_split": 1.0}, "'validation_split'"),
    ({"test_split": -0.1}, "'test_split'"),
    ({"max_length": 10**9}, "'max_length'"),
    ({"eval_steps": -3}, "'eval_steps'"),
    ({"system_prompt": "x" * 100_000}, "'system_prompt'"),
    ({"system_prompt": 5}, "'system_prompt' must be a string"),
    ({"adapter": "evil"}, "'adapter' must be one of"),
    ({"force": "yes"}, "'force' must be true or false"),
])
def test_out_of_range_or_mistyped_values_are_refused_naming_the_setting(hp, refusal):
    with pytest.raises(ConfigError, match=refusal):
        config_of(**hp)


def test_lora_alpha_follows_the_rank_unless_set():
    assert config_of(lora_r=64).method.alpha == 128
    assert config_of(lora_r=64, lora_alpha=16).method.alpha == 16
    assert config_of().method.alpha == 32


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
NAMES = sorted(set(COMMON) | {k for s in BY_STAGE.values() for k in s} | set(RESOURCE_KEYS) | {"learning_rate_multiplier", "junk"})


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(list(STAGE_NAMES) + ["supervised", "dpo", "nonsense"]) | JSON,
       hp=st.dictionaries(st.sampled_from(NAMES), JSON, max_size=6) | JSON,
       block=st.booleans())
def test_fuzzed_job_specs_give_a_config_or_one_config_error(kind, hp, block):
    """Whatever JSON a client sends as `method`, parsing ends in a config or a ConfigError."""
    m = {"type": kind, str(kind): {"hyperparameters": hp} if block else hp}
    try:
        overrides = server_overrides(m, Resources(reward_functions={"fmt": "/srv/r.py"}), no_models)
        config = build_config("tiny", m, "train.jsonl", None, 7, overrides=overrides)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(config, RunConfig)


# --------------------------------------------------------------------------- through the API


@pytest.fixture
def api(tmp_path, tiny_model_dir):
    from tunesmith.serve.deps import Settings
    from tunesmith.serve.app import create_app

    rewards = tmp_path / "rewards.py"
    rewards.write_text("def reward_short(completions, **kw):\n    return [1.0 for _ in completions]\n")
    settings = Settings(data_dir=tmp_path / "data", models={"tiny": str(tiny_model_dir)},
                        reward_functions={"short": str(rewards)})
    app = create_app(settings)
    key = store.create_key(app.state.sessions, "acme")
    data = write_chat_file(tmp_path / "chat.jsonl", n=12)
    with app.state.sessions.begin() as s:  # a checked chat file, as an upload leaves it
        s.add(store.File(id="file-chat", project="acme", filename="chat.jsonl", purpose="fine-tune", bytes=1,
                         path=str(data), info={"task": "chat", "format": "openai", "rows": 12, "errors": []}))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, app, rewards


def create(client, **body):
    return client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "file-chat"} | body)


@pytest.mark.parametrize("body, refusal", [
    ({"seed": 2**64}, "'seed'"),
    ({"seed": -1}, "'seed'"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata takes up to 16 pairs"),
    ({"metadata": {"k": "v" * 513}}, "metadata takes up to 16 pairs"),
    ({"suffix": "x" * 65}, "'suffix'"),
    ({"method": {"type": "grpo", "grpo": {"hyperparameters": {"reward_functions": ["/tmp/evil.py"]}}}}, "Unknown reward function"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1e300}}}}, "'n_epochs'"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "many"}}}}, "'batch_size'"),
    ({"method": {"type": ["supervised"]}}, "method.type"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": [1, 2]}}}, "hyperparameters must be an object"),
    ({"method": {"type": "supervised", "dpo": {"hyperparameters": {}}}}, "method takes 'type' and 'supervised' only"),
    ({"hyperparameters": {"n_epochs": 0}}, "'n_epochs'"),
])
def test_the_api_answers_400_in_one_sentence_never_500(api, body, refusal):
    client, *_ = api
    answer = create(client, **body)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert refusal in message and "\n" not in message and "Traceback" not in answer.text


def test_a_registered_reward_function_by_name_and_its_path_stays_on_the_server(api, tmp_path):
    client, app, rewards = api
    answer = create(client, method={"type": "grpo", "grpo": {"hyperparameters": {"reward_functions": ["short", "length"]}}})
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert str(rewards) not in json.dumps(job) and str(tmp_path) not in json.dumps(job)
    with app.state.sessions() as s:
        row = s.get(store.Job, job["id"])
    assert row.overrides == {"method.reward_functions": [str(rewards.resolve()), "length"]}
    listed = client.get("/v1/tunesmith/base_models").json()["rewards"]
    assert listed["reward_functions"] == ["exact_match", "contains_answer", "length", "short"]
    assert str(rewards) not in json.dumps(listed)


def test_a_project_names_its_own_reward_model_but_not_another_projects(api, tmp_path):
    client, app, _ = api
    run = tmp_path / "rm-run"
    run.mkdir()
    save_config(RunConfig.model_validate({"method": {"stages": ["reward"]}}), run / "config.yaml")
    with app.state.sessions.begin() as s:
        s.add(store.Model(id="ft:tiny:acme:rm:1", project="acme", base="tiny", job_id="ftjob-a", run_dir=str(run)))
        s.add(store.Model(id="ft:tiny:globex:rm:2", project="globex", base="tiny", job_id="ftjob-b", run_dir=str(run)))
    ok = create(client, method={"type": "grpo", "grpo": {"hyperparameters": {"reward_model": "ft:tiny:acme:rm:1"}}})
    assert ok.status_code == 200, ok.text
    other = create(client, method={"type": "grpo", "grpo": {"hyperparameters": {"reward_model": "ft:tiny:globex:rm:2"}}})
    assert other.status_code == 400 and "Unknown reward model" in other.json()["error"]["message"]


def test_serve_options_and_config_file_register_resources_checked_at_start(tmp_path, tiny_model_dir):
    from tunesmith.serve.config import judges_from_options, pairs, server_settings

    rewards = tmp_path / "rewards.py"
    rewards.write_text("def reward_a(completions, **kw):\n    return [0.0] * len(completions)\n")
    config = tmp_path / "server.yaml"
    config.write_text(f"models: {{tiny: {tiny_model_dir}}}\nmax_tokens: 64\n"
                      f"reward_functions: {{a: {rewards}}}\n"
                      "judges: {j: {url: 'http://judge.internal/v1', model: m, key_env: JUDGE_KEY}}\n")
    settings = server_settings(tmp_path, "sqlite://", config, max_tokens=None, max_batch=4,
                               reward_functions=pairs("--reward-fn", [f"b={rewards}:reward_a"]),
                               judges=judges_from_options(["k=https://other.internal/v1,model-x"]))
    assert settings.max_tokens == 64 and settings.max_batch == 4
    assert settings.reward_functions == {"a": str(rewards.resolve()), "b": f"{rewards.resolve()}:reward_a"}
    assert settings.judges["k"] == {"url": "https://other.internal/v1", "model": "model-x", "key_env": None}
    for bad, refusal in [
        ({"reward_functions": {"x": str(tmp_path / "none.py")}}, "is not a .py file"),
        ({"reward_functions": {"x": f"{rewards}:nope"}}, "defines no function nope"),
        ({"reward_functions": {"exact_match": str(rewards)}}, "is a built-in one"),
        ({"reward_models": {"r": str(tmp_path)}}, "is not a tunesmith run folder"),
        ({"judges": {"j": {"url": "file:///etc/passwd"}}}, "is not an http(s) URL"),
        ({"judges": {"j": {"url": "http://x", "key_env": "A B"}}}, "is not an environment variable name"),
    ]:
        with pytest.raises(ConfigError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
            server_settings(tmp_path, "sqlite://", **bad)
    config.write_text("max_tokens: -5\n")
    with pytest.raises(ConfigError, match="max_tokens must be above 0"):
        server_settings(tmp_path, "sqlite://", config)
    config.write_text("admin_password: x\n")
    with pytest.raises(ConfigError, match="unknown setting 'admin_password'"):
        server_settings(tmp_path, "sqlite://", config)


def test_an_older_database_gains_the_new_column(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE jobs (id VARCHAR(40) PRIMARY KEY, project VARCHAR(64))")
        c.execute("INSERT INTO jobs (id, project) VALUES ('ftjob-old', 'acme')")
    store.connect(f"sqlite:///{db}")
    with sqlite3.connect(db) as c:
        columns = {row[1] for row in c.execute("PRAGMA table_info(jobs)")}
        assert "overrides" in columns
        assert c.execute("SELECT id FROM jobs").fetchall() == [("ftjob-old",)]
