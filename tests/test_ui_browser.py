"""The whole flow by clicks in a real browser (Debian's chromium driven by Playwright).

Screenshots of each tab go to test-output/browser/ in the repository.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ui_helpers import make_start_project, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = REPO / "test-output" / "browser"


@pytest.fixture
def browser_page(tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: run `bash scripts/setup.sh --browser` (installs it via apt)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        browser.close()


def test_train_a_lora_by_clicks(browser_page, tmp_path, tiny_sd15):
    from sdlora.demo.shapes import DEMO_DATASETS, write_dataset
    from ui.launch import launch

    page = browser_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    workspace = tmp_path / "ws"
    make_start_project(workspace)
    app = launch(workspace / "start", port=None, block=False)
    try:
        page.goto(app.local_url)
        page.locator("#dataset-plan", has_text="Lint").wait_for(timeout=120_000)  # the page finished loading
        # Create a new project.
        page.get_by_label("Project folder").fill(str(workspace / "clicks"))
        page.get_by_role("button", name="Open / create project").click()
        wait_for(lambda: (workspace / "clicks" / "project.toml").is_file(), timeout=120)

        # Upload four images, caption them all with a trigger word, then edit one caption.
        images = sorted(write_dataset(tmp_path / "src", DEMO_DATASETS["demo-shapes"][:4]).glob("*.png"))
        page.locator("#dataset-upload input[type=file]").set_input_files([str(p) for p in images])
        page.locator("#dataset-gallery img").nth(3).wait_for(timeout=30_000)
        page.get_by_role("button", name="Bulk caption tools").click()
        page.locator("#trigger-box textarea").fill("sks")
        page.get_by_role("button", name="Apply to all captions").click()
        project_images = workspace / "clicks" / "images"
        wait_for(lambda: len(list(project_images.glob("*.txt"))) == 4, timeout=120)
        page.locator("#dataset-gallery img").first.click()
        caption = page.locator("#caption-box textarea")
        page.wait_for_function("() => document.querySelector('#caption-box textarea').value === 'sks'",
                               timeout=120_000)  # the click loaded the image's caption
        caption.fill("sks, a red circle")
        page.get_by_role("button", name="Save caption").click()
        wait_for(lambda: "sks, a red circle" in {p.read_text().strip() for p in project_images.glob("*.txt")},
                 timeout=120)
        captions = sorted(p.read_text().strip() for p in project_images.glob("*.txt"))
        assert len(list(project_images.glob("*.png"))) == 4 and len(captions) == 4
        assert "sks, a red circle" in captions and captions.count("sks") == 3
        page.screenshot(path=str(SHOTS / "1-dataset.png"), full_page=True)

        # Train: a new project starts from sd15-character with no model; pick the tiny demo preset, then
        # start, watch progress reach the end, see a preview image.
        page.get_by_role("tab", name="Train").click()
        preset = page.get_by_label("Preset")
        preset.click()
        preset.fill("demo-tiny")
        page.get_by_role("option", name="demo-tiny").click()
        page.get_by_role("button", name="Apply preset").click()
        wait_for(lambda: "builtin:tiny-sd15" in (workspace / "clicks" / "project.toml").read_text(), timeout=120)
        page.get_by_role("button", name="Start").click()
        page.wait_for_function("() => { const p = document.querySelector('#sdlora-progress');"
                               " return p && Number(p.dataset.step) >= 1; }", timeout=600_000)
        # A reload while training re-attaches the page to the running child (state lives in the run folder).
        page.reload()
        page.get_by_role("tab", name="Train").click()
        page.wait_for_function(
            "() => { const p = document.querySelector('#sdlora-progress');"
            " return p && p.dataset.total > 0 && p.dataset.step === p.dataset.total; }",
            timeout=900_000,
        )
        page.locator("#previews img").first.wait_for(timeout=30_000)
        assert page.locator("#sdlora-progress progress").get_attribute("value") == "100.0"
        page.screenshot(path=str(SHOTS / "2-train.png"), full_page=True)

        # Export: pick the adapter and get the file.
        page.get_by_role("tab", name="Export").click()
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Export and check").click()
        page.locator("#adapter-file a").first.wait_for(timeout=30_000)
        assert ".safetensors" in page.locator("#adapter-file").inner_text()
        page.screenshot(path=str(SHOTS / "3-export.png"), full_page=True)
    finally:
        app.close()
