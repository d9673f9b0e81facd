"""Time the input readers on N synthetic short chat requests: records() and scan() lines/s.

Usage: python scripts/bench_readers.py [N] [--gz]
"""

from __future__ import annotations

import gzip
import os
import sys
import tempfile
import time

import orjson

from vbatch.storage.readers import open_input


def write_input(path: str, count: int) -> None:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as file:
        for i in range(count):
            request = {
                "custom_id": f"request-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"Say hello {i}"}], "max_tokens": 16},
            }
            file.write(orjson.dumps(request, option=orjson.OPT_APPEND_NEWLINE))


def main() -> None:
    count = int(next((arg for arg in sys.argv[1:] if arg.isdigit()), 1_000_000))
    suffix = ".jsonl.gz" if "--gz" in sys.argv else ".jsonl"
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, f"input{suffix}")
        write_input(path, count)
        source = open_input(path)

        started = time.perf_counter()
        read = sum(1 for record in source.records() if record.data is not None)
        seconds = time.perf_counter() - started
        assert read == count, (read, count)
        print(f"records(): {count:,} lines in {seconds:.2f}s = {count / seconds:,.0f} lines/s")

        started = time.perf_counter()
        scan = source.scan()
        seconds = time.perf_counter() - started
        assert scan.count == count, (scan.count, count)
        print(f"scan():    {scan.size / 1e6:,.0f} MB in {seconds:.2f}s = {count / seconds:,.0f} lines/s")


if __name__ == "__main__":
    main()
