"""`edge-spec bench`: what speculation buys on this machine, with quality next to speed.

One process runs the target alone and every configured mode over the same prompts, interleaved: each
prompt goes through every mode before the next prompt, after one short warm-up generation per mode. Seeds
are fixed, only generated tokens count, and every tier's KV cache is cleared before each generation, so
prefill is measured in full and no mode inherits another's cache.

Mode kinds (the literature's names):
    SD      2 tiers, exact acceptance (greedy match / lossless sampling)
    FSD     2 tiers, fuzzy at the target (tau_T)
    HSD     3 tiers, exact at both stages (hierarchical SD: lossless)
    PSD_A   3 tiers, exact draft -> qualifier, fuzzy at the target
    PSD_F   3 tiers, fuzzy at both stages (tau_Q, tau_T)
2-tier kinds run for every draft and for the qualifier under the target; 3-tier kinds for every draft
under the qualifier. Each runs once per lookahead policy given. Fuzzy stages over an n-gram proposer are
left out: without a distribution there is no divergence, so they equal the exact ones.

Quality, per generation: agreement with the target alone's output (tokens equal before the first
divergence, and position by position); with greedy decoding, the share of tokens on the target's greedy
path (within GREEDY_PATH_TOLERANCE logits of its argmax, teacher-forced in one pass: 100% for a correct
lossless mode, where agreement can still part at near-ties); on the code suite, HumanEval pass@1.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_spec.api import NGRAM, Pyramid
from edge_spec.backend import Tier, TierConfig
from edge_spec.errors import ConfigError
from edge_spec.lookahead import DEFAULT_LOOKAHEAD, parse_lookahead
from edge_spec.models import resolve
from edge_spec.peer import PeerRun, run_peer
from edge_spec.pyramid import Draft, StageConfig
from edge_spec.sandbox import pass_at_1
from edge_spec.steal import cpu_times, steal_share
from edge_spec.suites import SUITES, BenchPrompt, load_suite
from edge_spec.text import TextAssembler

MODE_KINDS = ("sd", "fsd", "hsd", "psd-a", "psd-f", "choose")
TARGET_ALONE = "target alone"
GREEDY_PATH_TOLERANCE = 0.3  # logits; near-ties flip between batched and single decodes
WARMUP_PROMPT = "Say hello."
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Defaults: every suite, 128 tokens, greedy, one fuzzy threshold."""

    suites: tuple[str, ...] = SUITES
    limit: int | None = None  # prompts per suite (None = all)
    max_tokens: int = 128  # most tokens generated per prompt
    repeats: int = 1  # measured passes over the prompts; tokens/s is the median over passes
    max_steal: float = 0.1  # a generation with more of the CPU stolen (steal.py) is run again (1 = never)...
    retries: int = 3  # ...up to this many more times, keeping the attempt with the least steal
    kinds: tuple[str, ...] | None = None  # MODE_KINDS; None = sd,fsd(,choose) (2 tiers) / sd,hsd,psd-a,psd-f
    taus: tuple[float, ...] = (0.5,)  # tau_T of every fuzzy mode (PyramidSD's published setting)
    tau_q: float | None = None  # PSD_F's draft -> qualifier threshold; None = tau_T (tau_Q <= tau_T)
    divergence: str = "js"  # fuzzy divergence (acceptance.DIVERGENCES)
    lookaheads: tuple[str, ...] = (DEFAULT_LOOKAHEAD,)  # each mode runs once per policy; "a,b" per stage
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0
    pass_timeout: float = 10.0  # seconds per HumanEval program
    as_commands: bool = False  # each generation a new pyramid on the calibration cache, as `run` commands

    def __post_init__(self) -> None:
        unknown = set(self.suites) - set(SUITES)
        if unknown or not self.suites:
            raise ConfigError(f"suites must be among {', '.join(SUITES)}, got {', '.join(self.suites)}")
        bad = set(self.kinds or ()) - set(MODE_KINDS)
        if bad:
            raise ConfigError(f"mode kinds must be among {', '.join(MODE_KINDS)}, got {', '.join(bad)}")
        if self.max_tokens < 1 or self.repeats < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("max tokens, repeats and limit must be at least 1")
        if self.retries < 0 or not 0.0 <= self.max_steal <= 1.0:
            raise ConfigError("retries must be >= 0 and the steal limit in [0, 1]")
        for spec in self.lookaheads:
            for part in spec.split(","):
                parse_lookahead(part)


@dataclass(frozen=True)
class Mode:
    """One configuration measured: which tiers, and how each stage verifies."""

    name: str
    kind: str  # "target", one of MODE_KINDS, or "peer"
    draft: str | None = None  # label of the bottom proposer (a draft model or "ngram"); None: target alone
    qualifier: bool = False
    stages: tuple[StageConfig, ...] = (StageConfig(),)
    candidates: tuple[str, ...] = ()  # labels of the drafts goodput chooses from per round (kind "choose")


@dataclass
class Tiers:
    """The loaded models by label: the target, an optional qualifier, and the proposers below them (draft
    models, or "ngram" for prompt lookup)."""

    target: Tier
    drafts: dict[str, Tier | str]
    qualifier: tuple[str, Tier] | None = None
    _pyramids: dict[str, Pyramid] = field(default_factory=dict)

    @property
    def proposers(self) -> dict[str, Tier | str]:
        """What can sit under the target in a 2-tier mode, by label: the drafts and the qualifier."""
        return {**self.drafts, **dict([self.qualifier] if self.qualifier else [])}

    @property
    def models(self) -> dict[str, Tier]:
        """Every loaded model by label, target first."""
        found = {"target": self.target, **dict([self.qualifier] if self.qualifier else []), **self.drafts}
        return {label: t for label, t in found.items() if isinstance(t, Tier)}

    @classmethod
    def load(
        cls, target: str, drafts: Sequence[str], qualifier: str | None, config: TierConfig | None = None
    ) -> Tiers:
        """Load the models a bench compares (references as `edge_spec.models.resolve` takes them; a draft
        may be "ngram"), labelled by `model_label`; on any error, what was loaded is freed."""
        loaded: list[Tier] = []

        def load(ref: str) -> Tier:
            loaded.append(Tier(resolve(ref), config))
            return loaded[-1]

        try:
            below = {model_label(r): NGRAM if r == NGRAM else load(r) for r in dict.fromkeys(drafts)}
            middle = (model_label(qualifier), load(qualifier)) if qualifier else None
            return cls(load(target), below, middle)
        except BaseException:
            for t in loaded:
                t.close()
            raise

    def close(self) -> None:
        """Free every model."""
        for t in self.models.values():
            t.close()

    def pyramid(self, mode: Mode, as_command: bool = False) -> Pyramid:
        """The mode's tiers assembled, once per mode: like a long-lived app, a mode keeps its pyramid (and
        a goodput policy's measured costs) from the warm-up on. `as_command`: a new pyramid each time, on
        the calibration cache, as each `edge-spec run` command starts (the warm-up is the first one)."""
        if as_command:
            return self._assemble(mode, calibration_cache=True)
        if mode.name not in self._pyramids:
            self._pyramids[mode.name] = self._assemble(mode)
        return self._pyramids[mode.name]

    def _assemble(self, mode: Mode, calibration_cache: bool = False) -> Pyramid:
        draft: Draft = None
        if mode.candidates:
            draft = [self.proposers[c] for c in mode.candidates]
        elif mode.draft is not None:
            draft = self.proposers[mode.draft]
        qualifier = self.qualifier[1] if mode.qualifier and self.qualifier else None
        return Pyramid(self.target, qualifier, draft, mode.stages, calibration_cache)


def model_label(ref: str) -> str:
    """A short name for a model reference in tables: a carried or preset name as given, a file's stem."""
    return Path(ref).name.removesuffix(".gguf") if ref.endswith(".gguf") else ref


def plan_modes(drafts: Sequence[str], qualifier: str | None, cfg: BenchConfig) -> list[Mode]:
    """The target alone, then every configured kind x proposer x lookahead x threshold. `drafts` are the
    draft labels, `qualifier` the qualifier's label (None without one)."""
    kinds = cfg.kinds or (
        ("sd", "hsd", "psd-a", "psd-f")
        if qualifier
        else ("sd", "fsd", *(("choose",) if len(drafts) > 1 else ()))
    )
    modes = [Mode(TARGET_ALONE, "target")]

    def stage(tau: float, lookahead: str) -> StageConfig:
        return StageConfig("fuzzy" if tau > 0 else "exact", tau, cfg.divergence, lookahead=lookahead)

    for look in cfg.lookaheads:
        per_stage = [s.strip() for s in look.split(",")]
        bottom, top = per_stage[0], per_stage[-1]  # 2-tier modes use the target stage's policy
        for p in [*drafts, *([qualifier] if qualifier else [])]:
            if "sd" in kinds:
                modes.append(Mode(f"SD {p} {look}", "sd", p, False, (stage(0, top),)))
            if "fsd" in kinds and p != NGRAM:  # no distribution: fuzzy = exact over an n-gram
                modes += [
                    Mode(f"FSD {p} tau={t} {look}", "fsd", p, False, (stage(t, top),)) for t in cfg.taus
                ]
        if "choose" in kinds and len(drafts) > 1 and top.split(":")[0] == "goodput":
            label = "|".join(drafts)
            modes.append(
                Mode(f"SD choose {label} {look}", "choose", label, False, (stage(0, top),), tuple(drafts))
            )
        for p in drafts if qualifier else ():
            via = f"{p}>{qualifier}"
            if "hsd" in kinds:
                modes.append(Mode(f"HSD {via} {look}", "hsd", p, True, (stage(0, bottom), stage(0, top))))
            for t in cfg.taus if "psd-a" in kinds else ():
                name = f"PSD_A {via} tau_T={t} {look}"
                modes.append(Mode(name, "psd-a", p, True, (stage(0, bottom), stage(t, top))))
            for t in cfg.taus if "psd-f" in kinds and p != NGRAM else ():
                tq = t if cfg.tau_q is None else cfg.tau_q
                name = f"PSD_F {via} tau_Q={tq} tau_T={t} {look}"
                modes.append(Mode(name, "psd-f", p, True, (stage(tq, bottom), stage(t, top))))
    return modes


@dataclass(frozen=True)
class Peer:
    """llama.cpp's llama-speculative-simple on the same prompts and models: a row of its own."""

    binary: Path
    draft: str  # label of the draft model it runs with
    draft_max: int  # its --draft-max

    @property
    def name(self) -> str:
        return f"llama.cpp speculative-simple {self.draft} draft-max={self.draft_max}"


PEER_DRAFT_MAX = 3  # llama-speculative-simple's own default --spec-draft-n-max


def choose_peer(binary: Path | None, tiers: Tiers, cfg: BenchConfig, draft_max: int | None) -> Peer | None:
    """The peer row, when there is a binary and a draft model for it: the first draft model (else the
    qualifier), drafting `draft_max` tokens (default: K of the first fixed:K lookahead, else
    PEER_DRAFT_MAX)."""
    models = [label for label, d in tiers.proposers.items() if isinstance(d, Tier)]
    if binary is None or not models:
        return None
    fixed = [int(la.split(":")[1]) for la in cfg.lookaheads if la.startswith("fixed:") and "," not in la]
    return Peer(binary, models[0], draft_max or (fixed[0] if fixed else PEER_DRAFT_MAX))


def agreement(ours: Sequence[int], ref: Sequence[int]) -> tuple[float, float]:
    """(tokens equal before the first divergence, tokens equal position by position) / len(ref)."""
    if not ref:
        return 1.0, 1.0
    pairs = list(zip(ours, ref, strict=False))
    prefix = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    return prefix / len(ref), sum(a == b for a, b in pairs) / len(ref)


def greedy_path_share(target: Tier, prompt_ids: list[int], output: Sequence[int]) -> float:
    """Share of generated tokens within GREEDY_PATH_TOLERANCE of the target's argmax, teacher-forced in
    one pass over prompt + output (the prompt's cache is reused from the previous call on it)."""
    if not output:
        return 1.0
    rows = target.score([*prompt_ids, *output], len(output) + 1)[:-1]
    deficit = rows.max(axis=1) - rows[np.arange(len(output)), list(output)]
    return float((deficit < GREEDY_PATH_TOLERANCE).mean())


def _generate(tiers: Tiers, mode: Mode, prompt: BenchPrompt, cfg: BenchConfig, max_tokens: int) -> dict:
    pyr = tiers.pyramid(mode, cfg.as_commands)
    for tier in pyr.models:
        tier.reset()
    result = pyr.generate(
        prompt.text,
        raw=prompt.raw,
        stop=prompt.stop,
        max_tokens=max_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    summary = result.stats.summary()
    labels = {t.path.name: label for label, t in tiers.models.items()}
    summary["tier_seconds"] = {labels.get(k, k): v for k, v in summary["tier_seconds"].items()}
    return {"text": result.text, "token_ids": result.token_ids, **summary}


def _measure(tiers: Tiers, measured: Mode | Peer, prompt: BenchPrompt, cfg: BenchConfig) -> dict:
    if isinstance(measured, Peer):
        return _peer_row(measured, tiers, prompt, cfg)
    return _generate(tiers, measured, prompt, cfg, cfg.max_tokens)


def _least_stolen(generation: Callable[[], dict], cfg: BenchConfig) -> dict:
    """Run one measured generation, again (up to cfg.retries times) while the hypervisor stole more than
    cfg.max_steal of the CPU during it; the attempt with the least steal, with `steal` and `attempts`."""
    kept: dict | None = None
    for attempt in range(1, cfg.retries + 2):
        before = cpu_times()
        out = generation()
        out["steal"], out["attempts"] = steal_share(before, cpu_times()), attempt
        if kept is None or (out["steal"] is not None and out["steal"] < kept["steal"]):
            kept = out
        if out["steal"] is None or out["steal"] <= cfg.max_steal:
            break
    assert kept is not None
    kept["attempts"] = attempt  # including the attempts not kept
    return kept


def _peer_row(peer: Peer, tiers: Tiers, prompt: BenchPrompt, cfg: BenchConfig) -> dict:
    pyr = tiers.pyramid(Mode(TARGET_ALONE, "target"))
    bos = tiers.target.bos_text if tiers.target.adds_bos else ""  # the binary adds BOS itself
    draft = tiers.proposers[peer.draft]
    assert isinstance(draft, Tier)
    run: PeerRun = run_peer(
        peer.binary,
        tiers.target.path,
        draft.path,
        pyr.prompt_text(prompt.text, prompt.raw).removeprefix(bos),
        max_tokens=cfg.max_tokens,
        draft_max=peer.draft_max,
        n_ctx=tiers.target.n_ctx,
        threads=tiers.target.n_threads,
        seed=cfg.seed,
    )
    cut = TextAssembler(prompt.stop)  # the binary knows no stop strings
    cut.feed(run.text.encode())
    text = cut.text
    return {
        "text": text,
        "token_ids": tiers.target.tokenize(text, add_bos=False, special=False) if text else [],
        "generated_tokens": run.generated_tokens,
        "prefill_seconds": run.prefill_seconds,
        "decode_seconds": run.decode_seconds,
        "tokens_per_second": run.tokens_per_second,
        "stages": [
            {"proposer": peer.draft, "verifier": "target", "proposed": run.drafted, "accepted": run.accepted}
        ],
    }


def run(
    tiers: Tiers, modes: Sequence[Mode], cfg: BenchConfig, peer: Peer | None = None, progress: bool = True
) -> list[dict]:
    """Measure every mode (and the peer) on every prompt of the configured suites: one row per prompt and
    mode, with timings, per-stage counts and quality. `progress` shows a bar on stderr."""
    prompts = [p for s in cfg.suites for p in load_suite(s, cfg.limit)]
    measured: list[Mode | Peer] = [*modes, *([peer] if peer else [])]
    if len({m.name for m in measured}) != len(measured):
        raise ConfigError("two modes share a name: give each draft and lookahead once")
    encode = tiers.pyramid(Mode(TARGET_ALONE, "target")).encode
    prompt_ids = {p.id: encode(p.text, p.raw) for p in prompts}
    for p in prompts:
        if (n := len(prompt_ids[p.id])) + cfg.max_tokens > tiers.target.n_ctx:
            raise ConfigError(
                f"{p.id}: {n} prompt tokens + {cfg.max_tokens} generated do not fit the "
                f"{tiers.target.n_ctx}-token context; raise --ctx or lower --max-tokens"
            )
    for mode in modes:
        _generate(tiers, mode, BenchPrompt("warm-up", "chat", WARMUP_PROMPT, False), cfg, WARMUP_TOKENS)
    runs: dict[tuple[str, str], list[dict]] = {}
    total = cfg.repeats * len(prompts) * len(measured)
    with tqdm(total=total, desc="generate", unit="gen", disable=not progress, dynamic_ncols=True) as bar:
        for _ in range(cfg.repeats):
            for prompt in prompts:
                for m in measured:
                    bar.set_postfix_str(f"{prompt.id} | {m.name}", refresh=True)
                    out = _least_stolen(partial(_measure, tiers, m, prompt, cfg), cfg)
                    runs.setdefault((prompt.id, m.name), []).append(out)
                    bar.update()
    pairs = [(prompt, m) for prompt in prompts for m in measured]
    with tqdm(pairs, desc="quality", unit="row", disable=not progress, dynamic_ncols=True) as scoring:
        return [_scored(tiers, prompt, prompt_ids[prompt.id], m, runs, cfg) for prompt, m in scoring]


def _scored(
    tiers: Tiers,
    prompt: BenchPrompt,
    prompt_ids: list[int],
    mode: Mode | Peer,
    runs: dict[tuple[str, str], list[dict]],
    cfg: BenchConfig,
) -> dict:
    """One prompt's row for one mode: its first run, tokens/s as the median over repeats, and quality."""
    repeats = runs[(prompt.id, mode.name)]
    first = repeats[0]
    kind = "peer" if isinstance(mode, Peer) else mode.kind
    row = {"prompt": prompt.id, "suite": prompt.suite, "mode": mode.name, "kind": kind, **first}
    row["tokens_per_second"] = statistics.median(r["tokens_per_second"] for r in repeats)
    row["steal"] = _median(r["steal"] for r in repeats)
    row["reruns"] = sum(r["attempts"] - 1 for r in repeats)
    reference = runs[(prompt.id, TARGET_ALONE)][0]["token_ids"]
    row["prefix_agreement"], row["token_agreement"] = agreement(first["token_ids"], reference)
    row["greedy_path"] = None
    if cfg.temperature == 0 and kind not in ("target", "peer"):
        row["greedy_path"] = greedy_path_share(tiers.target, prompt_ids, first["token_ids"])
    outcome = pass_at_1(prompt, first["text"], cfg.pass_timeout) if prompt.test else None
    row["passed"] = outcome.passed if outcome else None
    row["pass_status"] = outcome.status if outcome else None
    return row


def _pooled(rows: list[dict], key: str) -> list[float | None]:
    """Per stage: sum of `key` over rows (e.g. accepted) / sum of proposed (or of speculating rounds)."""
    n_stages = len(rows[0]["stages"])
    out: list[float | None] = []
    for j in range(n_stages):
        stages = [r["stages"][j] for r in rows]
        num = sum(s["accepted"] for s in stages)
        if key == "acceptance":
            den = sum(s["proposed"] for s in stages)
        else:
            den = sum(s.get("rounds", 0) - s.get("skipped", 0) for s in stages)
        out.append(num / den if den else None)
    return out


def _median(values: Iterator[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _mean(values: Iterator[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def summarize(rows: list[dict]) -> list[dict]:
    """Per mode and suite (and "all" when several suites ran), in the rows' mode order: median tokens/s
    and its ratio to the target alone on the same prompt (median, min, max over prompts), median prefill
    seconds, acceptance and mean accepted length per stage (pooled over prompts; the length counts accepted
    proposed tokens per round that proposed any, without the verifier's own token), time share per tier
    and outside llama_decode (pooled), and quality: agreement and greedy-path share (mean over prompts),
    pass@1 (share of code prompts passing); CPU steal (median share) and the generations rerun for it."""
    base = {(r["prompt"]): r["tokens_per_second"] for r in rows if r["kind"] == "target"}
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for suite in [*suites, *(["all"] if len(suites) > 1 else [])]:
            sel = [r for r in rows if r["mode"] == mode and suite in (r["suite"], "all")]
            ratios = [r["tokens_per_second"] / base[r["prompt"]] for r in sel if base[r["prompt"]] > 0]
            decode = sum(r["decode_seconds"] for r in sel)
            tiers: dict[str, float] = {}
            for r in sel:
                for t, sec in r.get("tier_seconds", {}).items():
                    tiers[t] = tiers.get(t, 0.0) + sec
            passes = [r["passed"] for r in sel if r["passed"] is not None]
            out.append(
                {
                    "mode": mode,
                    "kind": sel[0]["kind"],
                    "suite": suite,
                    "prompts": len(sel),
                    "tokens_per_second": statistics.median(r["tokens_per_second"] for r in sel),
                    "ratio": statistics.median(ratios) if ratios else None,
                    "ratio_min": min(ratios, default=None),
                    "ratio_max": max(ratios, default=None),
                    "prefill_seconds": statistics.median(r["prefill_seconds"] for r in sel),
                    "acceptance": _pooled(sel, "acceptance"),
                    "mean_accepted_length": _pooled(sel, "length"),
                    "tier_share": {t: s / decode for t, s in tiers.items()} if decode and tiers else {},
                    "python_overhead_share": 1 - sum(tiers.values()) / decode if decode and tiers else None,
                    "prefix_agreement": _mean(r["prefix_agreement"] for r in sel),
                    "token_agreement": _mean(r["token_agreement"] for r in sel),
                    "greedy_path": _mean(r["greedy_path"] for r in sel),
                    "pass_at_1": statistics.mean(passes) if passes else None,
                    "steal": _median(r["steal"] for r in sel),
                    "reruns": sum(r["reruns"] for r in sel),
                }
            )
    return out
