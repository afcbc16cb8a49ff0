"""GGUF, Ollama and Hugging Face exports of the tiny model: the file loads back (transformers' GGUF
loader, and llama.cpp where llama-cpp-python is installed) and answers as PyTorch does."""

import importlib.util
import json

import pytest
import torch
from conftest import tiny_run_config

PROMPT = [{"role": "system", "content": "Answer with the intent."}, {"role": "user", "content": "my card has not arrived yet"}]


def _pytorch(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.fixture(scope="module")
def written(tiny_model_dir, tmp_path_factory):
    """The tiny model written as f16, q8_0 and q4_0 GGUF files."""
    from tunesmith.export.gguf import write_gguf

    root = tmp_path_factory.mktemp("gguf")
    return {q: write_gguf(tiny_model_dir, root / q / "model.gguf", q) for q in ("f16", "q8_0", "q4_0")}


def test_gguf_loads_back_with_the_same_logits_and_tokenizer(tiny_model_dir, written):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _pytorch(tiny_model_dir)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = _logits(model, ids)
    error = {}
    for quant, path in written.items():
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        # The tokenizer rebuilt from the file's tokens, merges and template encodes the prompt as the original.
        assert gguf_tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) == text
        assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        got = _logits(loaded, ids)
        error[quant] = ((got - expected).abs().max() / expected.abs().max()).item()
        if quant != "q4_0":  # 16 and 8 bits keep the greedy choice at every position
            assert torch.equal(got.argmax(-1), expected.argmax(-1)), quant
    # Relative to the largest logit: f16 is rounding, q8_0 a little more, q4_0 clearly more. Q and K
    # permuted the wrong way (or not at all) would be far off for every type.
    assert error["f16"] < 2e-3, error
    assert error["q8_0"] < 2e-2, error
    assert error["q4_0"] < 0.12, error
    assert error["f16"] < error["q8_0"] < error["q4_0"], error


def test_gguf_metadata_and_tensor_types(tiny_model_dir, tiny_tokenizer, written):
    from tunesmith.export.gguf import gguf_metadata

    meta = gguf_metadata(written["q4_0"])
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.chat_template"] == tiny_tokenizer.chat_template
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.eot_token_id"] == im_end
    assert meta["tokenizer.ggml.padding_token_id"] == tiny_tokenizer.pad_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the tiny tokenizer adds no bos
    assert meta["tokenizer.ggml.tokens"]["items"] == len(tiny_tokenizer) == meta["llama.vocab_size"]
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    assert meta["llama.rope.dimension_count"] == 16
    types = meta["tensors"]
    assert "output.weight" not in types  # tied: llama.cpp reads the embedding as the output
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.1.ffn_down.weight"] == "Q4_0"
    assert types["token_embd.weight"] == "Q8_0"  # the logits matrix keeps 8 bits in a 4-bit file
    assert gguf_metadata(written["f16"])["tensors"]["blk.0.attn_k.weight"] == "F16"
    sizes = {q: p.stat().st_size for q, p in written.items()}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_0"]


def test_export_gguf_verifies_against_pytorch(tiny_run, tmp_path):
    from tunesmith.export.gguf import export_gguf

    run_dir, _ = tiny_run
    figures = export_gguf(run_dir, tmp_path / "model.gguf", "q8_0", limit=4, max_new_tokens=12)
    assert figures["bytes"] == (tmp_path / "model.gguf").stat().st_size
    check = figures["verification"]
    assert check["prompts"] == 4 and check["max_new_tokens"] == 12
    hf = check["runtimes"]["transformers"]
    assert hf["token_agreement"] >= 0.95 and hf["agreement"] >= 0.75 and hf["tokens_per_s"] > 0 and hf["load_s"] >= 0
    assert set(check["runtimes"]) | set(check.get("skipped", {})) == {"transformers", "llama.cpp"}


def test_verification_fails_a_file_that_answers_differently(tiny_run, tiny_tokenizer, tmp_path):
    """A GGUF file of other weights (a random model of the same shape) must fail verification."""
    from transformers import LlamaForCausalLM

    from tunesmith.errors import ModelError
    from tunesmith.export.gguf import verify_gguf, write_gguf
    from tunesmith.export.merge import save_merged

    run_dir, _ = tiny_run
    merged = save_merged(run_dir)
    torch.manual_seed(1)
    other = LlamaForCausalLM.from_pretrained(merged)
    for p in other.parameters():
        torch.nn.init.normal_(p, std=0.5)
    other.save_pretrained(tmp_path / "other")
    tiny_tokenizer.save_pretrained(tmp_path / "other")
    path = write_gguf(tmp_path / "other", tmp_path / "wrong.gguf", "f16")
    with pytest.raises(ModelError, match="of PyTorch's answer tokens, below the 95% that f16 should keep"):
        verify_gguf(run_dir, path, "f16", limit=4, max_new_tokens=8)


def test_check_figures_fails_what_each_type_should_keep():
    from tunesmith.errors import ModelError
    from tunesmith.export.verify import (
        Answers,
        agreement,
        check_figures,
        prefix_agreement,
        token_agreement,
    )

    assert agreement(["a", "b", "c", "d"], ["a", "b", "x", "d "]) == 0.75
    assert prefix_agreement(["card_arrival", "top_up"], ["card_lost", "top_up"]) == 0.7083  # 5 of 12, then all
    # Teacher forcing: the runtime sees PyTorch's prompt + answer and is scored on the answer's positions.
    forced = Answers(["", ""], [True, True], 5, 1.0, prompt_ids=[[1, 2], [1]], answer_ids=[[3, 4, 5], [6, 7]])
    assert token_agreement(forced, lambda ids: ids[1:] + [0]) == 1.0  # predicts each next token
    assert token_agreement(forced, lambda ids: [9] * len(ids)) == 0.0
    good = {"token_agreement": 1.0, "agreement": 1.0, "stop_share": 1.0, "exact_match": 0.5, "prompts": 20,
            "max_new_tokens": 64}
    pytorch = {"stop_share": 1.0, "exact_match": 0.5}
    check_figures("The file", "q8_0", good, pytorch)
    with pytest.raises(ModelError, match="never ends its answers"):
        check_figures("The file", "q8_0", good | {"stop_share": 0.0}, pytorch)
    check_figures("The file", "q8_0", good | {"stop_share": 0.0}, pytorch | {"stop_share": 0.0})  # nor did PyTorch
    with pytest.raises(ModelError, match="below the 95% that f16 should keep; at this precision"):
        check_figures("The file", "f16", good | {"token_agreement": 0.9}, pytorch)
    check_figures("The file", "q4_0", good | {"token_agreement": 0.7, "agreement": 0.1}, pytorch)  # 4-bit: looser
    with pytest.raises(ModelError, match="predicts 50% of PyTorch's answer tokens, below the 65%"):
        check_figures("The file", "q4_0", good | {"token_agreement": 0.5}, pytorch)
    # Without a token figure (an export checked by whole answers), float types hold to TOLERANCE.
    with pytest.raises(ModelError, match="greedy answer on 50% of 20"):
        check_figures("The file", "f32", {k: v for k, v in good.items() if k != "token_agreement"} | {"agreement": 0.5},
                      pytorch)
    # 4-bit may lose 10 points + one prompt (5 of 20) of exact match, 16-bit 2 + 5.
    check_figures("The file", "q4_0", good | {"exact_match": 0.35}, pytorch)
    with pytest.raises(ModelError, match="drops test exact match from 50% to 30%"):
        check_figures("The file", "q4_0", good | {"exact_match": 0.3}, pytorch)
    with pytest.raises(ModelError, match="drops test exact match"):
        check_figures("The file", "f16", good | {"exact_match": 0.4}, pytorch)


def test_classifier_and_other_architectures_are_refused(tiny_model_dir, tmp_path):
    from tunesmith.config import save_config
    from tunesmith.errors import ModelError
    from tunesmith.export.gguf import export_gguf, gguf_architecture

    config = tiny_run_config(tiny_model_dir, tmp_path / "rows.csv")
    config.method.stages = ["classify"]
    (tmp_path / "run").mkdir()
    save_config(config, tmp_path / "run" / "config.yaml")
    with pytest.raises(ModelError, match="--format onnx or --format hf"):
        export_gguf(tmp_path / "run", tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="GPT2LMHeadModel"):
        gguf_architecture({"architectures": ["GPT2LMHeadModel"]})
    assert gguf_architecture({"architectures": ["Qwen2ForCausalLM"]}) == ("qwen2", False)


def test_ollama_folder_has_gguf_and_modelfile(tiny_run, tmp_path):
    from tunesmith.export.ollama import export_ollama

    run_dir, _ = tiny_run
    figures = export_ollama(run_dir, tmp_path / "ollama", "q8_0", verify=False)
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    assert (tmp_path / "ollama" / "model.gguf").exists() and figures["template"] == "chatml"
    assert text.startswith("FROM ./model.gguf\n")
    assert 'SYSTEM """Answer with the intent."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}" in text and "<|im_start|>assistant\n" in text


def test_modelfile_keeps_a_templates_default_system_prompt(tiny_tokenizer):
    """SmolLM2's template adds a system turn when there is none; without a run system prompt the
    Modelfile's SYSTEM says the same, so Ollama prompts as transformers does."""
    from tunesmith.export.ollama import chat_format, modelfile

    tok = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    tok.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    assert chat_format(tok) == ("chatml", "Be brief.")
    assert 'SYSTEM """Be brief."""' in modelfile(tok, None)
    assert 'SYSTEM """Mine."""' in modelfile(tok, "Mine.")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert chat_format(tok) == (None, None) and "TEMPLATE" not in modelfile(tok, None)


def test_modelfile_recognises_llama3_headers(tiny_tokenizer):
    """Llama 3's template writes the bos token itself, which its tokenizer also adds: the Modelfile
    TEMPLATE leaves it to the runtime (llama.cpp adds it, as add_bos_token says)."""
    from tokenizers import processors

    from tunesmith.export.ollama import LLAMA3, chat_format, modelfile

    backend = tiny_tokenizer.backend_tokenizer.__class__.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    bos = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    tok = tiny_tokenizer.__class__(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>")
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    assert chat_format(tok) == ("llama3", None)
    assert LLAMA3 in modelfile(tok, "Be brief.")


def test_hf_export_stops_on_end_of_turn(tiny_run, tmp_path):
    from transformers import AutoTokenizer

    from tunesmith.export.hf import export_hf

    run_dir, _ = tiny_run
    out = export_hf(run_dir, tmp_path / "hf")
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and any(out.glob("*.safetensors"))
    eos = generation["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    # Exported again into the same folder: a stale shard of an earlier export goes, other files stay.
    (out / "model-00002-of-00002.safetensors").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    export_hf(run_dir, out)
    assert not (out / "model-00002-of-00002.safetensors").exists() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llama_cpp_runs_the_file_as_pytorch(tiny_model_dir, written):
    from llama_cpp import Llama

    model, tokenizer = _pytorch(tiny_model_dir)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = _logits(model, ids)[-1]
    llm = Llama(model_path=str(written["f16"]), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    # llama.cpp's own tokenizer (from the file's tokens, merges and pre-tokenizer) splits as transformers.
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got = torch.tensor(llm.scores[len(ids) - 1])
    assert got.argmax() == expected.argmax()
    assert (got - expected).abs().max() / expected.abs().max() < 1e-2
    # Its chat template (read from the file) and stop token end a greedy answer as transformers' do.
    answer = llm.create_chat_completion(messages=PROMPT, temperature=0.0, max_tokens=8)
    assert answer["usage"]["prompt_tokens"] == len(ids)
    llm.close()


def test_gguf_lora_adapter_metadata(tiny_run, tmp_path):
    from tunesmith.export.gguf import gguf_metadata, write_gguf_lora

    run_dir, _ = tiny_run
    meta = gguf_metadata(write_gguf_lora(run_dir, tmp_path / "adapter.gguf", "f16"))
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 16.0 and meta["general.architecture"] == "llama"
    names = set(meta["tensors"])
    # 7 projections in each of 2 layers, an A and a B for each, named after the base tensor.
    assert len(names) == 28 and {"blk.0.attn_q.weight.lora_a", "blk.1.ffn_down.weight.lora_b"} <= names
    assert not any(n.startswith("token_embd") for n in names)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llama_cpp_base_plus_gguf_lora_is_the_merged_model(tiny_run, tmp_path):
    from llama_cpp import Llama

    from tunesmith.export.gguf import export_gguf_lora
    from tunesmith.export.merge import save_merged

    run_dir, _ = tiny_run
    figures = export_gguf_lora(run_dir, tmp_path, "f32", base_quant="f32", limit=4, max_new_tokens=8)
    assert figures["verification"]["runtimes"]["llama.cpp"]["token_agreement"] >= 0.95
    model, tokenizer = _pytorch(save_merged(run_dir))
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = _logits(model, ids)[-1]
    results = {}
    for lora in (None, figures["file"]):
        llm = Llama(model_path=figures["base_file"], lora_path=lora, n_ctx=256, n_threads=1, logits_all=True, verbose=False)
        llm.eval(ids)
        got = torch.tensor(llm.scores[len(ids) - 1])
        results[lora is not None] = ((got - expected).abs().max() / expected.abs().max()).item()
        llm.close()
    # The base alone is far from the tuned model; with the adapter (Q/K's B permuted, alpha/rank scale) it is it.
    assert results[True] < 1e-3 and results[False] > 0.1, results


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_run_exports_to_gguf_that_answers_and_stops(tmp_path):
    """The bundled SmolLM2 after one LoRA step: a q8_0 file answers held-out banking queries as
    PyTorch does and stops (in transformers' GGUF loader, and in llama.cpp where it is installed)."""
    from conftest import write_chat_file

    from tunesmith.config import RunConfig
    from tunesmith.export.gguf import export_gguf, gguf_metadata
    from tunesmith.train.sft import train_sft

    data = write_chat_file(tmp_path / "chat.jsonl", n=200)  # 200 rows: 20 held out as the test set
    config = RunConfig.model_validate(
        {
            "data": {"train": str(data), "system_prompt": "Reply with the intent name only."},
            "train": {"max_steps": 1, "learning_rate": 1e-3, "pack_length": 256, "eval_steps": 1, "warmup_ratio": 0.0},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a real model wants both cores (conftest pins one for the tiny model)
    try:
        train_sft(config, tmp_path / "run")
        # After one step the model still answers in sentences: 64 tokens lets some of them end.
        figures = export_gguf(tmp_path / "run", tmp_path / "model.gguf", "q8_0", limit=6, max_new_tokens=64)
    finally:
        torch.set_num_threads(threads)
    check = figures["verification"]
    assert check["source"].startswith("6 rows held out")
    assert check["pytorch"]["stop_share"] > 0  # the instruct model ends its turns with <|im_end|>
    for name, runtime in check["runtimes"].items():  # and so does the file, with PyTorch's answers
        assert runtime["stop_share"] >= check["pytorch"]["stop_share"] - 0.2, (name, runtime)
        assert runtime["token_agreement"] >= 0.9, (name, runtime)
    meta = gguf_metadata(tmp_path / "model.gguf")
    assert meta["tokenizer.ggml.eot_token_id"] == meta["tokenizer.ggml.eos_token_id"] == 2  # <|im_end|>
    assert meta["llama.block_count"] == 30 and 100e6 < figures["bytes"] < 200e6


def test_k_quants_need_llama_cpp(tiny_model_dir, tmp_path, monkeypatch):
    """q4_k_m and the other K-quants come from llama.cpp's own quantiser: without llama-cpp-python the
    export says so in one sentence; with it, the file is written (and no f16 intermediate is left)."""
    import sys

    from tunesmith.errors import ModelError
    from tunesmith.export.gguf import gguf_metadata, write_gguf

    if importlib.util.find_spec("llama_cpp") is not None:
        path = write_gguf(tiny_model_dir, tmp_path / "k" / "model.gguf", "q4_k_m")
        assert gguf_metadata(path)["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
        assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as where it is not installed
    with pytest.raises(ModelError, match="needs llama-cpp-python"):
        write_gguf(tiny_model_dir, tmp_path / "model.gguf", "q4_k_m")


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizer_is_named_so_llama_cpp_splits_as_training(pre, tmp_path):
    """Byte-level BPE tokenizers differ in how they split text before merging (digits, spaces,
    case of contractions); the file names llama.cpp's matching split, and llama.cpp's tokens equal
    transformers' on text that tells the splits apart."""
    from conftest import CHATML_TEMPLATE, SPECIAL_TOKENS, banking_rows
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tunesmith.export.gguf import gguf_metadata, write_gguf

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre in ("gpt-2", "smollm"))
    steps = {
        "gpt-2": [byte_level],
        "smollm": [pre_tokenizers.Digits(individual_digits=True), byte_level],
        "llama-bpe": [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"), byte_level],
        "qwen2": [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"), byte_level],
    }[pre]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps) if len(steps) > 1 else steps[0]
    tok.decoder = decoders.ByteLevel()
    lines = [text for pair in banking_rows(300) for text in pair] + ["1234 5678 I'VE DON'T 3.14159 \n\n  x"] * 20
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=CHATML_TEMPLATE)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    path = write_gguf(tmp_path / "m", tmp_path / "model.gguf", "f16")
    assert gguf_metadata(path)["tokenizer.ggml.pre"] == pre
    if importlib.util.find_spec("llama_cpp") is None:
        return  # the name is checked; llama.cpp's split of it needs llama-cpp-python
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    text = "Card 1234567 arrived?\n\n  I'VE paid 3.14 twice, DON'T you see   it <|im_end|>"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"]
    llm.close()
