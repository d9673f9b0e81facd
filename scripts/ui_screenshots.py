#!/usr/bin/env python3
"""Screenshots of the batch server's web page for the README, against a running `vbatch serve`.

It starts two batches through the API first (a small one with two bad lines, left to finish, then
a larger one still running when the pictures are taken), then photographs the page in chromium
(the system's, as scripts/install-browser.sh installs it):

  VBATCH_API_KEY=secret vbatch serve --profile cpu-chat --port 8001 &
  VBATCH_API_KEY=secret python scripts/ui_screenshots.py --url http://127.0.0.1:8001

writes docs/screenshots/batches.png (1280 px wide), batch-detail.png (the finished batch's
detail with its first errors) and batches-phone.png (390 px wide).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def chat_lines(count: int, max_tokens: int, prefix: str) -> bytes:
    lines = [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny",
                "messages": [
                    {"role": "system", "content": "You summarise support tickets in one line. " * 6},
                    {"role": "user", "content": f"Ticket {i}: the printer on floor {i % 7} is jammed again."},
                ],
                "max_tokens": max_tokens,
            },
        }
        for i in range(count)
    ]
    lines += [
        {"custom_id": f"{prefix}-broken-1", "method": "POST", "url": "/v1/chat/completions", "body": {}},
        {"custom_id": f"{prefix}-broken-2", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": 7}},
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def start_batch(api: httpx.Client, name: str, content: bytes, metadata: dict[str, str]) -> str:
    uploaded = api.post("/v1/files", data={"purpose": "batch"}, files={"file": (name, content)})
    uploaded.raise_for_status()
    batch = api.post(
        "/v1/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": metadata,
        },
    )
    batch.raise_for_status()
    return batch.json()["id"]


def wait_until(api: httpx.Client, batch_id: str, done: Callable[[dict], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not done(api.get(f"/v1/batches/{batch_id}").json()):
        if time.monotonic() > deadline:
            sys.exit(f"batch {batch_id} did not get there within {timeout:.0f} s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    parser.add_argument("--key", default=os.environ.get("VBATCH_API_KEY", ""), help="default: $VBATCH_API_KEY")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH: run scripts/install-browser.sh")
    from playwright.sync_api import expect, sync_playwright

    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as api:
        finished = start_batch(
            api, "tickets-monday.jsonl", chat_lines(40, 16, "mon"), {"team": "support", "run": "nightly"}
        )
        wait_until(api, finished, lambda batch: batch["status"] in ("completed", "failed"))
        running = start_batch(api, "tickets-week.jsonl", chat_lines(3000, 64, "week"), {"team": "support"})
        wait_until(api, running, lambda batch: batch["request_counts"]["completed"] >= 60)

        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 860}, base_url=args.url)
            page.goto("/ui/")
            if args.key:
                page.get_by_label("API key", exact=True).fill(args.key)
                page.get_by_role("button", name="Unlock").click()
            expect(page.locator(f'tr[data-batch-id="{running}"] .eta')).to_contain_text("ETA", timeout=30_000)
            expect(page.locator("#server-requests")).to_contain_text("running")
            page.screenshot(path=args.out / "batches.png")

            page.get_by_role("button", name=f"Details of {finished}").click()
            expect(page.locator("#detail-errors li")).to_have_count(2)
            page.screenshot(path=args.out / "batch-detail.png")
            page.get_by_role("button", name="Close").click()

            page.set_viewport_size({"width": 390, "height": 844})
            page.locator("#batches-title").evaluate("title => title.scrollIntoView()")
            page.screenshot(path=args.out / "batches-phone.png")
            browser.close()
        api.post(f"/v1/batches/{running}/cancel").raise_for_status()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
