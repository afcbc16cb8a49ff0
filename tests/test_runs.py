"""The run folder (`runs.RunDir`) and the typed results it stores."""

import json

from tunesmith.config import RunConfig, save_config
from tunesmith.runs import EvalResults, RunDir, TrainSummary, complete_checkpoints, final_stage_dir, is_run_dir


def make_run(path, stages):
    config = RunConfig.model_validate({"method": {"stages": stages}})
    path.mkdir(parents=True)
    save_config(config, path / "config.yaml")
    return path


def test_a_multi_stage_run_finds_its_last_stage_and_its_weights(tmp_path):
    run = RunDir(make_run(tmp_path / "run", ["pretrain", "sft"]))
    assert run.exists and is_run_dir(run.path) and not RunDir(tmp_path / "nothing").exists
    assert run.final.path == tmp_path / "run" / "sft" == final_stage_dir(run.path)
    sft = make_run(tmp_path / "run" / "sft", ["sft"])
    assert RunDir(sft).final.path == sft and RunDir(sft).stage == "sft"
    assert run.final.weights is None  # not finished
    (sft / "adapter").mkdir()
    assert run.final.adapter == sft / "adapter" and run.final.weights == sft / "adapter" and run.final.full_weights is None
    (sft / "model").mkdir()
    assert run.final.weights == sft / "model"  # full weights win: they are what a full fine-tune saved


def test_only_checkpoints_written_to_the_end_count(tmp_path):
    run = RunDir(make_run(tmp_path / "run", ["sft"]))
    for step, state in ((4, "{}"), (8, '{"cut'), (12, None), (16, "{}")):
        folder = run.checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert [p.name for p in complete_checkpoints(run.path)] == ["checkpoint-4", "checkpoint-16"]


def test_summaries_and_results_round_trip_with_only_what_was_measured(tmp_path):
    run = RunDir(make_run(tmp_path / "run", ["classify"]))
    assert run.summary() is None and run.results() is None and run.labels is None
    summary = TrainSummary(task="classify", global_step=3, eval_accuracy=None)
    assert summary.to_json() == {"task": "classify", "global_step": 3, "eval_accuracy": None}
    run.summary_file.write_text(json.dumps(summary.to_json()))
    assert run.summary() == summary
    results = EvalResults(run="run", task="labels", stage="classify", base_model="b", tuned_model="run",
                          created="2026-11-30T00:00:00Z", test={"source": "test.csv", "rows": 2, "file": "eval/test.jsonl"},
                          metrics={"base": {"accuracy": 0.5}, "tuned": {"accuracy": 1.0}})
    run.eval_dir.mkdir()
    run.results_file.write_text(json.dumps(results.to_json()))
    assert run.results().metrics["tuned"]["accuracy"] == 1.0 and run.results().test.rows == 2
    run.labels_file.write_text(json.dumps(["a", "b"]))
    assert run.labels == ["a", "b"]
