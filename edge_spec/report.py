"""The benchmark's outputs: a markdown table for people at a terminal, a JSON document for machines and
a PNG plot of speed ratio against quality per mode (matplotlib, the `bench` extra)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_spec.backend import Tier, build_info
from edge_spec.bench import BenchConfig, Mode, Peer, Tiers
from edge_spec.host import cpu_name
from edge_spec.models import file_sha256

COLUMNS = (
    "mode",
    "suite",
    "tok/s",
    "ratio (min-max)",
    "prefill s",
    "acceptance",
    "accepted length",
    "time: tiers / python",
    "greedy path",
    "agreement prefix / tokens",
    "pass@1",
    "steal / reruns",
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _per_stage(values: Sequence[float | None], fmt: str) -> str:
    shown = ["-" if v is None else format(v, fmt) for v in values]
    return ", ".join(shown) if any(v is not None for v in values) else "-"


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as a markdown table: one row per mode and suite."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for s in summary:
        speculative = s["kind"] != "target"
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f} ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})"
        shares = ", ".join(f"{t} {v:.0%}" for t, v in s["tier_share"].items())
        time = f"{shares} / {_pct(s['python_overhead_share'])}" if shares else "-"
        cells = [
            s["mode"],
            s["suite"],
            f"{s['tokens_per_second']:.1f}",
            ratio,
            f"{s['prefill_seconds']:.2f}",
            _per_stage(s["acceptance"], ".0%") if speculative else "-",
            _per_stage(s["mean_accepted_length"], ".2f") if speculative else "-",
            time,
            _pct(s["greedy_path"]),
            f"{_pct(s['prefix_agreement'])} / {_pct(s['token_agreement'])}",
            _pct(s["pass_at_1"]),
            f"{_pct(s['steal'])} / {s['reruns']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(target: Tier) -> dict[str, Any]:
    """Where the numbers come from: OS, CPU, cores, threads, device and the llama.cpp build."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": target.n_threads,
        "device": target.device,
        "python": platform.python_version(),
        **build_info(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for the top of the table."""
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['threads']} threads), {info['device']}; "
        f"llama-cpp-python {info['llama_cpp_python']}"
    )


def models(tiers: dict[str, Tier]) -> dict[str, dict[str, Any]]:
    """Each model by label: file, size, SHA-256 and llama.cpp's description."""
    return {
        label: {
            "path": str(t.path),
            "bytes": t.path.stat().st_size,
            "sha256": file_sha256(t.path),
            "description": t.description,
        }
        for label, t in tiers.items()
    }


def header(started: datetime.datetime, tiers: Tiers, cfg: BenchConfig, info: dict[str, Any]) -> str:
    """The line above the table: when, which models, which settings, which machine."""
    below = ", ".join(d.path.name if isinstance(d, Tier) else d for d in tiers.drafts.values())
    via = f" via {tiers.qualifier[1].path.name}" if tiers.qualifier else ""
    return (
        f"edge-spec bench, {started:%Y-%m-%d %H:%M %Z}: {tiers.target.path.name} <- {below}{via}; "
        f"{cfg.max_tokens} tokens, temperature {cfg.temperature}, seed {cfg.seed}; {machine_line(info)}"
    )


def document(
    started: datetime.datetime,
    info: dict[str, Any],
    tiers: Tiers,
    cfg: BenchConfig,
    modes: Sequence[Mode],
    peer: Peer | None,
    summary: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The whole run for the JSON file."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "models": models(tiers.models),
        "settings": dataclasses.asdict(cfg) | {"peer": str(peer.binary) if peer else None},
        "modes": [dataclasses.asdict(m) for m in modes]
        + (
            [{"name": peer.name, "kind": "peer", "draft": peer.draft, "draft_max": peer.draft_max}]
            if peer
            else []
        ),
        "summary": summary,
        "rows": rows,
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    """The whole run (machine, models, settings, summary, per-prompt rows) as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def plot(path: Path, summary: list[dict[str, Any]]) -> bool:
    """Speed ratio (y) against quality (x) per mode, over all suites: one panel against agreement with the
    target's own output, and one against HumanEval pass@1 when the code suite ran. False when matplotlib
    is missing (install `edge-spec[bench]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    suites = {s["suite"] for s in summary}
    rows = [s for s in summary if s["suite"] == ("all" if "all" in suites else s["suite"])]
    panels = [("token_agreement", "tokens equal to the target alone's output")]
    if any(s["pass_at_1"] is not None for s in rows):
        panels.append(("pass_at_1", "HumanEval pass@1"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for s in rows:
            if s[key] is None or s["ratio"] is None:
                continue
            ax.scatter(s[key], s["ratio"], marker="s" if s["kind"] == "peer" else "o")
            ax.annotate(
                s["mode"], (s[key], s["ratio"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(label)
        ax.set_ylabel("decode speed / target alone (median)")
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    fig.suptitle("edge-spec bench: speed vs quality")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
