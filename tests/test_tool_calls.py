"""Tool calling end to end: reading calls out of generated text, the tool-call metrics, test
rows with tools, prompts rendered as training rendered them, the tool_calls evaluation (tiny
model) and the bundled SmolLM2 trained on the shipped sample (integration)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import banking_rows, tiny_run_config

from tunesmith.config import EvalConfig, RunConfig
from tunesmith.evaluate import metrics as M
from tunesmith.evaluate.metrics import parse_tool_calls
from tunesmith.inference.generate import Loaded, generate

SAMPLE = Path(__file__).parents[1] / "src" / "tunesmith" / "samples" / "tool_calls.jsonl"
STATUS = {"type": "function", "function": {"name": "get_order_status", "description": "Look up an order.",
                                           "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                                                          "required": ["order_id"]}}}


def openai_call(name: str, arguments: dict, call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text", [
    '[{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}]',  # tunesmith's JSON fallback
    '{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}',  # a single object
    '{"name": "get_order_status", "arguments": "{\\"order_id\\": \\"NW-1\\"}"}',  # arguments as JSON text
    '{"name": "get_order_status", "parameters": {"order_id": "NW-1"}}',  # Llama's "parameters"
    '{"id": "c", "type": "function", "function": {"name": "get_order_status", "arguments": "{\\"order_id\\": \\"NW-1\\"}"}}',
    '<tool_call>\n{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}\n</tool_call>',  # Hermes / Qwen
    '<tool_call>[{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}]',  # closing tag cut off
    '```json\n[{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}]\n```',  # a code fence
    'Let me check that for you.\n[{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}]',  # after text
])
def test_every_common_call_shape_parses_to_the_same_call(text):
    assert parse_tool_calls(text) == [{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}]


def test_several_calls_and_plain_answers():
    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>'
    assert parse_tool_calls(two) == [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]
    assert parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "b"}]') == [
        {"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]  # no arguments: a function without parameters
    # Text, or JSON that is not a call, is an answer, not a call.
    assert parse_tool_calls("Our Denver store opens at 9 am.") == []
    assert parse_tool_calls("The sizes [8, 9, 10] are in stock.") == []
    assert parse_tool_calls("") == []


@pytest.mark.parametrize("text", [
    '[{"name": "get_order_status", "arguments": {"order_id": "NW-1"}',  # cut off: not valid JSON
    '{"name": "get_order_status", "arguments": {order_id: NW-1}}',  # not JSON
    '{"name": "", "arguments": {}}',  # no name
    '{"name": "get_order_status", "arguments": "order NW-1"}',  # arguments that are not JSON
    '{"name": "get_order_status", "arguments": ["NW-1"]}',  # arguments that are not an object
    '[{"name": "a", "arguments": {}}, {"order_id": "NW-1"}]',  # a list with something that is no call
    "<tool_call>get_order_status(order_id='NW-1')</tool_call>",  # a tag around something that is not JSON
])
def test_a_failed_attempt_is_none_not_an_answer(text):
    assert parse_tool_calls(text) is None


# --------------------------------------------------------------------------- metrics


def test_exact_match_compares_arguments_as_json_and_names_alone_for_name_accuracy():
    expected = [[openai_call("get_order_status", {"order_id": "NW-1", "verbose": True})]]
    reordered = '[{"name": "get_order_status", "arguments": {"verbose": true,   "order_id": "NW-1"}}]'
    assert M.tool_call_exact_match([reordered], expected) == 1.0  # key order and spacing do not matter
    wrong_value = '[{"name": "get_order_status", "arguments": {"order_id": "NW-2", "verbose": true}}]'
    wrong_type = '[{"name": "get_order_status", "arguments": {"order_id": "NW-1", "verbose": "true"}}]'
    missing = '[{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}]'
    for text in (wrong_value, wrong_type, missing):
        assert M.tool_call_exact_match([text], expected) == 0.0
        assert M.tool_name_accuracy([text], expected) == 1.0  # the right function all the same
    other = '[{"name": "cancel_order", "arguments": {"order_id": "NW-1", "verbose": true}}]'
    assert M.tool_name_accuracy([other], expected) == 0.0
    assert M.tool_name_accuracy(["Sure, one moment.", "[{broken"], expected * 2) == 0.0  # no call: wrong


def test_parallel_calls_match_in_any_order_but_not_with_one_missing_or_extra():
    expected = [[openai_call("a", {"x": 1}, "c1"), openai_call("b", {"y": 2}, "c2")]]
    swapped = '[{"name": "b", "arguments": {"y": 2}}, {"name": "a", "arguments": {"x": 1}}]'
    assert M.tool_call_exact_match([swapped], expected) == 1.0
    assert M.tool_name_accuracy([swapped], expected) == 1.0
    one = '[{"name": "a", "arguments": {"x": 1}}]'
    three = '[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": 2}}, {"name": "a", "arguments": {"x": 1}}]'
    for text in (one, three):
        assert M.tool_call_exact_match([text], expected) == 0.0
        assert M.tool_name_accuracy([text], expected) == 0.0


def test_valid_json_and_no_call_shares():
    outputs = ['[{"name": "a", "arguments": {}}]', '[{"name": "a", "arguments": {}', "Happy to help!", '{"name": 3}']
    assert M.valid_json_calls(outputs) == 0.25
    assert M.no_call_accuracy(outputs) == 0.25  # only the plain answer makes no attempt at a call
    assert M.valid_json_calls([]) == 0.0 and M.no_call_accuracy([]) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        M.tool_call_exact_match(outputs, [[]])


def test_tool_call_metrics_split_call_rows_from_text_rows():
    expected = [[openai_call("get_order_status", {"order_id": "NW-1"})], [openai_call("cancel_order", {"order_id": "NW-2"})], []]
    references = ['[{"name": "get_order_status", ...}]', '[{"name": "cancel_order", ...}]', "We are open from 9 am."]
    outputs = ['[{"name": "get_order_status", "arguments": {"order_id": "NW-1"}}]',
               '[{"name": "cancel_order", "arguments": {"order_id": "NW-9"}}]',
               "We are open from 9 am."]
    metrics = M.tool_call_metrics(outputs, expected, references)
    assert metrics == {"tool_name_accuracy": 1.0, "tool_call_exact_match": 0.5, "valid_json_calls": 1.0,
                       "no_call_accuracy": 1.0, "text_token_f1": 1.0}
    only_calls = M.tool_call_metrics(outputs[:2], expected[:2], references[:2])
    assert set(only_calls) == {"tool_name_accuracy", "tool_call_exact_match", "valid_json_calls"}
    assert M.per_tool(outputs, expected) == {
        "cancel_order": {"rows": 1, "tool_name_accuracy": 1.0, "tool_call_exact_match": 0.0},
        "get_order_status": {"rows": 1, "tool_name_accuracy": 1.0, "tool_call_exact_match": 1.0},
    }
    # A call where text was due, and text where a call was due, are both wrong.
    swapped = M.tool_call_metrics(["We are open.", "We are open.", outputs[0]], expected, references)
    assert swapped["valid_json_calls"] == 0.0 and swapped["no_call_accuracy"] == 0.0


# --------------------------------------------------------------------------- rows and prompts


def test_test_rows_with_tools_keep_their_tools_and_expected_calls(tmp_path):
    from tunesmith.data.rows import load_prompts

    rows = [
        {"messages": [{"role": "user", "content": "Where is NW-1?"},
                      {"role": "assistant", "tool_calls": [openai_call("get_order_status", {"order_id": "NW-1"})]}],
         "tools": [STATUS]},
        {"messages": [{"role": "user", "content": "Where is NW-2?"},
                      {"role": "assistant", "tool_calls": [openai_call("get_order_status", {"order_id": "NW-2"})]},
                      {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
                      {"role": "assistant", "content": "It has shipped."}],
         "tools": [STATUS]},
        {"messages": [{"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]},
    ]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RunConfig.model_validate({"data": {"train": str(path)}})
    call, answered, thanks = load_prompts(str(path), config, tools=True)
    assert call["answer"] == "" and call["calls"][0]["function"]["name"] == "get_order_status"
    assert call["tools"] == [STATUS] and call["prompt"][-1]["role"] == "user"
    assert answered["answer"] == "It has shipped." and answered["calls"] == []
    assert [m["role"] for m in answered["prompt"]] == ["user", "assistant", "tool"]  # the result is answered
    assert thanks["tools"] is None and thanks["calls"] == []
    # Without tools=True the rows are as before: no tool keys, and a tool result is not a prompt.
    plain = load_prompts(str(path), config)
    assert len(plain) == 2 and all(set(r) == {"prompt", "answer"} for r in plain)


class _Recorder:
    """A stand-in model that records the prompt ids it is given and answers with end-of-turn."""

    device = "cpu"

    def __init__(self, eos: int):
        self.eos, self.prompts = eos, []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.prompts += [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        return torch.cat([input_ids, torch.full((len(input_ids), 1), self.eos)], dim=1)


def test_generation_renders_tools_and_calls_as_training_did(tiny_tokenizer):
    from tunesmith.train.sft import assistant_spans

    system = "Help with orders."
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Where is NW-7?"},
                {"role": "assistant", "content": "", "tool_calls": [openai_call("get_order_status", {"order_id": "NW-7"})]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
                {"role": "assistant", "content": "It has shipped."}]
    text, spans = assistant_spans(messages, tiny_tokenizer, [STATUS])
    recorder = _Recorder(tiny_tokenizer.eos_token_id)
    loaded = Loaded(recorder, tiny_tokenizer, "recorder", system_prompt=system)
    # Prompts up to each learned assistant turn: the first call, then the answer after the result.
    answers = generate(loaded, [messages[:2], messages[:4]], max_new_tokens=4, tools=[[STATUS], [STATUS]])
    assert answers == ["", ""]
    seen = [tiny_tokenizer.decode(ids) for ids in recorder.prompts]
    assert seen == [text[: start] for start, _ in spans]
    assert "get_order_status" in seen[0] and '"order_id": "NW-7"' in seen[1]  # definitions, then the earlier call
    with pytest.raises(ValueError, match="one per conversation"):
        generate(loaded, [messages[:2]], tools=[])


# --------------------------------------------------------------------------- the tool_calls evaluation


def _tool_file(path: Path, n: int, offset: int = 0) -> Path:
    """Banking queries: two in three answered by a call naming the intent, the rest by text."""
    with path.open("w") as f:
        for i, (text, label) in enumerate(banking_rows(offset + n)[offset:]):
            if i % 3:
                answer = {"role": "assistant", "tool_calls": [openai_call("get_order_status", {"order_id": label})]}
            else:
                answer = {"role": "assistant", "content": label.replace("_", " ")}
            f.write(json.dumps({"messages": [{"role": "user", "content": text}, answer], "tools": [STATUS]}) + "\n")
    return path


def test_tool_rows_get_the_tool_calls_task_report_and_card(tiny_model_dir, tmp_path):
    from tunesmith.evaluate.run import evaluate_run
    from tunesmith.workflows.train_eval import train

    data = _tool_file(tmp_path / "tools.jsonl", 30)
    test = _tool_file(tmp_path / "test.jsonl", 9, offset=30)
    config = tiny_run_config(tiny_model_dir, data, max_steps=2, max_length=256, pack_length=256)
    config.eval.enabled = False
    train(config, tmp_path / "run")
    opts = EvalConfig(forgetting=False, bias=False, max_new_tokens=12, minutes_per_item=3, items_per_week=100)
    results = evaluate_run(tmp_path / "run", test=str(test), options=opts).to_json()

    assert results["task"] == "tool_calls" and results["test"]["rows"] == 9
    keys = {"tool_name_accuracy", "tool_call_exact_match", "valid_json_calls", "no_call_accuracy", "text_token_f1"}
    for side in ("base", "tuned"):
        assert set(results["metrics"][side]) == keys
        assert all(0.0 <= v <= 1.0 for v in results["metrics"][side].values())
    assert keys <= set(M.HIGHER_IS_BETTER)  # the report and the CLI know which way is better
    assert results["tool_calls"]["call_rows"] == 6 and results["tool_calls"]["text_rows"] == 3
    assert results["tool_calls"]["per_tool"]["tuned"]["get_order_status"]["rows"] == 6
    assert results["value"]["accuracy_metric"] == "tool_call_exact_match"
    run = tmp_path / "run"
    answers = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 9
    first_call = next(a for a in answers if a["calls"]["expected"])
    assert first_call["reference"] == json.dumps(first_call["calls"]["expected"])  # the call as training writes it
    assert first_call["calls"]["expected"][0]["name"] == "get_order_status"
    report = (run / "report.html").read_text()
    assert 'id="tool-calls"' in report and "tool call exact match" in report and "valid JSON calls" in report
    card = (run / "MODEL_CARD.md").read_text()
    assert "### Tool calls" in card and "6 test rows expect a tool call" in card
    assert "calling the tools it is offered" in card


# --------------------------------------------------------------------------- the bundled model (integration)


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_learns_to_call_the_shipped_sample_tools(tmp_path):
    """Four LoRA steps of SmolLM2 on the shipped sample, then the tool_calls evaluation on rows
    it did not train on: the base model writes no call the parser can read, the tuned one does."""
    from tunesmith.workflows.train_eval import train

    rows = SAMPLE.read_text().splitlines()
    later = [(r, "tool_calls" in json.loads(r)["messages"][-1]) for r in rows[200:]]  # never trained on here
    data, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    data.write_text("\n".join(rows[:40]) + "\n")
    test.write_text("\n".join([r for r, call in later if call][:6] + [r for r, call in later if not call][:2]) + "\n")
    config = RunConfig.model_validate({
        "data": {"train": str(data), "test": str(test), "validation_split": 0.0},
        "train": {"max_steps": 4, "batch_size": 1, "gradient_accumulation": 1, "pack_length": 1024,
                  "max_length": 1024, "warmup_ratio": 0.0},
        "eval": {"forgetting": False, "bias": False},
    })
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a real model wants both cores (conftest pins one for the tiny model)
    try:
        summary = train(config, tmp_path / "run")
    finally:
        torch.set_num_threads(before)
    results = summary.evaluation.to_json()
    assert summary.global_step == 4 and results["task"] == "tool_calls"
    calls = results["tool_calls"]
    assert calls == calls | {"call_rows": 6, "text_rows": 2}
    base, tuned = results["metrics"]["base"], results["metrics"]["tuned"]
    assert set(tuned) == {"tool_name_accuracy", "tool_call_exact_match", "valid_json_calls", "no_call_accuracy",
                          "text_token_f1"}
    assert tuned["valid_json_calls"] >= 0.5 > base["valid_json_calls"], results["samples"]
    assert tuned["tool_name_accuracy"] > base["tool_name_accuracy"], results["samples"]
