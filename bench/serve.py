"""`localdistil serve` under concurrent clients vs the same calls dispatched one by one in process.

    python bench/serve.py --adapter runs/three_digit_multiply [--clients 8] [--seconds 30]
    python bench/serve.py --smoke      # the tiny random model: checks that the bench runs

Both sides answer the same calls (the arguments of traced records: ``--data``, default the files
the adapter's recipe trained on) with the same adapter and the embedded model:

  in process     one call after another, each its own engine call, as a loop of ``fn(...)``
                 in dispatch mode does.
  in process, batched
                 the same calls in batches of ``--max-batch``, one engine call each: the
                 server's ceiling, what batching alone gains on this machine.
  served         ``python -m localdistil serve`` in its own process, as users run it, and
                 ``--clients`` threads here, each with its own ``openai`` client, sending
                 requests to it on 127.0.0.1 back to back; the server batches what arrives
                 together.

Printed: throughput (calls per second) of each and their ratio, p50/p95 latency of each, the
errors (must be 0: the bench exits 1 otherwise), and validity: answers that are complete JSON
of the adapter's schema, and served answers equal to the in-process answer of the same call
(greedy decoding: they should all be). Each side runs for at most ``--seconds`` (and at most
``--calls`` calls for the in-process side, which only needs enough for its latency).

The tiny random model of ``--smoke`` says nothing about speed: its numbers only show that the
bench works. Results belong in the README's *Benchmarks* table, not here.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def calls_from_records(adapter: Path, data: list[str] | None, limit: int) -> list[dict[str, Any]]:
    """Distinct arguments of the adapter's function from record files."""
    from localdistil.models.adapter import read_manifest
    from localdistil.records import read_records

    manifest = read_manifest(adapter)
    files = data or list((manifest.recipe.get("data") or {}).get("train") or [])
    files = [f for f in files if Path(f).exists()]
    if not files:
        sys.exit(f"no record files to take calls from: pass --data traces/{manifest.name}.jsonl")
    seen, calls = set(), []
    for record in read_records(files).records:
        if record.name != manifest.name or record.args is None:
            continue
        key = json.dumps(record.args, sort_keys=True)
        if key not in seen:
            seen.add(key)
            calls.append(record.args)
        if len(calls) >= limit:
            break
    if not calls:
        sys.exit(f"no calls of {manifest.name} with arguments in {', '.join(files)}")
    return calls


def smoke_adapter(root: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A hand-written (untrained) adapter on the tiny random model, and calls for it."""
    from typing import Literal

    from peft import LoraConfig, get_peft_model
    from pydantic import BaseModel

    from localdistil import FunctionSpec
    from localdistil.models.adapter import Manifest, tokenizer_hash, write_manifest
    from localdistil.models.resolve import load_causal_lm, load_tokenizer, model_content_hash
    from localdistil.prompts import PROMPT_VERSION

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tiny_model

    class Ticket(BaseModel):
        urgent: bool
        kind: Literal["bug", "question", "feature"]

    def triage(title: str, severity: int = 2) -> Ticket:
        """Triage a ticket."""

    triage.__annotations__["return"] = Ticket
    model_dir = build_tiny_model(root / "tiny")
    spec = FunctionSpec.from_function(triage)
    tokenizer = load_tokenizer(model_dir)
    model = get_peft_model(load_causal_lm(model_dir),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    adapter = root / "triage"
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    write_manifest(adapter, Manifest(
        base_model=str(model_dir), base_model_path=str(model_dir),
        base_model_hash=model_content_hash(model_dir), tokenizer_hash=tokenizer_hash(tokenizer),
        function=spec.qualname, name=spec.name, signature=spec.signature, doc=spec.doc,
        fingerprint=spec.fingerprint, output_schema=spec.output_schema,
        schema_hash=spec.schema_hash, prompt_style="compact", prompt_version=PROMPT_VERSION,
        max_output_tokens=16, recipe={}))
    return adapter, [{"title": f"ticket {n}", "severity": n % 5} for n in range(16)]


def adapter_engine(adapter: Path) -> tuple[Any, dict[str, Any], Callable[[dict], list[int]]]:
    """The adapter's engine, its output schema, and the prompt of a call as the server renders
    it."""
    from localdistil.inference.engine import Engine
    from localdistil.serve.functions import FunctionParameters, call_prompt

    engine = Engine.for_adapter(adapter)
    params = FunctionParameters(engine.manifest.name, engine.manifest.signature)
    return engine, engine.manifest.output_schema, lambda call: call_prompt(engine, params, call)


def in_process(adapter: Path, calls: list[dict[str, Any]], seconds: float, limit: int
               ) -> tuple[dict[str, str], list[float], float]:
    """Each call alone, one after another: answers by call, latencies, calls per second."""
    engine, schema, prompt_of = adapter_engine(adapter)
    engine.answer([prompt_of(calls[0])], schema=schema)  # warm up
    answers, latencies = {}, []
    start = time.perf_counter()
    for n in range(limit):
        call = calls[n % len(calls)]
        began = time.perf_counter()
        (outcome,) = engine.answer([prompt_of(call)], schema=schema)
        latencies.append(time.perf_counter() - began)
        answers[json.dumps(call, sort_keys=True)] = outcome.text if outcome.ok else ""
        if time.perf_counter() - start > seconds:
            break
    return answers, latencies, len(latencies) / (time.perf_counter() - start)


def in_process_batched(adapter: Path, calls: list[dict[str, Any]], seconds: float,
                       batch: int) -> float:
    """The same calls in batches of ``batch``, one engine call each: calls per second. What the
    server could reach if HTTP, scheduling and clients cost nothing (its ceiling)."""
    engine, schema, prompt_of = adapter_engine(adapter)
    prompts = [prompt_of(call) for call in calls]
    engine.answer(prompts[:batch], schema=schema)  # warm up
    answered, n = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        group = [prompts[(n + i) % len(prompts)] for i in range(batch)]
        n += batch
        answered += len(engine.answer(group, schema=schema))
    return answered / (time.perf_counter() - start)


def served(adapter: Path, calls: list[dict[str, Any]], clients: int, seconds: float,
           max_batch: int, wait_ms: float) -> tuple[list[tuple[dict[str, Any], str, str]],
                                                    list[float], list[str], float, str]:
    """``clients`` threads against ``python -m localdistil serve`` in its own process, as users
    run it: (call, text, finish) per answer, latencies, errors, calls per second, and the
    server's own count of requests and batches (logged at its shutdown)."""
    import urllib.error
    import urllib.request

    from openai import OpenAI

    from localdistil.models.adapter import read_manifest

    name = read_manifest(adapter).name
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would stall it
    server = subprocess.Popen(
        [sys.executable, "-m", "localdistil", "serve", str(adapter), "--port", str(port),
         "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                sys.exit(f"the server did not start:\n{log.read()[-2000:]}")
            time.sleep(0.2)

        lock = threading.Lock()
        answers: list[tuple[dict[str, Any], str, str]] = []
        latencies: list[float] = []
        errors: list[str] = []
        stop_at = time.perf_counter() + seconds

        def client(index: int) -> None:
            with OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120) as api:
                n = index
                while time.perf_counter() < stop_at:
                    call = calls[n % len(calls)]
                    n += clients
                    began = time.perf_counter()
                    try:
                        response = api.chat.completions.create(
                            model=name, messages=[{"role": "user", "content": json.dumps(call)}])
                    except Exception as error:  # counted and shown, never hidden
                        with lock:
                            errors.append(f"{type(error).__name__}: {error}")
                        continue
                    elapsed = time.perf_counter() - began
                    choice = response.choices[0]
                    with lock:
                        latencies.append(elapsed)
                        answers.append((call, choice.message.content or "", choice.finish_reason))

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        elapsed = time.perf_counter() - start
    finally:
        server.terminate()  # uvicorn shuts down gracefully on SIGTERM, logging its batches
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    log.seek(0)
    batches = next((line.split(": ", 1)[1].strip() for line in log
                    if "requests answered in" in line), "no batch count logged")
    log.close()
    return answers, latencies, errors, len(latencies) / elapsed, batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="a training run or adapter directory")
    parser.add_argument("--data", nargs="+", help="record files to take calls from "
                        "(default: the files the adapter's recipe trained on)")
    parser.add_argument("--smoke", action="store_true",
                        help="a hand-written adapter on the tiny random model, a few seconds")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=30, help="time per side (default 30)")
    parser.add_argument("--calls", type=int, default=64, help="distinct calls, and the most "
                        "in-process calls timed (default 64)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    parser.add_argument("--batch-wait-ms", type=float, default=5, help="the server's wait")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            adapter, calls = smoke_adapter(Path(tmp))
            args.seconds = min(args.seconds, 3)
            args.clients = min(args.clients, 4)
        elif args.adapter:
            adapter = Path(args.adapter)
            calls = calls_from_records(adapter, args.data, args.calls)
        else:
            print("bench/serve.py needs a trained adapter; this bench trains nothing. Get one:\n"
                  "  python -m localdistil train recipes/three_digit_multiply.yaml\n"
                  "then: python bench/serve.py --adapter runs/three_digit_multiply\n"
                  "(or python bench/serve.py --smoke to check that the bench runs)")
            return 2
        from localdistil.models.adapter import read_manifest

        schema_name = read_manifest(adapter).name
        alone, alone_latency, alone_rate = in_process(adapter, calls, args.seconds, args.calls)
        batched_rate = in_process_batched(adapter, calls, args.seconds, args.max_batch)
        answers, latency, errors, rate, batches = served(
            adapter, calls, args.clients, args.seconds, args.max_batch, args.batch_wait_ms)

    valid = sum(finish == "stop" and _is_json(text) for _, text, finish in answers)
    same = sum(alone.get(json.dumps(call, sort_keys=True)) == text
               for call, text, _ in answers if json.dumps(call, sort_keys=True) in alone)
    compared = sum(json.dumps(call, sort_keys=True) in alone for call, _, _ in answers)
    print(f"{schema_name}: {len(calls)} distinct calls, {args.clients} clients, "
          f"{args.seconds:g} s per side{' (smoke: the tiny random model)' if args.smoke else ''}")
    print(f"  in process, one by one   {alone_rate:7.2f} calls/s   p50 "
          f"{statistics.median(alone_latency) * 1000:7.1f} ms   p95 "
          f"{percentile(alone_latency, 0.95) * 1000:7.1f} ms   ({len(alone_latency)} calls)")
    print(f"  in process, batches of {args.max_batch} {batched_rate:7.2f} calls/s   "
          f"({batched_rate / alone_rate:.2f}x one by one: the server's ceiling)")
    if latency:
        print(f"  served, {args.clients} clients      {rate:7.2f} calls/s   p50 "
              f"{statistics.median(latency) * 1000:7.1f} ms   p95 "
              f"{percentile(latency, 0.95) * 1000:7.1f} ms   ({len(latency)} calls)")
        print(f"  server batches           {batches}")
        print(f"  throughput ratio         {rate / alone_rate:7.2f}x   (served / one by one; "
              f"{rate / batched_rate:.0%} of the ceiling)")
    print(f"  valid                    {valid}/{len(answers)}")
    print(f"  same as in process       {same}/{compared}")
    print(f"  errors                   {len(errors)}")
    for error in errors[:5]:
        print(f"    {error}")
    return 1 if errors or not answers else 0


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
