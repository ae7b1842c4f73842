"""The benchmark's report: the table's rows and how they print, and what the run records of its machine
(cores, CPU model, the share of CPU time the hypervisor stole)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Summary

__all__ = ["Row", "cpu_ticks", "fmt", "machine", "render", "steal_percent"]


@dataclass
class Row:
    measure: str
    result: str
    goal: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "MISSED")


def fmt(summary: Summary, unit: str = "", digits: int = 0) -> str:
    return f"{summary.median:,.{digits}f}{unit} ({summary.low:,.{digits}f}-{summary.high:,.{digits}f})"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(), "kernel": platform.release()}


def cpu_ticks() -> tuple[int, int]:
    """(all, stolen) CPU ticks of the machine so far, from ``/proc/stat``; (0, 0) where it cannot be read."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    return sum(fields), fields[7]


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time a hypervisor gave to other guests in between: on a shared virtual
    machine the figures of a run with a high share are slowed unevenly (variants and repeats alike)."""
    total = after[0] - before[0]
    return round(100 * (after[1] - before[1]) / total, 1) if total else 0.0


def render(rows: list[Row]) -> str:
    header = ("measure", "result (median, min-max)", "goal", "verdict")
    cells = [(r.measure, r.result, r.goal, r.verdict) for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)
