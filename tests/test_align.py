"""Reward models, offline preference optimisation (DPO family, KTO) and RL (GRPO, RLOO) on
the tiny model, with toy data built to be learnable."""

import json
import math

import pytest
from conftest import banking_rows, tiny_run_config
from test_cli import assert_one_sentence_error, invoke

from tunesmith.errors import ConfigError, DataError

KEYWORD = "refund"


def write_preference_file(path, n=48):
    """Pairs whose chosen answer starts with a keyword and whose rejected answer does not:
    learnable by any preference method in a few steps."""
    with path.open("w") as f:
        for text, label in banking_rows(n):
            row = {
                "prompt": [{"role": "user", "content": text}],
                "chosen": [{"role": "assistant", "content": f"{KEYWORD} {label}"}],
                "rejected": [{"role": "assistant", "content": label}],
            }
            f.write(json.dumps(row) + "\n")
    return path


def align_config(model_dir, data, stage, **train):
    values = dict(max_steps=16, learning_rate=5e-3, eval_steps=8, batch_size=4, gradient_accumulation=1)
    values.update(train)
    config = tiny_run_config(model_dir, data, **values)
    config.method.stages = [stage]
    config.train.best_metric = "auto"
    return config


def metric_series(run_dir, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def rises(values, k=3):
    """The mean of the last k values is above the mean of the first k."""
    return sum(values[-k:]) / k > sum(values[:k]) / k


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize("method", ["dpo", "orpo", "simpo", "kto"])
def test_preference_method_raises_the_margin(method, tmp_path, tiny_model_dir):
    from tunesmith.workflows.train_eval import train

    data = write_preference_file(tmp_path / "pairs.jsonl")
    summary = train(align_config(tiny_model_dir, data, method), tmp_path / "run")
    run = tmp_path / "run"
    losses = metric_series(run, "train_loss")
    assert all(math.isfinite(x) for x in losses) and len(set(losses)) > 1
    margins = metric_series(run, "rewards/margins")
    assert rises(margins), margins
    assert summary.task == method and (run / "adapter" / "adapter_config.json").exists()
    assert summary.beta == {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1}[method]


@pytest.mark.parametrize("loss", ["ipo", "robust"])
def test_dpo_losses(loss, tmp_path, tiny_model_dir):
    from tunesmith.workflows.train_eval import train

    data = write_preference_file(tmp_path / "pairs.jsonl")
    config = align_config(tiny_model_dir, data, "dpo", max_steps=8)
    config.method.dpo_loss = loss
    train(config, tmp_path / "run")
    assert rises(metric_series(tmp_path / "run", "rewards/margins"), k=2)


def test_dpo_reference_is_the_adapter_switched_off(tmp_path, tiny_model_dir):
    """With an adapter, DPO keeps one copy of the base model in memory."""
    from datasets import Dataset
    from trl import DPOTrainer

    from tunesmith.models import load_tokenizer
    from tunesmith.train.common import load_base, wrap_model
    from tunesmith.train.preference import trainer_for

    data = write_preference_file(tmp_path / "pairs.jsonl", n=8)
    config = align_config(tiny_model_dir, data, "dpo")
    config.method.beta = 0.1

    model = wrap_model(load_base(config), config, "CAUSAL_LM", tmp_path, False)
    trainer_class, args = trainer_for(config, tmp_path, False, [])
    assert trainer_class is DPOTrainer
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(str(tiny_model_dir)))
    assert trainer.ref_model is None


def test_kto_reads_unpaired_feedback_and_balances_it(tmp_path, tiny_model_dir):
    from tunesmith.train.preference import kto_weights, unpaired
    from tunesmith.workflows.train_eval import train

    path = tmp_path / "feedback.jsonl"
    with path.open("w") as f:
        for i, (text, label) in enumerate(banking_rows(60)):
            good = i % 3 == 0  # a third thumbs-up
            answer = f"{KEYWORD} {label}" if good else label
            f.write(json.dumps({"prompt": text, "completion": answer, "label": good}) + "\n")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    desirable, undesirable, _ = kto_weights([{"label": r["label"]} for r in rows])
    assert desirable == pytest.approx(2.0) and undesirable == 1.0  # 20 good x 2 = 40 bad
    pair = {"prompt": [], "chosen": ["a"], "rejected": ["b"]}
    assert [r["label"] for r in unpaired([pair])] == [True, False]
    summary = train(align_config(tiny_model_dir, path, "kto", max_steps=8), tmp_path / "run")
    assert summary.train_rows > 0 and math.isfinite(summary.train_loss)


def test_dpo_on_chat_data_is_one_sentence(tmp_path, tiny_model_dir, tiny_chat_file):
    from tunesmith.workflows.train_eval import train

    with pytest.raises(DataError, match="needs prompt/chosen/rejected pairs"):
        train(align_config(tiny_model_dir, tiny_chat_file, "dpo"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_long_prompts_lose_their_earliest_turns(tiny_tokenizer):
    from tunesmith.data.rows import chat_tokens, fit_prompt

    turns = []
    for text, label in banking_rows(12):
        turns += [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
    prompt = [{"role": "system", "content": "Be brief."}] + turns[:-1]
    answer = [{"role": "assistant", "content": "refund"}]
    fitted, shortened = fit_prompt(prompt, [answer], tiny_tokenizer, 120)
    assert shortened and len(chat_tokens(fitted + answer, tiny_tokenizer)) <= 120
    assert fitted[0]["role"] == "system" and fitted[1]["role"] == "user" and fitted[-1] == prompt[-1]
    assert fit_prompt(prompt, [answer], tiny_tokenizer, 10_000) == (prompt, False)


# --------------------------------------------------------------------------- reward model


def test_reward_model_learns_the_preference_and_scores(tmp_path, tiny_model_dir):
    from tunesmith.inference.reward import load_reward_model, score_file
    from tunesmith.workflows.train_eval import train

    data = write_preference_file(tmp_path / "pairs.jsonl", n=80)
    config = align_config(tiny_model_dir, data, "reward", max_steps=20)
    config.data.validation_split = 0.25
    summary = train(config, tmp_path / "rm")
    assert summary.task == "reward" and summary.pairwise_accuracy >= 0.9, summary
    assert rises(metric_series(tmp_path / "rm", "accuracy"), k=2) or metric_series(tmp_path / "rm", "accuracy")[-1] == 1.0
    rm = load_reward_model(tmp_path / "rm")
    rows, result = score_file(rm, str(data))
    assert result["pairwise_accuracy"] >= 0.9 and rows[0]["chosen_score"] > rows[0]["rejected_score"]
    good, bad = rm.score([[{"role": "user", "content": "my card"}, {"role": "assistant", "content": f"{KEYWORD} card"}],
                          [{"role": "user", "content": "my card"}, {"role": "assistant", "content": "card"}]])
    assert good > bad


def test_score_cli(tmp_path, tiny_model_dir):
    from tunesmith.workflows.train_eval import train

    data = write_preference_file(tmp_path / "pairs.jsonl", n=40)
    train(align_config(tiny_model_dir, data, "reward", max_steps=4), tmp_path / "rm")
    result = invoke("score", tmp_path / "rm", "--file", data, "--out", tmp_path / "scored.jsonl")
    assert result.exit_code == 0, result.output
    assert "pairwise accuracy" in result.output
    assert len((tmp_path / "scored.jsonl").read_text().splitlines()) == 40
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": "my card", "completion": "refund card"}) + "\n")
    result = invoke("score", tmp_path / "rm", "--file", chat)
    assert result.exit_code == 0 and "mean score" in result.output, result.output
    assert_one_sentence_error(invoke("generate", tmp_path / "rm", "--prompt", "hi"), "tunesmith score")
    assert_one_sentence_error(invoke("score", tmp_path / "nothing", "--file", chat), "not a run directory")


# --------------------------------------------------------------------------- RL

E_REWARD = '''
def reward_letter_e(completions, **kwargs):
    """Share of the letter e in the answer: a dense signal a random model can climb."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [t.count("e") / max(1, len(t)) for t in texts]


def helper():
    return 0
'''


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_rl_with_a_python_reward_raises_the_mean_reward(method, tmp_path, tiny_model_dir, tiny_chat_file):
    """Full weights: a random 2-layer model's output distribution moves visibly only through
    its embeddings (LoRA GRPO is exercised by the sft,reward,grpo test and the benchmark)."""
    from tunesmith.workflows.train_eval import train

    rewards = tmp_path / "rewards.py"
    rewards.write_text(E_REWARD)
    config = align_config(tiny_model_dir, tiny_chat_file, method, max_steps=30, learning_rate=1e-2, eval_steps=10)
    config.method.adapter = "full"
    config.method.reward_functions = [str(rewards)]
    config.method.max_completion_length = 12
    config.method.beta = 0.01
    config.method.num_generations = 8
    config.train.batch_size = 16
    summary = train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert summary.rewards == ["reward_letter_e"]
    assert summary.reward_end > summary.reward_start, summary
    assert metric_series(run, "kl") and metric_series(run, "reward_std")
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and "reward_letter_e" in samples[0]["rewards"] and "answer" in samples[0]


def test_builtin_rewards():
    from tunesmith.train.rl import contains_answer, exact_match, length

    completions = [[{"role": "assistant", "content": " Card  Arrival"}], [{"role": "assistant", "content": "no idea at all"}]]
    answers = ["card arrival", "card arrival"]
    assert exact_match(completions, answers) == [1.0, 0.0]
    assert contains_answer([[{"content": "it is card arrival."}]], ["Card arrival"]) == [1.0]
    assert exact_match(completions[:1], [""]) == [None]  # no reference: no reward, not zero
    assert length(completions, answers) == [1.0, pytest.approx(0.5)]


def test_reward_function_specs_fail_in_one_sentence(tmp_path):
    from tunesmith.train.rl import load_reward_functions

    with pytest.raises(ConfigError, match="neither built in"):
        load_reward_functions("nonsense")
    with pytest.raises(ConfigError, match="does not exist"):
        load_reward_functions(str(tmp_path / "missing.py"))
    (tmp_path / "r.py").write_text(E_REWARD)
    assert [f.__name__ for f in load_reward_functions(str(tmp_path / "r.py"))] == ["reward_letter_e"]
    assert [f.__name__ for f in load_reward_functions(f"{tmp_path / 'r.py'}:helper")] == ["helper"]
    with pytest.raises(ConfigError, match="no function missing"):
        load_reward_functions(f"{tmp_path / 'r.py'}:missing")
    (tmp_path / "broken.py").write_text("import nowhere_to_be_found\n")
    with pytest.raises(ConfigError, match="failed to import"):
        load_reward_functions(str(tmp_path / "broken.py"))


def test_rl_without_a_reward_is_config_error(tmp_path, tiny_model_dir, tiny_chat_file):
    from tunesmith.workflows.train_eval import train

    with pytest.raises(ConfigError, match="needs a reward"):
        train(align_config(tiny_model_dir, tiny_chat_file, "grpo"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_llm_judge_reward(stub_openai):
    from tunesmith.train.rl import judge_function

    stub_openai.reply = lambda messages: "8" if "refund" in messages[-1]["content"].split("Answer:")[1] else "Score: 2/10"
    judge = judge_function(stub_openai.url, "judge-1", "Does it offer a refund?")
    prompts = [[{"role": "user", "content": "my card broke"}]] * 2
    scores = judge(prompts, [[{"role": "assistant", "content": "refund"}], [{"role": "assistant", "content": "no"}]])
    assert scores == [pytest.approx(7 / 9), pytest.approx(1 / 9)]
    assert "Does it offer a refund?" in stub_openai.requests[0]["messages"][0]["content"]


def test_prompts_come_from_any_conversational_data(tmp_path):
    from tunesmith.config import RunConfig
    from tunesmith.data.rows import load_prompts

    config = RunConfig()
    pairs = write_preference_file(tmp_path / "pairs.jsonl", n=3)
    rows = load_prompts(str(pairs), config)
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["answer"].startswith(KEYWORD)
    labels = tmp_path / "labels.csv"
    labels.write_text("text,label\nmy card is late,card_arrival\nwhere is my money,transfer\n")
    config.data.system_prompt = "Answer with the intent."
    rows = load_prompts(str(labels), config)
    assert rows[0] == {"prompt": [{"role": "system", "content": "Answer with the intent."},
                                  {"role": "user", "content": "my card is late"}], "answer": "card_arrival"}


# --------------------------------------------------------------------------- stages


def test_sft_reward_grpo_in_one_config(tmp_path, tiny_model_dir):
    """One preference file drives all three stages: SFT on the chosen answers, a reward model
    on the pairs, then GRPO against that reward model, starting from the SFT weights."""
    from tunesmith.config import load_config
    from tunesmith.inference.generate import load_for_inference
    from tunesmith.workflows.train_eval import train

    data = write_preference_file(tmp_path / "pairs.jsonl", n=40)
    config = align_config(tiny_model_dir, data, "sft", max_steps=4, eval_steps=4)
    config.method.stages = ["sft", "reward", "grpo"]
    config.method.max_completion_length = 8
    config.train.batch_size = 4
    summary = train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert [s.stage for s in summary.stages] == ["sft", "reward", "grpo"]
    assert load_config(run / "reward" / "config.yaml").model.name == str(run / "sft" / "merged")
    grpo = load_config(run / "grpo" / "config.yaml")
    assert grpo.model.name == str(run / "sft" / "merged") and grpo.method.reward_model == str(run / "reward")
    assert summary.rewards == ["reward_model"]
    assert "grpo" in load_for_inference(str(run)).name


def test_stage_order_is_checked():
    from tunesmith.config import parse_config

    for stages, fragment in [
        (["grpo", "sft"], "stages run in the order"),
        (["dpo", "grpo"], "stages run in the order"),
        (["sft", "reward", "dpo"], "used by grpo or rloo only"),
        (["classify", "dpo"], "classifier is the last stage"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            parse_config({"method": {"stages": stages}})
    parse_config({"method": {"stages": ["pretrain", "sft", "reward", "rloo"]}})


def test_train_cli_runs_dpo(tmp_path, tiny_model_dir):
    from tunesmith.config import load_config

    data = write_preference_file(tmp_path / "pairs.jsonl", n=24)
    result = invoke("train", "--data", data, "--model", tiny_model_dir, "--method", "dpo", "--beta", "0.2",
                    "--max-steps", "4", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "validation reward accuracy" in result.output
    config = load_config(tmp_path / "run" / "config.yaml")
    assert config.method.beta == 0.2 and config.train.learning_rate < 1e-3
    result = invoke("train", "--data", data, "--model", tiny_model_dir, "--method", "grpo", "--output", tmp_path / "r2")
    assert_one_sentence_error(result, "needs a reward")


@pytest.mark.parametrize("name", ["openai_dpo.jsonl", "preference.jsonl", "hh_rlhf.jsonl"])
def test_every_preference_format_trains_dpo(name, tmp_path, tiny_model_dir):
    from pathlib import Path

    from tunesmith.data.rows import load_pairs
    from tunesmith.workflows.train_eval import train

    path = Path(__file__).parent / "data_files" / name
    rows = load_pairs(str(path))
    assert rows and all(r["prompt"][-1]["role"] == "user" and r["chosen"] for r in rows)
    config = align_config(tiny_model_dir, path, "dpo", max_steps=2, eval_steps=2)
    config.data.validation_split = 0.0
    config.data.force = True  # the format files are tiny, not clean
    summary = train(config, tmp_path / "run")
    assert math.isfinite(summary.train_loss)
    assert load_pairs(str(Path(__file__).parent / "data_files" / "kto.jsonl"), kto=True)
