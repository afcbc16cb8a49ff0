"""Benchmark: the service under a bounded mixed load on localhost, and how fast a cheap route
stays while uploads and generation run.

Run from the repository root, in the project's virtualenv:

    python benchmarks/load.py                                  # 64 clients for 120 s
    python benchmarks/load.py --seconds 30 --clients 16        # a quick check
    python benchmarks/load.py --json benchmarks/results/load.json

1. `tunesmith serve --workers 0` runs in its own process on localhost with a tiny random Llama
   (2 layers, hidden 64, a BPE tokenizer trained on the bundled Banking77 sample: built here
   in a second, no download) offered as the base model `tiny`, and `--keys` API keys.
2. Baseline: a probe sends GET /v1/models every `--probe-interval` seconds to the idle server
   for `--baseline-seconds`.
3. Load: `--clients` clients (threads in a child process, so their work does not slow the
   probe) spread over the keys, each for `--seconds` repeating a random mix: chat completions
   (`--max-tokens` new tokens), small chat-JSONL uploads (each deleted again so the file list
   stays bounded), GET /v1/files and GET /v1/models, with a pause of `--think-ms` on average
   between two requests (`--think-ms 0`: a stress test, every client back at once). A 429 is
   expected (per-key and queue limits): the client waits its Retry-After (at most 1 s) and
   goes on. Meanwhile the probe measures GET /v1/models again.

Printed: requests and statuses per route, 5xx, 429, transport errors (refused, reset or timed
out connections), and p50/p95/p99 of the probe idle and under load with their ratio. The
probe's figures are the measurement; the per-route latencies also hold the load process's own
queueing (64 Python threads on a busy CPU). `--mix chat=0` (or `upload=0`, ...) leaves an
action out, to see which one slows the cheap route. The exit status is 1 if any request
answered 5xx or failed in transport; the work folder, with the server's log, is then kept.

Timings on a shared 2-core CPU are indicative only; repeat a run before trusting a ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "tunesmith" / "samples" / "banking77_train.csv"
CHEAP = "GET /v1/models"
# The mix each client draws from, by weight: generation and uploads are the heavy parts, the
# lists the cheap ones most traffic is made of.
MIX = {"chat": 3, "upload": 2, "list_files": 2, "list_models": 3}


def banking_queries() -> list[tuple[str, str]]:
    with SAMPLE.open(newline="") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


def build_tiny_model(path: Path) -> Path:
    """A random 2-layer Llama (hidden 64) with a ~400-token byte-level BPE tokenizer trained on
    the Banking77 sample and a ChatML template: the test suite's tiny model, for a server
    whose generation is cheap enough that the HTTP side is what gets measured."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    lines = [text for pair in banking_queries()[:400] for text in pair] + ["user assistant system"] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>", chat_template=template)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, model_dir: Path, max_tokens: int, threads: int, log) -> tuple[subprocess.Popen, str]:
    import requests

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", "--workers", "0", "--port", str(port),
                             "--data-dir", str(data_dir), "--model", f"tiny={model_dir}", "--max-tokens", str(max_tokens)],
                            env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}; see {log.name}")
        try:
            requests.get(url + "/v1/models", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start within 2 minutes")


def percentiles(values: list[float]) -> dict:
    """p50/p95/p99 in milliseconds (nearest rank)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_ms": round(pick(0.50) * 1000, 1), "p95_ms": round(pick(0.95) * 1000, 1),
            "p99_ms": round(pick(0.99) * 1000, 1), "mean_ms": round(statistics.fmean(ordered) * 1000, 1)}


def probe(url: str, key: str, seconds: float, interval: float, stop: threading.Event | None = None) -> dict:
    """GET /v1/models every `interval` seconds for `seconds` (or until `stop`): its latencies."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    latencies, statuses = [], Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop.is_set()):
        start = time.perf_counter()
        try:
            status = session.get(url + "/v1/models", timeout=30).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        latency = time.perf_counter() - start
        statuses[status] += 1
        if status == 200:
            latencies.append(latency)
        time.sleep(max(0.0, interval - latency))
    return percentiles(latencies) | {"statuses": {str(k): v for k, v in statuses.items()}}


def load_child(url: str, keys: list[str], clients: int, seconds: float, max_tokens: int, seed: int, think: float,
               mix: dict[str, float]) -> None:
    """Run in a child process: `clients` threads of the mixed load; prints the tally as JSON."""
    import requests

    queries = banking_queries()
    lock = threading.Lock()
    statuses: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    examples: dict[str, str] = {}  # route -> the first 5xx or transport error's answer, to show
    end = time.monotonic() + seconds

    def record(route: str, status, latency: float, detail: str = "") -> None:
        with lock:
            statuses[route][str(status)] += 1
            latencies[route].append(latency)
            if (not isinstance(status, int) or status >= 500) and route not in examples:
                examples[route] = f"{status}: {detail[:500]}"

    def call(session, route: str, method: str, path: str, **kwargs):
        start = time.perf_counter()
        try:
            response = session.request(method, url + path, timeout=120, **kwargs)
        except requests.RequestException as exc:
            record(route, type(exc).__name__, time.perf_counter() - start, str(exc))
            return None
        record(route, response.status_code, time.perf_counter() - start, response.text)
        if response.status_code == 429:  # the server's limits at work: honour Retry-After, briefly
            time.sleep(min(1.0, float(response.headers.get("Retry-After", "1") or 1)))
        return response

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {keys[i % len(keys)]}"
        actions, weights = list(mix), list(mix.values())
        while time.monotonic() < end:
            action = rng.choices(actions, weights)[0]
            if action == "chat":
                text, _ = rng.choice(queries)
                call(session, "POST /v1/chat/completions", "POST", "/v1/chat/completions",
                     json={"model": "tiny", "max_tokens": max_tokens, "temperature": 0,
                           "messages": [{"role": "user", "content": text}]})
            elif action == "upload":
                rows = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": label}]}
                        for t, label in rng.sample(queries, 20)]
                data = "\n".join(json.dumps(r) for r in rows).encode()
                response = call(session, "POST /v1/files", "POST", "/v1/files", data={"purpose": "fine-tune"},
                                files={"file": (f"load-{i}.jsonl", data)})
                if response is not None and response.status_code == 200:
                    call(session, "DELETE /v1/files/{id}", "DELETE", f"/v1/files/{response.json()['id']}")
            elif action == "list_files":
                call(session, "GET /v1/files", "GET", "/v1/files")
            else:
                call(session, CHEAP, "GET", "/v1/models")
            if think:
                time.sleep(rng.expovariate(1 / think))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    print(json.dumps({"wall_s": round(wall, 1), "examples": examples,
                      "routes": {route: {"statuses": dict(statuses[route])} | percentiles(latencies[route])
                                 for route in sorted(statuses)}}))


def run(args: argparse.Namespace) -> dict:
    import requests

    from tunesmith.jobs import store

    work = Path(tempfile.mkdtemp(prefix="load-"))
    print(f"building the tiny model and the server in {work}")
    model_dir = build_tiny_model(work / "tiny")
    data_dir = work / "server"
    data_dir.mkdir()
    sessions = store.connect(store.default_database_url(data_dir))
    keys = [store.create_key(sessions, f"load{i}") for i in range(args.keys)]
    log = (work / "server.log").open("w")
    proc, url = start_server(data_dir, model_dir, args.max_tokens, args.threads, log)
    try:
        # Warm-up: the first completion loads the model; the clock starts after it.
        warm = requests.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys[0]}"}, timeout=300,
                             json={"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
        warm.raise_for_status()
        print(f"baseline: GET /v1/models on the idle server for {args.baseline_seconds:g} s")
        baseline = probe(url, keys[0], args.baseline_seconds, args.probe_interval)
        print(f"load: {args.clients} clients over {args.keys} keys for {args.seconds:g} s")
        # The keys go through the environment: process arguments are visible to every user (`ps`).
        child = subprocess.Popen([sys.executable, __file__, "--load-child", url, str(args.clients), str(args.seconds),
                                  str(args.max_tokens), str(args.seed), str(args.think_ms / 1000), json.dumps(args.mix)],
                                 env=dict(os.environ, LOAD_KEYS=",".join(keys)), stdout=subprocess.PIPE, text=True)
        stop = threading.Event()
        under_load: dict = {}
        prober = threading.Thread(target=lambda: under_load.update(
            probe(url, keys[-1], math.inf, args.probe_interval, stop)), daemon=True)
        time.sleep(min(2.0, args.seconds / 10))  # let the clients ramp up before probing
        prober.start()
        out, _ = child.communicate(timeout=args.seconds + 900)
        stop.set()
        prober.join()
        if child.returncode != 0:
            raise RuntimeError(f"the load process failed with status {child.returncode}")
        load = json.loads(out.strip().splitlines()[-1])
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    routes = load["routes"]
    totals = Counter()
    for route in routes.values():
        for status, n in route["statuses"].items():
            totals["requests"] += n
            totals["5xx"] += n if status.isdigit() and int(status) >= 500 else 0
            totals["429"] += n if status == "429" else 0
            totals["transport_errors"] += 0 if status.isdigit() else n
    ratio = (under_load.get("p95_ms", float("nan")) / baseline["p95_ms"]) if baseline.get("p95_ms") else float("nan")
    return {"settings": {k: v for k, v in vars(args).items() if k != "load_child"} | {"json": str(args.json) if args.json else None},
            "wall_s": load["wall_s"], "totals": dict(totals), "routes": routes, "errors_seen": load["examples"],
            "cheap_route_idle": baseline, "cheap_route_under_load": under_load, "p95_ratio": round(ratio, 2),
            "server_alive_after": alive, "work_dir": str(work)}


def report(result: dict, p95_limit_ms: float) -> None:
    totals = result["totals"]
    print(f"\n{totals.get('requests', 0)} requests in {result['wall_s']} s "
          f"({totals.get('requests', 0) / result['wall_s']:.1f}/s): {totals.get('5xx', 0)} answered 5xx, "
          f"{totals.get('429', 0)} answered 429, {totals.get('transport_errors', 0)} failed in transport")
    print(f"{'route':<28} {'requests':>8}  {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  statuses")
    for route, r in result["routes"].items():
        print(f"{route:<28} {r['n']:>8}  {r.get('p50_ms', '-'):>8} {r.get('p95_ms', '-'):>8} {r.get('p99_ms', '-'):>8}  {r['statuses']}")
    idle, loaded = result["cheap_route_idle"], result["cheap_route_under_load"]
    print(f"\n{CHEAP} (the probe, one request every {result['settings']['probe_interval']} s):")
    for name, r in (("idle server", idle), ("under load", loaded)):
        print(f"  {name:<12} p50 {r.get('p50_ms')} ms, p95 {r.get('p95_ms')} ms, p99 {r.get('p99_ms')} ms "
              f"({r.get('n', 0)} requests, statuses {r.get('statuses')})")
    print(f"  p95 under load / idle: {result['p95_ratio']}x; target p95 < {p95_limit_ms:g} ms under load: "
          f"{'met' if loaded.get('p95_ms', float('inf')) < p95_limit_ms else 'NOT met'}")
    for route, example in result["errors_seen"].items():
        print(f"  first error on {route}: {example}")
    if not result["server_alive_after"]:
        print("  the server process was no longer running at the end")


def parse_mix(text: str) -> dict[str, float]:
    mix = dict(MIX)
    for part in filter(None, text.split(",")):
        name, _, weight = part.partition("=")
        if name not in MIX:
            raise argparse.ArgumentTypeError(f"unknown action '{name}': use {', '.join(MIX)}")
        mix[name] = float(weight)
    if not any(mix.values()):
        raise argparse.ArgumentTypeError("give at least one action a weight above 0")
    return mix


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=120.0, help="how long the load runs")
    p.add_argument("--keys", type=int, default=8, help="API keys the clients are spread over (each has its own limits)")
    p.add_argument("--max-tokens", type=int, default=8, help="new tokens per chat completion")
    p.add_argument("--baseline-seconds", type=float, default=15.0)
    p.add_argument("--probe-interval", type=float, default=0.05, help="seconds between two probe requests")
    p.add_argument("--p95-limit-ms", type=float, default=100.0, help="the p95 the cheap route should stay under")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--think-ms", type=float, default=1000.0,
                   help="mean pause of a client between two requests (exponential), as a person or a script leaves; "
                        "0: each client sends its next request at once (a stress test that saturates the server)")
    p.add_argument("--mix", type=parse_mix, default=dict(MIX),
                   help="weights of the actions, e.g. chat=3,upload=0,list_files=2,list_models=3 (0 leaves one out)")
    p.add_argument("--load-child", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load_child:
        url, clients, seconds, max_tokens, seed, think, mix = args.load_child
        load_child(url, os.environ["LOAD_KEYS"].split(","), int(clients), float(seconds), int(max_tokens), int(seed),
                   float(think), json.loads(mix))
        return 0
    result = run(args)
    report(result, args.p95_limit_ms)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    failed = bool(result["totals"].get("5xx", 0) or result["totals"].get("transport_errors", 0)) or not result["server_alive_after"]
    if failed:  # the server's log has the tracebacks
        print(f"kept for a look: {result['work_dir']} (server.log)")
    else:
        shutil.rmtree(result["work_dir"], ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
