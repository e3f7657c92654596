"""Counters of one generation: per verification stage and per tier, and the summary written as JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class StageStats:
    """One verification stage (a verifier checking the tier below it).

    accepted: proposed tokens the verifier kept; recovered: rounds ended by a rejection, where the verifier
    emitted its own token; bonus: rounds where every proposed token was accepted and the verifier added one;
    skipped: rounds where nothing was proposed (the lookahead chose 0, or an n-gram found no match) and
    the verifier decoded alone. The accepted-length histogram counts accepted proposed tokens per round with
    a proposal, without the verifier's token; the block-length histogram counts the lengths asked for, and,
    for a generation decoded together with others, by the number of sequences in its round.
    These are the stage's only counters: `lookahead` shows the policy's report with them.
    """

    verifier: str
    proposer: str
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    recovered: int = 0
    bonus: int = 0
    skipped: int = 0
    policy: dict[str, object] = field(default_factory=dict)  # the lookahead policy's summary(), see lookahead
    accepted_lengths: Counter[int] = field(default_factory=Counter)
    block_lengths: Counter[int] = field(default_factory=Counter)
    by_batch: dict[int, Counter[int]] = field(default_factory=dict)  # sequences decoded together -> k counts

    @property
    def lookahead(self) -> dict[str, object]:
        """The lookahead policy's summary (its name, settings and final estimates) with this stage's counts
        of its rounds: rounds, requested (tokens asked for), proposed, accepted, acceptance_rate (unrounded)
        and k_histogram (the block-length histogram, keys as strings); {} before the policy reported."""
        if not self.policy:
            return {}
        return {
            "policy": self.policy["policy"],
            "rounds": self.rounds,
            "requested": sum(k * n for k, n in self.block_lengths.items()),
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": self.accepted / self.proposed if self.proposed else None,
            "k_histogram": {str(k): n for k, n in sorted(self.block_lengths.items())},
            **self.policy,
        }

    def record(self, proposed: int, accepted: int, requested: int, batch: int = 1) -> None:
        self.rounds += 1
        self.block_lengths[requested] += 1
        self.by_batch.setdefault(batch, Counter())[requested] += 1
        if proposed == 0:
            self.skipped += 1
            return
        self.proposed += proposed
        self.accepted += accepted
        if accepted < proposed:
            self.recovered += 1
        else:
            self.bonus += 1
        self.accepted_lengths[accepted] += 1

    def speculation(self) -> str:
        """What speculation did at this stage, in words: acceptance and block lengths, or why it drafted
        nothing (goodput found no block that can pay on this machine, or none that pays at the acceptance
        seen; the proposer found nothing to propose)."""
        asked = sorted(k for k in self.block_lengths if k > 0)
        if self.proposed:
            drafted = sum(self.block_lengths[k] for k in asked)
            ks = f"{asked[0]}" if asked[0] == asked[-1] else f"{asked[0]}-{asked[-1]}"
            return (
                f"accepted {self.accepted}/{self.proposed} ({self.accepted / self.proposed:.0%}), "
                f"blocks of {ks} in {drafted}/{self.rounds} rounds"
            )
        if asked:
            return "drafted nothing: no proposal found"
        if self.policy.get("can_pay") is False:
            return "not drafting: cannot pay on this machine"
        if self.policy.get("policy") in ("goodput", "choose"):
            return "not drafting: too little accepted to pay"
        return "not drafting"

    def summary(self) -> dict[str, object]:
        speculated = self.rounds - self.skipped
        return {
            "verifier": self.verifier,
            "proposer": self.proposer,
            "rounds": self.rounds,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "recovered": self.recovered,
            "bonus": self.bonus,
            "skipped": self.skipped,
            "acceptance_rate": round(self.accepted / self.proposed, 4) if self.proposed else None,
            "mean_accepted_length": round(self.accepted / speculated, 3) if speculated else None,
            "accepted_length_histogram": dict(sorted(self.accepted_lengths.items())),
            "block_length_histogram": dict(sorted(self.block_lengths.items())),
            **(
                {  # only for a generation decoded together with others
                    "block_lengths_by_batch": {
                        b: dict(sorted(ks.items())) for b, ks in sorted(self.by_batch.items())
                    }
                }
                if set(self.by_batch) - {1}
                else {}
            ),
            "lookahead": self.lookahead,
        }


@dataclass
class GenerationStats:
    """Timings and counts of one generation. Prefill: the prompt's decode in every tier; decode: the rest."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stages: list[StageStats] = field(default_factory=list)
    tier_seconds: dict[str, float] = field(default_factory=dict)  # time inside llama_decode, decode phase
    finish_reason: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def summary(self) -> dict[str, object]:
        in_llama = sum(self.tier_seconds.values())
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "prefill_seconds": round(self.prefill_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
            "tokens_per_second": round(self.tokens_per_second, 2),
            "finish_reason": self.finish_reason,
            "tier_seconds": {k: round(v, 4) for k, v in self.tier_seconds.items()},
            "python_overhead_share": round(1 - in_llama / self.decode_seconds, 4)
            if self.decode_seconds
            else None,
            "stages": [s.summary() for s in self.stages],
        }

    def line(self) -> str:
        """The short human summary printed to stderr after a run."""
        parts = [
            f"{self.generated_tokens} tokens",
            f"{self.tokens_per_second:.1f} tok/s",
            f"prefill {self.prefill_seconds:.2f}s ({self.prompt_tokens} prompt tokens)",
        ]
        parts += [f"{s.proposer}->{s.verifier} {s.speculation()}" for s in self.stages]
        if self.finish_reason == "context":
            parts.append("stopped: the context window is full (raise --ctx)")
        return ", ".join(parts)
