"""The web UI end to end in a real headless Chromium (Debian's `chromium`, driven by
Playwright): sign in, upload a dataset and read its data card, launch a fine-tune of the
tiny model, watch it reach `succeeded`, open its report, chat in the playground. A
screenshot of each page goes to `test-artifacts/ui/` (TUNESMITH_UI_SHOTS to change it)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import write_chat_file
from test_api import TINY, service, start_worker  # noqa: F401 - `service` is a fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it as root)")
SHOTS = Path(os.environ.get("TUNESMITH_UI_SHOTS", Path(__file__).parents[1] / "test-artifacts" / "ui"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # The flags keep Chromium off the network it cannot reach here (see the env notes).
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_a_new_user_fine_tunes_and_chats_in_the_browser(service, browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    root = service["url"].removesuffix("/v1")
    page = browser.new_page(viewport={"width": 1366, "height": 800})
    page.goto(root + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.fill("#key", "ts-wrong")
    page.keyboard.press("Enter")
    expect(page.locator("#error")).to_contain_text("Incorrect API key")
    shot(page, "1-sign-in")
    page.fill("#key", service["keys"]["acme"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Datasets")).to_be_visible()
    expect(page.locator("#who")).to_contain_text("project acme")

    # A bad file is refused with the API's sentence; a good one shows its data card.
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"messages": [\n')
    page.set_input_files("#upload", str(bad))
    expect(page.locator("#error")).to_contain_text("broken.jsonl")
    data = write_chat_file(tmp_path / "tickets.jsonl", n=220)  # 200 rows or more: a test split, so a report
    page.set_input_files("#upload", str(data))
    card = page.locator("#data-card")
    expect(card).to_contain_text("220 rows")
    expect(card).to_contain_text("Warnings")
    shot(page, "2-datasets")

    page.get_by_role("link", name="Fine-tune").first.click()
    expect(page.get_by_role("heading", name="New fine-tune")).to_be_visible()
    page.select_option("#model", "tiny")
    page.select_option("#method", "supervised")
    expect(page.locator("#method-hint")).to_contain_text("answer like your examples")
    page.get_by_text("Advanced options").click()
    page.fill("#advanced", json.dumps({"max_steps": 6, "eval_steps": 3, **TINY}))
    page.fill("#suffix", "ui")
    shot(page, "3-new-fine-tune")
    page.click("#launch")
    expect(page.locator("#job-status")).to_be_visible()
    worker = start_worker(service, "w-ui")
    try:
        expect(page.locator("#job-status")).to_have_text("running", timeout=120_000)
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=300_000)
    finally:
        worker.terminate()
        worker.communicate(timeout=60)
    expect(page.locator("#events")).to_contain_text("The job has successfully completed")
    expect(page.locator("svg.chart").first).to_be_visible()
    report = page.frame_locator("#report")
    expect(report.locator("body")).to_contain_text("base", timeout=30_000)
    shot(page, "4-job")

    page.goto(root + "/#/jobs")
    expect(page.locator("td.status").first).to_have_text("succeeded")
    shot(page, "5-jobs")

    page.get_by_role("link", name="Playground").click()
    page.fill("#prompt", "My card has not arrived yet.")
    page.get_by_role("button", name="Send to both").click()
    expect(page.locator("#tuned-answer")).not_to_have_text("...", timeout=60_000)
    expect(page.locator("#base-answer")).not_to_have_text("...", timeout=60_000)
    expect(page.locator("#error")).to_be_hidden()
    shot(page, "6-playground")

    page.get_by_role("link", name="Models").click()
    expect(page.locator("code").first).to_contain_text("ft:tiny:acme:ui:")
    shot(page, "7-models")

    # Another project's key sees none of it.
    page.get_by_role("button", name="Sign out").click()
    page.fill("#key", service["keys"]["globex"])
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_contain_text("project globex")
    expect(page.locator("table")).to_contain_text("Nothing yet.")
