"""python -m benchmarks [NAME ...] — run benchmarks (all when none named)."""

from __future__ import annotations

import argparse
import json

from benchmarks import codec, consumer, ids, relay, saga

BENCHMARKS = {
    "codec": codec.run,
    "relay": relay.run,
    "consumer": consumer.run,
    "ids": ids.run,
    "saga": saga.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"which benchmarks: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    results = {name: BENCHMARKS[name]() for name in (args.names or BENCHMARKS)}
    if args.json:
        print(json.dumps(results, indent=2))


main()
