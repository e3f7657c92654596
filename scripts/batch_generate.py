#!/usr/bin/env python3
"""Offline batch generation over a JSONL file: the `edge-spec batch` command as a script.

    python scripts/batch_generate.py prompts.jsonl answers.jsonl --target qwen-1.5b --draft qwen-0.5b

Input and output formats, resuming and exit status: `edge-spec batch --help` and the README.
"""

from edge_spec.cli import batch

if __name__ == "__main__":
    batch(prog_name="batch_generate.py")
