"""The Ollama export: a folder with the run's GGUF file and a `Modelfile` (`ollama create NAME -f
Modelfile`), whose TEMPLATE is the chat template in Ollama's Go template syntax, whose stop
parameters are the end-of-turn tokens, and whose SYSTEM is the run's system prompt.

The TEMPLATE is written for the chat formats recognised by rendering the model's own chat template
(ChatML: SmolLM, Qwen; Llama 3's headers). For another format it is left out, and Ollama reads the
chat template stored in the GGUF file and matches it against the templates it knows.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.export.gguf import GGUF_FILE, export_gguf
from tunesmith.export.hf import adds_bos, end_of_turn_tokens
from tunesmith.runs import RunDir

MODELFILE = "Modelfile"
_S, _U, _A = "tunesmith-system-7f3a", "tunesmith-user-7f3a", "tunesmith-answer-7f3a"

# Ollama's Go templates: .System, then each of .Messages, then the assistant header when the last
# message is not the assistant's (as `add_generation_prompt`); .Prompt for the plain generate API.
CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- if .Messages }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|im_start|>{{ .Role }}
{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}"""

LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- if .Messages }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if or (ne .Role "assistant") (not $last) }}<|eot_id|>{{ end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- else }}
{{- if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}{{ .Response }}"""


def _chatml(system: str, user: str, answer: str | None) -> str:
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text + (f"{answer}<|im_end|>\n" if answer is not None else "")


def _llama3(system: str, user: str, answer: str | None) -> str:
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    text = header.format("system") + f"{system}<|eot_id|>" if system else ""
    text += header.format("user") + f"{user}<|eot_id|>" + header.format("assistant")
    return text + (f"{answer}<|eot_id|>" if answer is not None else "")


_FORMATS = {"chatml": (_chatml, CHATML), "llama3": (_llama3, LLAMA3)}


def chat_format(tokenizer) -> tuple[str | None, str | None]:
    """(format name, the default system prompt the chat template inserts when a conversation has
    none) when the tokenizer's chat template renders exactly as one of the formats above, else
    (None, None). The template is rendered, not parsed, so any spelling of the same format counts."""
    from jinja2 import TemplateError

    if not isinstance(tokenizer.chat_template, str):
        return None, None
    # A bos the tokenizer adds itself is not the template's to write (llama.cpp adds it as well).
    bos = tokenizer.bos_token if adds_bos(tokenizer) else None

    def render(messages: list[dict], generation: bool) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return text.removeprefix(bos) if bos else text

    full = [{"role": "system", "content": _S}, {"role": "user", "content": _U}, {"role": "assistant", "content": _A}]
    try:
        answered, asked, alone = render(full, False), render(full[:2], True), render(full[1:2], True)
    except TemplateError:  # a template that refuses a system turn is none of the formats written here
        return None, None
    for name, (build, _) in _FORMATS.items():
        if answered != build(_S, _U, _A) or asked != build(_S, _U, None):
            continue
        if alone == build("", _U, None):
            return name, None
        # The template added a system turn of its own: read its text back between the system markers.
        rest = build("", _U, None)
        head, tail = build(_S, _U, None).removesuffix(rest).split(_S)
        turn = alone.removesuffix(rest)
        if alone.endswith(rest) and turn.startswith(head) and turn.endswith(tail):
            return name, turn[len(head) : len(turn) - len(tail)]
        return None, None
    return None, None


def modelfile(tokenizer, system_prompt: str | None, gguf_name: str = GGUF_FILE) -> str:
    """The Modelfile text for a GGUF file of this tokenizer's model, with the run's system prompt
    (or, without one, the default system prompt the chat template would insert)."""
    name, default_system = chat_format(tokenizer)
    lines = [f"FROM ./{gguf_name}", ""]
    if name:
        lines += [f'TEMPLATE """{_FORMATS[name][1]}"""', ""]
    system = system_prompt or default_system
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in end_of_turn_tokens(tokenizer)]
    return "\n".join(lines) + "\n"


def export_ollama(run: Path, out: Path, quant: str = "q8_0", verify: bool = True, limit: int = 16,
                  max_new_tokens: int | None = None) -> dict:
    """`out/`: the run's GGUF file (`model.gguf`, written and verified as `export_gguf` does) and its
    `Modelfile`. Returns the GGUF figures with `modelfile` (its path) and `template` (the chat format
    written as TEMPLATE, or None when Ollama is left to read the template from the GGUF file)."""
    from transformers import AutoTokenizer

    folder = RunDir(Path(run))
    out = Path(out)
    figures = export_gguf(folder.path, out / GGUF_FILE, quant, verify, limit, max_new_tokens)
    tokenizer = AutoTokenizer.from_pretrained(folder.final.merged)
    (out / MODELFILE).write_text(modelfile(tokenizer, folder.final.config.data.system_prompt))
    return figures | {"format": "ollama", "modelfile": str(out / MODELFILE), "template": chat_format(tokenizer)[0]}
