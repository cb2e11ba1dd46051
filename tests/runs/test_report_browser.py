"""The report as a person sees it: opened in headless Chromium, every plot decodes, the page fits the window,
and the screenshot is a drawn page (not blank). Skips with the reason where no Chromium is installed."""

from __future__ import annotations

import pytest
from PIL import Image, ImageStat

from reasonloop.runs.report import write_report
from report_check import BROWSERS, assert_renders, find_browser, probe, screenshot, tiny_run

pytestmark = pytest.mark.e2e  # starts a browser: seconds, and a subprocess


@pytest.fixture(scope="module")
def browser():
    found = find_browser()
    if found is None:
        pytest.skip(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    return found


def test_report_renders_in_chromium_with_every_plot_loaded(browser, tmp_path):
    page = write_report(tiny_run(tmp_path / "run"))
    # accuracy, lengths, sft curves; grpo: eval_top1 curve, time breakdown, curves
    seen, shot = assert_renders(browser, page, tmp_path, images=6)
    assert seen["height"] > 1500
    print(f"screenshot: {shot}")


def test_probe_sees_a_broken_image_and_a_blank_page(browser, tmp_path):
    """The checks above can fail: an image that does not decode has naturalWidth 0, a blank page no spread."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><img src="data:image/png;base64,bm90IGEgcG5n"></body></html>')
    seen = probe(browser, page, tmp_path)
    assert [img["width"] for img in seen["images"]] == [0]
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    shot = Image.open(screenshot(browser, blank, tmp_path / "blank.png", 600)).convert("L")
    assert ImageStat.Stat(shot).stddev[0] == 0
