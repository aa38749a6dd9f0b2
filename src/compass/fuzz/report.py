"""The fuzz report: verdicts counted by category and outcome, the failing cases, as text and a markdown table."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .cases import CATEGORIES
from .format import FAILURES, Case


@dataclass
class Report:
    """The verdicts of a run, counted by category and outcome, and the failing cases."""

    seed: int
    models: list[str]
    counts: dict = field(default_factory=lambda: defaultdict(Counter))
    failures: list = field(default_factory=list)
    slowest: dict = field(default_factory=lambda: defaultdict(float))
    growth: dict = field(default_factory=lambda: defaultdict(float))
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    baseline_mb: float = 0.0
    peak_mb: float = 0.0
    details: list = field(default_factory=list)

    def add(self, case: Case, res: dict, detailed: bool = False) -> None:
        """Count the verdict `res` on `case`; list it if it failed, or in any case if `detailed`."""
        self.counts[case.category][res["outcome"]] += 1
        self.slowest[case.category] = max(self.slowest[case.category], res["seconds"])
        self.growth[case.category] = max(self.growth[case.category], res["rss_growth_mb"])
        self.cpu_seconds += res["seconds"]
        self.peak_mb = max(self.peak_mb, res["peak_mb"])
        if res["problems"] or res["outcome"] in FAILURES:
            self.failures.append({"index": case.index, "category": case.category, "variant": case.variant, **res})
        if detailed:
            self.details.append((case.index, f"case {case.index} [{case.category}: {case.variant}] model {case.model}, "
                                             f"{len(case.data)} bytes -> {res['outcome']} after {res['layers']} "
                                             f"layer(s), {res['seconds']:.3f} s: {res['message']}"))

    @property
    def cases(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def table(self) -> str:
        """Markdown: categories x outcomes, the failing cases, the slowest case and the largest RSS growth."""
        seen = Counter()
        for c in self.counts.values():
            seen.update(c)
        order = ["identical", "differs"] + sorted(o for o in seen if o not in ("identical", "differs", *FAILURES))
        cols = order + [o for o in FAILURES if o in seen]
        failed = Counter(f["category"] for f in self.failures)
        head = ["category", "cases", *cols, "failed", "max CPU s", "max RSS +MiB"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cat in list(CATEGORIES):
            if cat in self.counts:
                c = self.counts[cat]
                rows.append(f"| {cat} | {sum(c.values())} | " + " | ".join(str(c[o] or "") for o in cols)
                            + f" | {failed[cat]} | {self.slowest[cat]:.2f} | {self.growth[cat]:.0f} |")
        total = Counter()
        for c in self.counts.values():
            total.update(c)
        rows.append(f"| **all** | {self.cases} | " + " | ".join(str(total[o] or "") for o in cols)
                    + f" | {len(self.failures)} | {max(self.slowest.values(), default=0):.2f} "
                    + f"| {max(self.growth.values(), default=0):.0f} |")
        return "\n".join(rows)

    def text(self) -> str:
        lines = [f"compass fuzz: seed {self.seed}, {self.cases} cases, models {', '.join(self.models)}",
                 "", self.table(), "",
                 f"{self.seconds:.0f} s wall, {self.cpu_seconds:.0f} s CPU in cases; worker peak RSS "
                 f"{self.peak_mb:.0f} MiB (after loading {self.baseline_mb:.0f} MiB)"]
        lines += [f"{len(self.failures)} failing case(s)" if self.failures else "no failing case"]
        for f in sorted(self.failures, key=lambda f: f["index"])[:100]:
            lines.append(f"  case {f['index']} [{f['category']}: {f['variant']}] {f['outcome']}: "
                         f"{'; '.join(f['problems']) or f['message']} -- reproduce: compass fuzz --seed {self.seed} "
                         f"--only {f['index']}")
        lines += [text for _, text in sorted(self.details)]
        return "\n".join(lines)

