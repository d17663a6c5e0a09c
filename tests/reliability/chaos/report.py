"""`python -m tests.reliability.chaos.report`: the latest result of every chaos scenario as
a table (scenario, sagas, faults injected, violations per invariant, time to quiescence),
from `.sagaline/chaos/results.jsonl`. `--markdown` prints it for docs/reliability.md."""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.reliability.chaos.checker import INVARIANTS
from tests.reliability.chaos.harness import RESULTS


def main() -> None:
    if not RESULTS.exists():
        sys.exit(f"no chaos results yet ({RESULTS}): run `make chaos`")
    latest: dict[str, dict[str, Any]] = {}
    for line in RESULTS.read_text().splitlines():
        row = json.loads(line)
        latest[row["scenario"]] = row
    header = ["scenario", "sagas", "faults", *INVARIANTS, "quiescence s", "date"]
    rows = [
        [
            str(r["scenario"]),
            str(r["sagas"]),
            str(r["faults"]),
            *(str(r["violations"][name]) for name in INVARIANTS),
            str(r["quiescence_s"]),
            str(r["date"]),
        ]
        for r in sorted(latest.values(), key=lambda r: str(r["scenario"]))
    ]
    if "--markdown" in sys.argv:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
