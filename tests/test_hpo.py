"""Hyperparameter search (tune/study.py, `tunesmith tune`) on the tiny model."""

import json

import pytest
from conftest import tiny_run_config, write_chat_file
from test_cli import invoke

from tunesmith.config import RunConfig, apply_overrides, save_config
from tunesmith.errors import ConfigError
from tunesmith.tune.study import Param, run_study, search_space


def test_default_search_space_follows_the_method(tiny_model_dir):
    lora = {p.name: p for p in search_space(RunConfig.model_validate({"model": {"name": str(tiny_model_dir)}}))}
    assert set(lora) == {"train.learning_rate", "train.weight_decay", "method.lora_r", "method.lora_dropout"}
    auto = 4e-3  # the automatic LoRA rate for a tiny model
    assert lora["train.learning_rate"].low == pytest.approx(auto / 4) and lora["train.learning_rate"].log
    prompt = {p.name for p in search_space(RunConfig.model_validate({"method": {"adapter": "prompt"}}))}
    assert "method.num_virtual_tokens" in prompt and "method.lora_r" not in prompt
    dpo = {p.name for p in search_space(RunConfig.model_validate({"method": {"stages": ["dpo"], "adapter": "full"}}))}
    assert dpo == {"train.learning_rate", "train.weight_decay", "method.beta"}
    tuned = apply_overrides(RunConfig(), {"method.lora_r": 32, "train.learning_rate": 1e-3}, source="trial 0")
    assert tuned.method.alpha == 64 and tuned.train.learning_rate == 1e-3
    assert tuned.sources == {"method.lora_r": "trial 0", "train.learning_rate": "trial 0"}


def three_trials(tmp_path, tiny_model_dir):
    """(config, storage, space, enqueue) of a 3-trial study: two good learning rates, then one
    too small to move the loss, which the median pruner stops at its first evaluation, where
    its loss is above the median of the two others."""
    data = write_chat_file(tmp_path / "chat.jsonl", n=40)
    config = tiny_run_config(tiny_model_dir, data, max_steps=8, eval_steps=2)
    storage = f"sqlite:///{tmp_path / 'project.db'}"
    space = [Param("train.learning_rate", 1e-7, 1e-2, log=True)]
    enqueue = [{"train.learning_rate": 5e-3}, {"train.learning_rate": 3e-3}, {"train.learning_rate": 1e-7}]
    return config, storage, space, enqueue


def test_study_of_three_trials_prunes_the_bad_one_and_resumes(tmp_path, tiny_model_dir):
    config, storage, space, enqueue = three_trials(tmp_path, tiny_model_dir)
    summary = run_study(config, tmp_path / "study", 3, "eval_loss", storage, space=space, enqueue=enqueue)
    states = [t["state"] for t in summary["trials"]]
    assert states == ["complete", "complete", "pruned"]
    pruned = summary["trials"][2]
    assert list(pruned["intermediate"]) == [2]  # stopped at its first evaluation
    assert summary["best"]["number"] in (0, 1) and summary["best"]["value"] == min(t["value"] for t in summary["trials"][:2])
    assert summary["importances"] == {"train.learning_rate": 1.0}
    html = (tmp_path / "study" / "study.html").read_text()
    for ident in ('id="best-table"', 'id="trials-table"', 'id="importance-plot"', 'id="history-plot"', 'id="intermediate-plot"'):
        assert ident in html
    assert json.loads((tmp_path / "study" / "study.json").read_text())["counts"]["pruned"] == 1
    assert (tmp_path / "study" / "trial-0" / "adapter").is_dir()

    # The study lives in the database: asking for 4 trials runs one more, keeping the three.
    again = run_study(config, tmp_path / "study", 4, "eval_loss", storage, space=space)
    assert [t["number"] for t in again["trials"]] == [0, 1, 2, 3]
    assert [t["state"] for t in again["trials"][:3]] == states


def test_study_needs_validation_data_and_a_known_objective(tmp_path, tiny_model_dir):
    config = tiny_run_config(tiny_model_dir, tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="objective"):
        run_study(config, tmp_path / "s", 1, "bleu", "sqlite://")
    config.data.validation_split = 0.0
    with pytest.raises(ConfigError, match="validation"):
        run_study(config, tmp_path / "s", 1, "eval_loss", "sqlite://")


def test_tune_command_runs_a_study_and_evaluates_the_best_trial(tmp_path, tiny_model_dir):
    data = write_chat_file(tmp_path / "chat.jsonl", n=40)
    test = write_chat_file(tmp_path / "test.jsonl", n=10, offset=40)
    config = tiny_run_config(tiny_model_dir, data, max_steps=4, eval_steps=2)
    config.data.test = str(test)
    config.eval.forgetting = config.eval.bias = False
    save_config(config, tmp_path / "run.yaml")
    result = invoke("tune", tmp_path / "run.yaml", "--trials", "2", "--output", tmp_path / "study", "--data-dir", tmp_path / "project")
    assert result.exit_code == 0, result.output
    assert "study report:" in result.output and "best: trial" in result.output
    best = json.loads((tmp_path / "study" / "study.json").read_text())["best"]
    assert (tmp_path / "study" / f"trial-{best['number']}" / "report.html").exists()  # before/after on the best
    assert (tmp_path / "project" / "tunesmith.db").exists()


@pytest.mark.slow
def test_ray_backend_runs_the_same_study_on_a_local_ray_instance(tmp_path, tiny_model_dir):
    config, storage, space, enqueue = three_trials(tmp_path, tiny_model_dir)
    seen = []
    # No address: tunesmith starts a Ray instance on this machine and stops it at the end.
    summary = run_study(config, tmp_path / "study", 3, "eval_loss", storage, space=space, enqueue=enqueue,
                        backend="ray", on_trial=lambda t: seen.append(t.state.name))
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete", "pruned"]
    assert seen == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert list(summary["trials"][2]["intermediate"]) == [2]  # the study's pruner stopped it in the Ray worker
    assert [t["params"]["train.learning_rate"] for t in summary["trials"]] == [5e-3, 3e-3, 1e-7]
    assert summary["best"]["value"] == min(t["value"] for t in summary["trials"][:2])
    assert (tmp_path / "study" / "trial-1" / "adapter").is_dir() and (tmp_path / "study" / "study.html").exists()

    # The same study, resumed by the local backend.
    again = run_study(config, tmp_path / "study", 4, "eval_loss", storage, space=space)
    assert [t["state"] for t in again["trials"]][:3] == ["complete", "complete", "pruned"] and len(again["trials"]) == 4
