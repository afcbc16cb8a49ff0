"""Training past one process: two launched processes on the CPU (DDP over gloo) against one,
the launch presets, and the refusals."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_run_config, write_chat_file
from tunesmith.cli import app
from tunesmith.config import RunConfig, save_config
from tunesmith.errors import ConfigError, DataError
from tunesmith.train import distributed
from tunesmith.train.distributed import Cluster, accelerate_config
from tunesmith.workflows.train_eval import train

runner = CliRunner()
QUALITY_CHAT = Path(__file__).parent / "data_files" / "quality" / "chat.jsonl"  # fails the data gate


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train_loss"] for r in rows if "train_loss" in r]
    eval_losses = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return train_losses, eval_losses


def test_two_processes_reach_the_loss_range_of_one(tiny_model_dir, tmp_path):
    data = write_chat_file(tmp_path / "chat.jsonl", n=80)
    test = write_chat_file(tmp_path / "test.jsonl", n=20, offset=200)
    # The same 4 rows per optimizer update: 4 in one process, 2 in each of two.
    one = tiny_run_config(tiny_model_dir, data, max_steps=16, batch_size=4, learning_rate=1e-2)
    one.eval.enabled = False
    train(one, tmp_path / "one")

    two = tiny_run_config(tiny_model_dir, data, max_steps=16, batch_size=2, learning_rate=1e-2)
    two.data.test = str(test)
    two.eval.bias = two.eval.forgetting = False
    save_config(two, tmp_path / "two.yaml")
    result = runner.invoke(
        app, ["train", "--config", str(tmp_path / "two.yaml"), "--num-processes", "2", "--output", str(tmp_path / "two")]
    )
    assert result.exit_code == 0, result.output

    run = tmp_path / "two"
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert yaml.safe_load((run / "accelerate.yaml").read_text())["num_processes"] == 2
    assert (run / "report.html").exists()  # the launching process evaluated the result
    summary = json.loads((run / "run.json").read_text())
    assert summary["global_step"] == 16

    train_one, eval_one = _losses(tmp_path / "one")
    train_two, eval_two = _losses(run)
    assert len(train_two) == 16  # one line per step: only the main process writes
    assert max(train_two[-3:]) < train_two[0] - 0.2  # it learned
    # Same data per update, so the same curve, step by step, up to the order of float sums.
    for a, b in zip(train_one + eval_one, train_two + eval_two):
        assert b == pytest.approx(a, rel=0.01)


def test_an_error_in_the_processes_comes_back_as_one_sentence(tiny_model_dir, tmp_path):
    config = tiny_run_config(tiny_model_dir, QUALITY_CHAT, max_steps=2)
    config.distributed.num_processes = 2
    with pytest.raises(DataError, match="data gate"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_presets_are_valid_accelerate_configs(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    for strategy, kind in (("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")):
        config = RunConfig.model_validate({"distributed": {"num_processes": 8, "strategy": strategy}})
        preset = accelerate_config(config, Cluster(num_machines=2, machine_rank=1, main_ip="10.0.0.1"), gpu=True, bf16=True)
        path = tmp_path / f"{strategy}.yaml"
        path.write_text(yaml.safe_dump(preset))
        loaded = ClusterConfig.from_yaml_file(path)  # refuses unknown keys
        assert loaded.distributed_type.value == kind
        assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (8, 2, 1)
        assert loaded.mixed_precision == "bf16"
    assert preset["deepspeed_config"]["zero_stage"] == 3 and preset["deepspeed_config"]["zero3_save_16bit_model"]
    fsdp = accelerate_config(RunConfig.model_validate({"distributed": {"num_processes": 2, "strategy": "fsdp"}}), Cluster(), True, False)
    assert fsdp["fsdp_config"]["fsdp_version"] == 2 and fsdp["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_launches_that_cannot_work_are_refused(tmp_path):
    def config(**d):
        return RunConfig.model_validate({"distributed": d})

    with pytest.raises(ConfigError, match="has none; use --strategy ddp"):
        distributed.check(config(num_processes=2, strategy="zero3"), Cluster())
    with pytest.raises(ConfigError, match="--main-ip"):
        distributed.check(config(num_processes=4), Cluster(num_machines=2, machine_rank=1))
    with pytest.raises(ConfigError, match="multiple of --num-machines"):
        distributed.check(config(num_processes=3), Cluster(num_machines=2, main_ip="10.0.0.1"))
    with pytest.raises(ConfigError, match="--machine-rank must be between 0 and 1"):
        distributed.check(config(num_processes=4), Cluster(num_machines=2, machine_rank=2, main_ip="10.0.0.1"))
    result = runner.invoke(app, ["train", "--data", "x.jsonl", "--num-processes", "1", "--strategy", "fsdp"])
    assert result.exit_code == 1 and "set num_processes to 2 or more" in " ".join(result.output.split())


def test_accumulation_is_shared_by_the_processes(tiny_model_dir, tiny_tokenizer, tmp_path):
    from tunesmith.data.formats import load_data, to_chat
    from tunesmith.train.auto import resolve

    rows = to_chat(load_data(write_chat_file(tmp_path / "chat.jsonl", n=80)))
    base = RunConfig.model_validate({"model": {"name": str(tiny_model_dir)}})
    one = resolve(base, rows, tiny_tokenizer, has_validation_file=False)
    base.distributed.num_processes = 4
    four = resolve(base, rows, tiny_tokenizer, has_validation_file=False)
    assert one.train.gradient_accumulation > 1
    assert four.train.gradient_accumulation == -(-one.train.gradient_accumulation // 4)
    assert "shared by 4 processes" in four.reasons["train.gradient_accumulation"]
