"""CPU steal: the share of this machine's CPU time its hypervisor gave to other guests.

On a shared virtual machine, steal is what makes one generation run at a third of the speed of the next
(measured here: 0% steal 9.2 tok/s, 61% steal 1.6 tok/s, same prompt). The benchmark measures it around
every generation and reruns the ones it spoiled. Linux reports it in /proc/stat; elsewhere it is unknown.
"""

from __future__ import annotations

from pathlib import Path

PROC_STAT = Path("/proc/stat")


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) CPU time in clock ticks since boot over all CPUs, or None where /proc/stat lacks it."""
    try:
        with PROC_STAT.open() as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the CPU time between two `cpu_times()` readings that was stolen (0..1); None if unknown."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
