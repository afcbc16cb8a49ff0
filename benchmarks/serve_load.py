"""Benchmark: the OpenAI-compatible server under a bounded concurrent chat load, and the
memory of serving many fine-tuned adapters from one base model.

Run from the repository root, in the project's virtualenv:

    python benchmarks/serve_load.py                         # 32 clients x 4 requests, 10 adapters
    python benchmarks/serve_load.py --clients 8 --requests 2 --adapters 3   # a quick check
    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json
    python benchmarks/serve_load.py --model tiny=PATH --clients 2 --requests 1 --adapters 1 --max-tokens 2   # CI smoke test

1. Load. `tunesmith serve --workers 0` runs in its own process on localhost with the bundled
   SmolLM2-135M and `--adapters` LoRA adapters (rank 16 on every linear layer, random
   weights: the same size as trained ones) registered as fine-tuned models. `--clients`
   concurrent clients (the official `openai` AsyncOpenAI) each send `--requests` chat
   requests, Banking77 queries, greedy, `--max-tokens` new tokens. Two mixes: every request
   to the base model, and requests spread over the base and every adapter. Each mix runs
   against the server as it ships (`--max-batch 16`: concurrent requests generate together,
   across adapters) and against the same server with `--max-batch 1` (one request at a
   time, the plain baseline). Printed: requests/s, p50 and p95 latency, errors, and the
   batched/unbatched throughput ratio.
2. Memory. In two fresh processes: the base plus the adapters in tunesmith's engine (one base
   in memory, adapters in its LRU cache), against one merged model copy per adapter (what
   serving them as separate models costs). Printed: peak resident memory of each and the ratio.

Timings on a shared 2-core CPU are indicative only; repeat a run before trusting a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "tunesmith" / "samples" / "banking77_test.csv"
BASE = "smollm2-135m"


def make_adapters(out: Path, n: int, base: str = BASE) -> list[Path]:
    """`n` run directories, each a LoRA adapter (r 16, all linear layers) of the base model
    (`base`: a model name or folder)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.config import RunConfig, save_config
    from tunesmith.models import load_model, load_tokenizer
    from tunesmith.runs import ADAPTER_DIR

    tokenizer = load_tokenizer(base)
    runs = []
    for i in range(n):
        torch.manual_seed(i)
        model = get_peft_model(load_model(base), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                             init_lora_weights=False, task_type="CAUSAL_LM"))
        with torch.no_grad():  # small random updates: a changed but still fluent model
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.01)
        run = out / f"adapter-{i}"
        model.save_pretrained(run / ADAPTER_DIR)
        tokenizer.save_pretrained(run / ADAPTER_DIR)
        save_config(RunConfig.model_validate({"model": {"name": base}}), run / "config.yaml")
        runs.append(run)
    return runs


START_SECONDS = 180  # a loaded 2-core machine needs more than a minute to import and load the model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, max_batch: int, threads: int, model: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.cli", "serve", "--workers", "0", "--port", str(port),
                             "--data-dir", str(data_dir), "--max-batch", str(max_batch), "--max-adapters", "16",
                             *(["--model", model] if model else [])],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    import requests

    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            requests.get(url + "/models", timeout=1)
            return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()  # not left running behind the error
    proc.wait()
    raise RuntimeError(f"the server did not start in {START_SECONDS} s")


async def load(url: str, key: str, models: list[str], clients: int, per_client: int, max_tokens: int, queries: list[str]) -> dict:
    from openai import AsyncOpenAI

    latencies, errors = [], 0

    async def one_client(c: int) -> None:
        nonlocal errors
        api = AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
        for r in range(per_client):
            i = c * per_client + r
            start = time.perf_counter()
            try:
                await api.chat.completions.create(model=models[i % len(models)], temperature=0, max_tokens=max_tokens,
                                                  messages=[{"role": "user", "content": queries[i % len(queries)]}])
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # counted, and the first is shown
                if not errors:
                    print(f"  error: {exc}")
                errors += 1
        await api.close()

    # Warm-up: load the base and every adapter before the clock starts.
    warm = AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
    for m in models:
        await warm.chat.completions.create(model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    await warm.close()
    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"requests": clients * per_client, "errors": errors, "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 3), "p50_s": round(pick(0.5), 3), "p95_s": round(pick(0.95), 3)}


def memory_child(kind: str, base: str, runs: list[str]) -> None:
    """Run in a fresh process: load what `kind` says and print the peak resident memory."""
    import torch

    torch.set_num_threads(1)
    if kind == "engine":
        from tunesmith.serve.pool import Engine, Sampling, Target

        engine = Engine(max_adapters=len(runs))

        async def touch():
            for i, run in enumerate(runs):
                await engine.complete(Target(key=f"a{i}", base=base, run_dir=Path(run)), "Hello", Sampling(max_tokens=1, temperature=0))

        asyncio.run(touch())
        loaded = engine.stats()
        engine.close()
    else:
        from tunesmith.inference.generate import load_for_inference

        models = [load_for_inference(run) for run in runs]
        loaded = {"models": len(models)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(peak_mb), "loaded": {k: (len(v) if isinstance(v, list) else v) for k, v in loaded.items()}}))


def measure_memory(runs: list[Path], base: str = BASE) -> dict:
    out = {}
    for kind in ("engine", "copies"):
        result = subprocess.run([sys.executable, __file__, "--memory-child", kind, base, *map(str, runs)],
                                capture_output=True, text=True, check=True)
        out[kind] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--adapters", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server process")
    p.add_argument("--json", type=Path)
    p.add_argument("--model", default=None, metavar="NAME=FOLDER",
                   help=f"serve this local model as the base NAME instead of the bundled {BASE} (e.g. a tiny test model)")
    p.add_argument("--memory-child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child[0], args.memory_child[1], args.memory_child[2:])
    base_name, _, base = (args.model or f"{BASE}={BASE}").partition("=")
    if not base:
        p.error("--model takes NAME=FOLDER")

    from tunesmith.jobs import store

    with SAMPLE.open(newline="") as f:
        queries = [row["text"] for row in csv.DictReader(f)]
    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    print(f"making {args.adapters} adapters in {work}")
    runs = make_adapters(work / "adapters", args.adapters, base)
    results: dict = {"settings": vars(args) | {"json": str(args.json) if args.json else None}, "load": {}}
    for max_batch in (16, 1):
        data_dir = work / f"server-{max_batch}"
        data_dir.mkdir(parents=True)
        sessions = store.connect(store.default_database_url(data_dir))
        key = store.create_key(sessions, "bench")
        adapter_models = []
        with sessions.begin() as s:
            for i, run in enumerate(runs):
                model_id = f"ft:{base_name}:bench:a{i}:{i:08d}"
                s.add(store.Model(id=model_id, project="bench", base=base_name, job_id=f"ftjob-{i}", run_dir=str(run)))
                adapter_models.append(model_id)
        proc, url = start_server(data_dir, max_batch, args.threads, args.model)
        try:
            for mix, models in (("base", [base_name]), ("base + adapters", [base_name, *adapter_models])):
                r = asyncio.run(load(url, key, models, args.clients, args.requests, args.max_tokens, queries))
                results["load"][f"{mix}, max_batch {max_batch}"] = r
                print(f"{mix:16s} max_batch {max_batch:2d}: {r['requests_per_s']:.2f} req/s, p50 {r['p50_s']:.2f} s, "
                      f"p95 {r['p95_s']:.2f} s, {r['errors']} errors of {r['requests']}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    for mix in ("base", "base + adapters"):
        batched, single = results["load"][f"{mix}, max_batch 16"], results["load"][f"{mix}, max_batch 1"]
        ratio = batched["requests_per_s"] / single["requests_per_s"]
        results[f"throughput_ratio ({mix})"] = round(ratio, 2)
        print(f"throughput, batched / one at a time ({mix}): {ratio:.2f}x")
    memory = measure_memory(runs, base)
    results["memory"] = memory
    ratio = memory["copies"]["peak_rss_mb"] / memory["engine"]["peak_rss_mb"]
    results["memory_ratio"] = round(ratio, 2)
    print(f"memory, {args.adapters} adapters: one base + adapters {memory['engine']['peak_rss_mb']} MB, "
          f"{args.adapters} model copies {memory['copies']['peak_rss_mb']} MB ({ratio:.1f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
