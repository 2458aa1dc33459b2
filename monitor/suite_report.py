"""The pytest plugin's end-of-run summary: counts by kind, worst sites grouped, tests they came from."""

from __future__ import annotations

from collections import Counter, defaultdict

from monitor.suite_watch import KINDS, Finding

_MAX_SITES = 10
_MAX_OWNERS = 3


def summary_lines(findings: list[Finding]) -> list[str]:
    """Counts by kind, then sites grouped with the tests or fixtures they came from."""
    counted = [f for f in findings if f.allowed_reason is None]
    allowed = len(findings) - len(counted)
    if not findings:
        return ["no connection left behind"]
    by_kind = Counter(f.kind for f in counted)
    lines = [
        ", ".join(f"{by_kind[kind]} {kind}" for kind in KINDS if by_kind[kind])
        or "no connection left behind",
    ]
    if allowed:
        lines[0] += f" ({allowed} allowed by marker or setting)"
    groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for finding in counted:
        site = finding.site[0] if finding.site else (finding.route or "unknown site")
        groups[(finding.kind, site)].append(finding)
    worst = sorted(groups.items(), key=lambda item: len(item[1]), reverse=True)
    for (kind, site), members in worst[:_MAX_SITES]:
        owners = list(dict.fromkeys(f.owner.describe() for f in members))
        more = f" and {len(owners) - _MAX_OWNERS} more" if len(owners) > _MAX_OWNERS else ""
        lines.append(f"{len(members):>4} x {kind} at {site}")
        lines.append(f"         from {', '.join(owners[:_MAX_OWNERS])}{more}")
    if len(worst) > _MAX_SITES:
        lines.append(f"  ... {len(worst) - _MAX_SITES} more site(s)")
    return lines
