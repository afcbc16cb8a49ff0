"""Shared fixtures. Tests never download: the hub is switched off before transformers is
imported, and the model under test is a tiny random Llama with a tokenizer trained here."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CPU training in float32 everywhere, whether or not this CPU computes bfloat16 (where it does,
# tunesmith trains under bfloat16 autocast; test_methods covers that path on its own).
os.environ["TUNESMITH_CPU_BF16"] = "0"

import contextlib  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# The tiny model gains nothing from threads, and on a busy 2-core machine two OpenMP
# threads spin against each other: one thread makes a training step ~100x faster here.
torch.set_num_threads(1)

BANKING_TRAIN = Path(__file__).parents[1] / "src" / "tunesmith" / "samples" / "banking77_train.csv"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def banking_rows(n: int | None = None) -> list[tuple[str, str]]:
    """(text, label) pairs from the bundled Banking77 sample, in file order."""
    with BANKING_TRAIN.open(newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    return rows if n is None else rows[:n]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Point the tunesmith cache at a temporary folder and keep everything offline."""
    saved = {k: os.environ.get(k) for k in ("TUNESMITH_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "TRACKIO_DIR")}
    os.environ["TUNESMITH_HOME"] = str(tmp_path_factory.mktemp("tunesmith_home"))
    # trackio reads its store's folder once, at import: set before any test imports it
    os.environ["TRACKIO_DIR"] = str(tmp_path_factory.mktemp("trackio"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def build_tokenizer():
    """A byte-level BPE tokenizer (about 400 tokens) trained on the Banking77 sample, with
    ChatML special tokens and chat template. Byte-level keeps newlines and offsets exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [text for pair in banking_rows(400) for text in pair]
    lines += ["user assistant system <|im_start|> <|im_end|>"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        chat_template=CHATML_TEMPLATE,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A local model folder: a random 2-layer Llama (hidden 64) and the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    tok = tiny_tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def write_chat_file(path: Path, n: int = 40, offset: int = 0) -> Path:
    """JSONL of chat rows user=banking query, assistant=its intent label."""
    with path.open("w") as f:
        for text, label in banking_rows(offset + n)[offset:]:
            row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}]}
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def tiny_chat_file(tmp_path):
    """40 chat rows (query -> intent label): a learnable signal for the tiny model."""
    return write_chat_file(tmp_path / "chat.jsonl")


def tiny_run_config(model_dir, data_file, **train):
    """A fully explicit small SFT config for the tiny model (override train fields by keyword)."""
    from tunesmith.config import RunConfig

    values = dict(
        max_steps=12,
        learning_rate=5e-3,
        eval_steps=4,
        pack_length=128,
        max_length=128,
        batch_size=1,
        gradient_accumulation=1,
        epochs=1,
        warmup_ratio=0.0,
        early_stopping_patience=100,
        best_metric="loss",
    )
    values.update(train)
    return RunConfig.model_validate(
        {
            "model": {"name": str(model_dir)},
            "data": {"train": str(data_file), "validation_split": 0.1, "test_split": 0.0},
            "method": {"lora_r": 8, "lora_alpha": 16},
            "train": values,
        }
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A finished LoRA run of the tiny model (12 steps), trained with a system prompt."""
    from tunesmith.train.sft import train_sft

    root = tmp_path_factory.mktemp("tiny_run")
    data = write_chat_file(root / "chat.jsonl")
    config = tiny_run_config(tiny_model_dir, data)
    config.data.system_prompt = "Answer with the intent."
    config.data.validation_split = "auto"
    run_dir = root / "run"
    summary = train_sft(config, run_dir)
    return run_dir, summary


class StubOpenAI:
    """A chat-completions server on localhost for endpoint teachers. `reply(messages)` makes
    each answer; `fail` is a list of HTTP statuses to answer with first, one per request
    (e.g. [429, 500] then success). Every request's arrival time and body are recorded."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        self.times: list[float] = []
        self.fail: list[int] = []
        self.reply = lambda messages: "ok " + messages[-1]["content"][:20]
        self.key: str | None = None
        stub = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                import time

                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.requests.append(body)
                    stub.times.append(time.monotonic())
                    status = stub.fail.pop(0) if stub.fail else 200
                if stub.key and self.headers.get("Authorization") != f"Bearer {stub.key}":
                    status = 401
                if not self.path.endswith("/v1/chat/completions"):
                    status = 404
                if status == 200:
                    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": stub.reply(body["messages"])}}]}
                else:
                    answer = {"error": {"message": f"stub status {status}"}}
                data = json.dumps(answer).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_openai():
    server = StubOpenAI()
    yield server
    server.close()


class ScriptedTeacher:
    """A deterministic in-process teacher: `reply(messages)` answers each conversation."""

    name = "scripted"
    prefill = False

    def __init__(self, reply):
        self.reply = reply
        self.calls = 0

    def complete(self, conversations, temperature=0.8, max_new_tokens=128):
        self.calls += len(conversations)
        return [self.reply(c) for c in conversations]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, **config):
    """`app` served by uvicorn on a free localhost port in a daemon thread, for tests that
    drive a live server; yields (server, thread, port) and stops the server afterwards.
    `config` goes to uvicorn.Config (e.g. timeout_graceful_shutdown)."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **({"log_level": "warning"} | config)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield server, thread, port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
