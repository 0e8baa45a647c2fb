"""Turn the runs into the one table the issue asks for (Markdown, so it pastes into RESULTS.md).

Ratios are to the seed's pattern (Flask-Mail, a thread and a connection per
message) and to Postfix's ``smtp-source`` (the practical ceiling). A sender with
a run whose sink count fell short is flagged, and its lossy runs are not used
for the median: a fast run that lost mail is not a fast run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

__all__ = ["Run", "Summary", "markdown_table", "summarise"]

SEED = "flask-mail-threads"
CEILING = "smtp-source"


@dataclass
class Run:
    """One sender process: what it says it did, and what the sink says it got."""

    sender: str
    n: int
    seconds: float
    cpu_seconds: float
    peak_rss_kb: int
    sink_delta: int
    accepted: int
    failed: int
    exit_code: int = 0

    @property
    def lost(self) -> int:
        return max(0, self.n - self.sink_delta)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.lost == 0 and self.failed == 0

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Summary:
    sender: str
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def rate(self) -> float:
        good = self.good
        return statistics.median(r.rate for r in good) if good else 0.0

    @property
    def rate_range(self) -> tuple[float, float]:
        good = self.good or self.runs
        return (min(r.rate for r in good), max(r.rate for r in good)) if good else (0.0, 0.0)

    @property
    def cpu_ms_per_msg(self) -> float:
        runs = self.good or self.runs
        return statistics.median(1000 * r.cpu_seconds / r.n for r in runs) if runs else 0.0

    @property
    def peak_rss_mb(self) -> float:
        return max((r.peak_rss_kb for r in self.runs), default=0) / 1024


def summarise(runs: list[Run], labels: dict[str, str]) -> list[Summary]:
    by: dict[str, Summary] = {}
    for r in runs:
        by.setdefault(r.sender, Summary(r.sender, labels.get(r.sender, r.sender))).runs.append(r)
    return list(by.values())


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}×" if base > 0 and x > 0 else "–"


def markdown_table(summaries: list[Summary]) -> str:
    base = {s.sender: s for s in summaries}
    seed = base[SEED].rate if SEED in base else 0.0
    ceiling = base[CEILING].rate if CEILING in base else 0.0
    lines = [
        "| sender | messages/s median (min–max) | × seed | × smtp-source | client CPU ms/msg | peak RSS MB | runs OK |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lo, hi = s.rate_range
        bad = [r for r in s.runs if not r.ok]
        note = ""
        if bad:
            lost = sum(r.lost for r in bad)
            failed = sum(r.failed for r in bad)
            note = f" ⚠ lost {lost}, failed {failed}"
        lines.append(
            f"| {s.label} | {s.rate:,.0f} ({lo:,.0f}–{hi:,.0f}) | {_ratio(s.rate, seed)} | {_ratio(s.rate, ceiling)} "
            f"| {s.cpu_ms_per_msg:.3f} | {s.peak_rss_mb:.0f} | {len(s.good)}/{len(s.runs)}{note} |"
        )
    return "\n".join(lines)
