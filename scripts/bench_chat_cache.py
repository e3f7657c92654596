"""What the KV cache of a conversation saves a chat turn: each turn's prefill on a pyramid that answered the
earlier turns (as `edge-spec chat` and `serve` do) against a fresh pyramid reading the whole conversation.
Greedy; both pyramids give the same answer (checked). Prints one JSON line per turn.

    flock /tmp/edge-spec-bench.lock .venv/bin/python scripts/bench_chat_cache.py --target smollm2-135m
"""

from __future__ import annotations

import argparse
import json

from edge_spec import Pyramid

QUESTIONS = [
    "I am planning a vegetable garden on a small balcony facing south. What should I think about first?",
    "Which vegetables grow well in pots of about twenty litres?",
    "How often should I water them in summer, and what about holidays?",
    "Write a short checklist I can pin next to the door.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=96)
    a = parser.parse_args()
    system = {
        "role": "system",
        "content": "You are a patient gardening assistant. Answer in a few sentences.",
    }
    messages = [system]
    with Pyramid.open(a.target, draft=None) as warm, Pyramid.open(a.target, draft=None) as cold:
        for turn, question in enumerate(QUESTIONS, 1):
            messages.append({"role": "user", "content": question})
            cold.target.reset()  # re-read from scratch
            fresh = cold.generate(messages, max_tokens=a.max_tokens)
            reused = len(warm.encode(messages)) - 1 - warm.target.missing(warm.encode(messages)[:-1])
            answer = warm.generate(messages, max_tokens=a.max_tokens)
            messages.append({"role": "assistant", "content": answer.text})
            row = {
                "turn": turn,
                "prompt_tokens": answer.stats.prompt_tokens,
                "reused": reused,
                "prefill_s_cached": round(answer.stats.prefill_seconds, 4),
                "prefill_s_fresh": round(fresh.stats.prefill_seconds, 4),
                "same_answer": answer.token_ids == fresh.token_ids,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
