"""The batch server's web page as a user drives it: Debian's chromium through Playwright against
the session's real `vbatch serve` (`batch_server`, which has an API key)."""

from __future__ import annotations

import json
import re
import shutil

import httpx
import pytest
from support.batch import KEY, batch_file, client_for, records

pytestmark = pytest.mark.engine

#: The tiny model on 2 CPU cores answers a few dozen requests in several seconds; other tests
#: may share the machine.
SLOW = 120_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("no chromium on PATH: run scripts/install-browser.sh (the web page tests drive it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, batch_server):
    """A fresh browser session (no key kept) on the server; fails the test on any script error or
    Content-Security-Policy violation the page causes."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=batch_server.base_url)
    page = context.new_page()
    problems: list[str] = []

    def note_a_refused_resource(message) -> None:
        if "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", note_a_refused_resource)
    yield page
    context.close()
    assert problems == []


def unlock(page):
    from playwright.sync_api import expect

    page.goto("/ui/")
    page.get_by_label("API key", exact=True).fill(KEY)
    page.get_by_role("button", name="Unlock").click()
    expect(page.get_by_role("heading", name="Batches", level=2)).to_be_visible()


def start_batch(page, path, metadata: dict[str, str] | None = None) -> str:
    """Upload `path` through the form and return the new batch's id."""
    from playwright.sync_api import expect

    page.locator("#file-input").set_input_files(path)
    for number, (key, value) in enumerate((metadata or {}).items(), 1):
        page.get_by_role("button", name="Add a pair").click()
        page.get_by_label(f"Metadata key {number}").fill(key)
        page.get_by_label(f"Metadata value {number}").fill(value)
    page.get_by_role("button", name="Start the batch").click()
    message = page.locator("#upload-message")
    expect(message).to_contain_text("Started batch_", timeout=SLOW)
    return re.search(r"batch_\w+", message.text_content()).group()


def test_the_page_is_public_and_its_server_facts_are_not(batch_server):
    base = batch_server.base_url
    assert httpx.get(base + "/").headers["location"] == "/ui/"
    page = httpx.get(base + "/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(base + "/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(base + "/ui/app.js", headers={"If-None-Match": page.headers["etag"]}).status_code == 200
    etag = httpx.get(base + "/ui/style.css").headers["etag"]
    assert httpx.get(base + "/ui/style.css", headers={"If-None-Match": etag}).status_code == 304
    for path in ("/ui/../v1/files", "/ui/%2e%2e/pyproject.toml", "/ui/page.py", "/ui/__init__.py"):
        assert httpx.get(base + path).status_code == 401, path  # only the fixed names are public
    assert httpx.post(base + "/ui/").status_code == 405

    assert httpx.get(base + "/v1/vbatch/server").status_code == 401
    facts = httpx.get(base + "/v1/vbatch/server", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert facts["models"] == ["tiny"] and facts["profile"] == "cpu-chat"
    assert facts["vbatch_version"] and facts["vllm_version"]
    assert "/v1/chat/completions" in facts["batches"]["endpoints"]


def test_the_key_prompt_refuses_a_wrong_key_and_the_right_one_unlocks(page):
    from playwright.sync_api import expect

    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/$"))
    key = page.get_by_label("API key", exact=True)
    expect(key).to_be_visible()
    expect(page.get_by_role("heading", name="Batches", level=2)).to_be_hidden()
    key.fill("not-the-key")
    page.get_by_role("button", name="Unlock").click()
    expect(page.locator("#key-message")).to_contain_text("refused")
    expect(page.get_by_role("heading", name="Batches", level=2)).to_be_hidden()

    key.fill(KEY)
    page.get_by_role("button", name="Unlock").click()
    expect(page.locator("#server-model")).to_have_text("tiny")
    expect(page.locator("#server-versions")).to_contain_text(re.compile(r"vbatch \d+\.\d+.* vLLM \d+\.\d+"))
    expect(page.locator("#kv-text")).to_contain_text("%", timeout=SLOW)

    page.reload()  # the key is kept for the browser session
    expect(page.locator("#server-model")).to_have_text("tiny")


def test_a_batch_from_upload_to_its_downloads(page, batch_server, tmp_path):
    from playwright.sync_api import expect

    unlock(page)
    path = batch_file(tmp_path / "mixed.jsonl", 40, bad=2, prefix="ui")
    batch_id = start_batch(page, path, {"job": "<b>nightly</b>"})
    row = page.locator(f'tr[data-batch-id="{batch_id}"]')
    expect(row.locator(".progress-text")).to_have_text("42 / 42 (100 %)", timeout=SLOW)
    expect(row.locator(".status")).to_have_text("completed", timeout=SLOW)
    expect(row.locator(".counts")).to_have_text("40 completed · 2 failed")
    expect(row.locator(".pairs")).to_have_text("job<b>nightly</b>")  # shown as text, not markup
    expect(row.locator(".tokens-out")).to_contain_text(re.compile(r"out [1-9]"))

    row.get_by_role("button", name=f"Details of {batch_id}").click()
    client = client_for(batch_server)
    errors = records(client, client.batches.retrieve(batch_id).error_file_id)
    first = page.locator("#detail-errors li").first
    expect(first).to_contain_text(errors[0]["custom_id"])
    expect(first).to_contain_text(errors[0]["error"]["message"])
    expect(page.locator("#detail-errors li")).to_have_count(2)
    page.get_by_role("button", name="Close").click()

    downloads = [
        ("output", f"{batch_id}_output.jsonl", {f"ui{i}" for i in range(40)}),
        ("error", f"{batch_id}_errors.jsonl", {"bad0", "bad1"}),
    ]
    for kind, filename, custom_ids in downloads:
        with page.expect_download() as download:
            row.get_by_role("button", name=f"Download the {kind} file of {batch_id}").click()
        assert download.value.suggested_filename == filename
        lines = download.value.path().read_text().splitlines()
        assert {json.loads(line)["custom_id"] for line in lines} == custom_ids


def test_a_running_batch_moves_and_cancels_from_the_page(page, tmp_path):
    from playwright.sync_api import expect

    unlock(page)
    batch_id = start_batch(page, batch_file(tmp_path / "big.jsonl", 1000, max_tokens=64, prefix="big"))
    row = page.locator(f'tr[data-batch-id="{batch_id}"]')
    expect(row.locator(".status")).to_have_text("in progress", timeout=SLOW)
    progress = row.locator(".progress-text")
    expect(progress).to_have_text(re.compile(r"^[1-9][\d,]* / 1,000 \(\d+\s%\)$"), timeout=SLOW)
    seen = progress.text_content()
    expect(progress).not_to_have_text(seen, timeout=SLOW)  # it moves while the batch runs
    expect(row.locator(".eta")).to_contain_text("ETA")
    expect(row.locator(".speed")).to_contain_text("tok/s")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Cancel {batch_id}").click()
    expect(row.locator(".status")).to_have_text("cancelled", timeout=SLOW)
    expect(page.locator("#announcer")).to_contain_text(f"{batch_id} is cancel")
    expect(row.get_by_role("button", name=f"Cancel {batch_id}")).to_be_hidden()

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: one card per batch, nothing wider
    expect(row.locator(".progress-text")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
