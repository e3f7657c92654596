"""Load test of `edge-spec serve` over loopback: C concurrent streaming clients send R fixed requests (P
distinct prompts, each sent R / P times, greedy) in each of N rounds on one server. The run checks that
every stream is complete (a finish_reason, usage, `data: [DONE]`, one id throughout) and that no answer was
mixed up with another client's (every answer to a prompt equals the first answer to it), and reports
p50/p95 time to first token, total generated tokens per second and the server's resident memory before,
at peak and after each round (flat across rounds: nothing is kept per request).

    flock /tmp/edge-spec-bench.lock .venv/bin/python scripts/bench_server.py --parallel 4 -- -m smollm2-135m

Arguments after `--` go to `edge-spec serve` (model and stage options). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

START = re.compile(r"serving \S+ on (http://\S+)/v1 ")


def rss_mib(pid: int) -> float:
    """The process's resident memory (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(args: list[str], parallel: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "edge_spec", "serve", "--port", "0", "--parallel", str(parallel), *args]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if m := START.search(line):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict[str, object]:
    """One streamed chat completion: its text, ids seen, time to first token, completeness."""
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft, text, ids, finish, usage, done = None, [], set(), None, None, False
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            ids.add(chunk["id"])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                piece = choice["delta"].get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(piece)
                finish = choice["finish_reason"] or finish
    complete = done and finish is not None and usage is not None and len(ids) == 1
    tokens = usage["completion_tokens"] if usage else 0  # type: ignore[index]
    return {"prompt": prompt, "text": "".join(text), "ttft": ttft, "complete": complete, "tokens": tokens}


async def load(url: str, prompts: list[str], clients: int, requests: int, max_tokens: int) -> list[dict]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(prompts[i % len(prompts)])
    results: list[dict] = []

    async def client() -> None:
        async with httpx.AsyncClient(timeout=None) as http:
            while not queue.empty():
                results.append(await one_request(http, url, queue.get_nowait(), max_tokens))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=1, help="The server's --parallel.")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent streaming clients.")
    parser.add_argument("--requests", type=int, default=64, help="Requests in all.")
    parser.add_argument("--prompts", type=int, default=8, help="Distinct prompts.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="Load rounds on the same server.")
    parser.add_argument("serve_args", nargs="*", help="Arguments of edge-spec serve (after --).")
    a = parser.parse_args()
    topics = ["rain", "bread", "trains", "the moon", "bees", "glass", "maps", "tea", "rivers", "salt"]
    prompts = [f"Write two sentences about {topics[i % len(topics)]} (note {i})." for i in range(a.prompts)]
    proc, url = start_server(a.serve_args, a.parallel)
    try:
        before = rss_mib(proc.pid)
        peak, after, results = before, [], []
        t0 = time.perf_counter()

        async def run() -> list[dict]:
            nonlocal peak
            task = asyncio.ensure_future(load(url, prompts, a.clients, a.requests, a.max_tokens))
            while not task.done():
                peak = max(peak, rss_mib(proc.pid))
                await asyncio.wait([task], timeout=0.5)
            return task.result()

        for _ in range(a.rounds):
            results += asyncio.run(run())
            after.append(round(rss_mib(proc.pid), 1))
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(2)
        proc.wait(timeout=120)
    first: dict[str, str] = {}
    mixed = 0
    for r in results:
        mixed += first.setdefault(r["prompt"], r["text"]) != r["text"]
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in results)
    print(
        json.dumps(
            {
                "parallel": a.parallel,
                "clients": a.clients,
                "rounds": a.rounds,
                "requests": len(results),
                "complete": sum(bool(r["complete"]) for r in results),
                "answers_differing_from_the_first_to_their_prompt": mixed,
                "distinct_answers": len(set(first.values())),
                "ttft_p50_s": round(percentile(ttfts, 50), 3),
                "ttft_p95_s": round(percentile(ttfts, 95), 3),
                "generated_tokens": tokens,
                "wall_s": round(wall, 2),
                "tokens_per_second": round(tokens / wall, 2),
                "rss_mib": {"before": round(before, 1), "peak": round(peak, 1), "after_each_round": after},
                "server_exit": proc.returncode,
            }
        )
    )


if __name__ == "__main__":
    main()
