#!/usr/bin/env python3
"""Cost of building one output record (core/records.result_record), a git revision against the
working tree, interleaved in one process so both see the same machine load.

  python scripts/bench_records.py 9ecaba0          # before the gpt-oss split (issue 16)

The revision's records.py is loaded beside the current one (it imports today's core modules).
Prints the minimum and median microseconds per record over the rounds, and new / old.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_revision(revision: str):
    source = subprocess.run(
        ["git", "show", f"{revision}:vbatch/core/records.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "records_at_revision.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("records_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--records", type=int, default=20_000, help="records per round")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from vbatch.core import records as current
    from vbatch.core.engine_io import Choice, EngineResult
    from vbatch.core.requests import parse_request

    old = load_revision(args.revision)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    request = parse_request(1, {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body})
    result = [EngineResult("k", prompt_tokens=100, cached_tokens=60, choices=[Choice(0, "hello", [1] * 16, "stop")])]

    def per_record(module) -> float:
        started = time.perf_counter()
        for _ in range(args.records):
            module.result_record("run", request, result, "m")
        return (time.perf_counter() - started) / args.records * 1e6

    before, after = [], []
    for _ in range(args.rounds):
        before.append(per_record(old))
        after.append(per_record(current))
    print(f"{args.revision}: min {min(before):.2f} us, median {statistics.median(before):.2f} us per record")
    print(f"working tree: min {min(after):.2f} us, median {statistics.median(after):.2f} us per record")
    print(
        f"new / old: {min(after) / min(before):.3f} (min), {statistics.median(after) / statistics.median(before):.3f} (median)"
    )


if __name__ == "__main__":
    main()
