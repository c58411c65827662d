"""Fail when a function in paramserver/ or workers/ is too complex or a module too long.

Budgets from issue #12: cyclomatic complexity (radon's count) at most 12 per function,
400 lines per module. Generated code (paramserver/proto/) is exempt. Run by `make lint`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from radon.complexity import cc_visit

MAX_COMPLEXITY = 12
MAX_LINES = 400
ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("paramserver", "workers")


def over_budget(path: Path) -> list[str]:
    source = path.read_text()
    where = path.relative_to(ROOT)
    problems = []
    lines = source.count("\n")
    if lines > MAX_LINES:
        problems.append(f"{where}: {lines} lines (budget {MAX_LINES}): split it by concern")
    for block in cc_visit(source):
        if block.complexity > MAX_COMPLEXITY:
            problems.append(f"{where}:{block.lineno}: {block.fullname} has complexity "
                            f"{block.complexity} (budget {MAX_COMPLEXITY})")
    return problems


def main() -> int:
    problems = [problem
                for package in CHECKED
                for path in sorted((ROOT / package).rglob("*.py"))
                if "proto" not in path.relative_to(ROOT).parts
                for problem in over_budget(path)]
    for problem in problems:
        print(problem)
    print(f"budgets: {len(problems)} over" if problems else "budgets: all within")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
