"""The web UI end to end in a real headless Chromium (Debian's `chromium`, driven by
Playwright): sign in, upload a dataset and read its data card, apply the safe fixes and
download the cleaned file, see what "auto" resolves to, launch a fine-tune of the tiny
model, watch it reach `succeeded`, open its report, compare two runs, chat in the
playground, read the models' metrics and download weights; and the error each wrong step
gets. A screenshot of each page goes to `test-artifacts/ui/` (TUNESMITH_UI_SHOTS to change it)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from conftest import write_chat_file
from test_api import TINY, service, start_worker, wait_for  # noqa: F401 - `service` is a fixture
from test_platform_api import dirty_file

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
    # A file with problems: the card groups them with example rows; the safe fixes make a
    # clean copy, which downloads.
    page.set_input_files("#upload", str(dirty_file(tmp_path / "dirty.jsonl")))
    card = page.locator("#data-card")
    expect(card).to_contain_text("34 rows")
    expect(card.locator("h3.sev-error")).to_have_text("Errors (1)")
    expect(card).to_contain_text("row 33: user: Mail me at jane.doe@example.com")
    shot(page, "2-data-card")
    page.get_by_role("button", name="Apply safe fixes").click()
    expect(page.locator("#fix-summary")).to_contain_text("34 rows in, 32 kept; 2 dropped, 1 redacted, 1 changed")
    expect(page.get_by_role("heading", name="Data card: dirty.clean.jsonl")).to_be_visible()
    expect(card.locator("h3.sev-error")).to_have_text("Errors (0)")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download").click()
    cleaned = Path(download.value.path()).read_text()
    assert download.value.suggested_filename == "dirty.clean.jsonl" and "[EMAIL]" in cleaned and "jane.doe" not in cleaned

    data = write_chat_file(tmp_path / "tickets.jsonl", n=220)  # 200 rows or more: a test split, so a report
    page.set_input_files("#upload", str(data))
    expect(card).to_contain_text("220 rows")
    expect(card).to_contain_text("Warnings")
    shot(page, "2-datasets")

    page.locator("#data-card").get_by_role("link", name="Fine-tune on it").click()
    expect(page.get_by_role("heading", name="New fine-tune")).to_be_visible()
    page.select_option("#model", "tiny")
    # What "auto" resolves to shows before launch, with the reasons.
    preview = page.locator("#preview")
    expect(preview).to_contain_text("batch_size")
    expect(preview).to_contain_text("10% of 220 rows")
    # A method the data cannot train, and options that are not JSON: the preview and the
    # launch say so, and no job starts.
    page.select_option("#method", "classify")
    expect(page.locator("#preview-error")).to_contain_text("holds chat data")
    page.click("#launch")
    expect(page.locator("#error")).to_contain_text("holds chat data")
    page.select_option("#method", "supervised")
    expect(page.locator("#method-hint")).to_contain_text("answer like your examples")
    page.get_by_text("Advanced options").click()
    page.fill("#advanced", "{max_steps: 6")
    expect(preview).to_contain_text("not valid JSON")
    page.click("#launch")
    expect(page.locator("#error")).to_contain_text("The advanced options are not valid JSON")
    expect(page.get_by_role("heading", name="New fine-tune")).to_be_visible()
    page.fill("#advanced", json.dumps({"max_steps": 6, "eval_steps": 3, **TINY}))
    expect(preview).to_contain_text("as you set it")
    page.fill("#suffix", "ui")
    shot(page, "3-new-fine-tune")
    page.click("#launch")
    expect(page.locator("#job-status")).to_be_visible()
    first = page.url.rsplit("/", 1)[1]
    # A second run with another learning rate, through the API, to compare with.
    headers = {"Authorization": f"Bearer {service['keys']['acme']}"}
    training_file = requests.get(f"{service['url']}/fine_tuning/jobs/{first}", headers=headers, timeout=30).json()["training_file"]
    second = requests.post(f"{service['url']}/fine_tuning/jobs", headers=headers, timeout=30, json={
        "model": "tiny", "training_file": training_file, "suffix": "ui2", "method": {"type": "supervised", "supervised": {
            "hyperparameters": {"max_steps": 6, "eval_steps": 3, **TINY, "learning_rate": 1e-3}}}}).json()["id"]
    worker = start_worker(service, "w-ui")
    try:
        expect(page.locator("#job-status")).to_have_text("running", timeout=120_000)
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=300_000)
        wait_for(lambda: requests.get(f"{service['url']}/fine_tuning/jobs/{second}", headers=headers, timeout=30)
                 .json()["status"] == "succeeded", timeout=300, what="the second job")
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

    # Compare: the two runs' settings (the learning rate differs), metrics and curves.
    page.get_by_role("link", name="Compare").click()
    page.check(f"input[value={first}]")
    page.check(f"input[value={second}]")
    page.get_by_role("button", name="Compare").click()
    setting = lambda name: page.locator("table").first.locator("tr").filter(  # noqa: E731
        has=page.get_by_role("cell", name=name, exact=True))
    expect(setting("learning_rate").locator("td.diff")).to_have_count(2)
    expect(setting("lora_r").locator("td")).to_have_count(3)
    expect(setting("lora_r").locator("td.diff")).to_have_count(0)
    expect(page.locator("table").nth(1)).to_contain_text(second)
    expect(page.locator("table").nth(1)).to_contain_text("accuracy (base → tuned)")
    expect(page.locator("svg.chart")).to_have_count(2)
    shot(page, "7-compare")

    # Models: the metrics before and after, and the weights to download.
    page.get_by_role("link", name="Models").click()
    row = page.locator("tr", has_text="ft:tiny:acme:ui:")
    expect(row).to_contain_text("→")
    expect(row).to_contain_text("22 test rows")
    expect(row.get_by_role("button", name="Adapter")).to_be_visible()
    shot(page, "8-models")
    with page.expect_download() as download:
        row.get_by_role("button", name="Adapter").click()
    assert download.value.suggested_filename.endswith("-adapter.zip")
    import zipfile

    assert any(n.endswith("/adapter_config.json") for n in zipfile.ZipFile(download.value.path()).namelist())
    expect(page.locator("#error")).to_be_hidden()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr", has_text="ft:tiny:acme:ui2:").get_by_role("button", name="Delete").click()
    expect(page.locator("tr", has_text="ft:tiny:acme:ui2:")).to_have_count(0)
    expect(row).to_be_visible()

    # Another project's key sees none of it.
    page.get_by_role("button", name="Sign out").click()
    page.fill("#key", service["keys"]["globex"])
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_contain_text("project globex")
    expect(page.locator("table")).to_contain_text("Nothing yet.")
