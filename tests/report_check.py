"""A small run folder written by hand, and a report opened in headless Chromium as a person would: what the
page's DOM says once loaded (every image decoded, nothing wider than the window) and a screenshot of the
whole page.

Tests skip with the reason when no Chromium is installed (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

from reasonloop.runs.store import RunStore

BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "headless_shell")
WIDTH = 1200  # a laptop window; the report's body is 1100 px at most

# Runs at the load event; --dump-dom prints the DOM after it, with this attribute on <body>.
PROBE = """<script>window.addEventListener("load", () => {
  document.body.setAttribute("data-probe", JSON.stringify({
    images: [...document.images].map(img => ({complete: img.complete, width: img.naturalWidth})),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    height: document.documentElement.scrollHeight}));
});</script>"""


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _chromium(browser: str, profile: Path, *args: str, height: int = 900) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr[-2000:]}"
    return done.stdout


def probe(browser: str, page: Path, work: Path) -> dict:
    """The loaded page's images (complete, naturalWidth), its scroll width against the window's, its height."""
    probed = work / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(browser, work / "profile", "--dump-dom", probed.as_uri())
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, f"the probe script did not run; DOM starts {dom[:300]!r}"
    return json.loads(html.unescape(found.group(1)))


def screenshot(browser: str, page: Path, out: Path, height: int) -> Path:
    _chromium(browser, out.parent / "profile", f"--screenshot={out}", page.as_uri(), height=height)
    return out


def assert_renders(browser: str, page: Path, work: Path, images: int | None = None) -> tuple[dict, Path]:
    """The page in Chromium: `images` plots (default: as many as it has <img> tags), each decoded; no wider than the window; its screenshot the page's
    full size with text and plots drawn on it (neither blank nor a solid block)."""
    from PIL import Image, ImageStat

    seen = probe(browser, page, work)
    assert len(seen["images"]) == (page.read_text().count("<img") if images is None else images), seen
    assert all(img["complete"] and img["width"] > 100 for img in seen["images"]), seen["images"]
    assert seen["scrollWidth"] <= seen["innerWidth"], "the page is wider than the window (the table overflows)"
    path = screenshot(browser, page, work / "report.png", seen["height"])
    shot = Image.open(path).convert("L")
    assert shot.size == (WIDTH, seen["height"])
    assert ImageStat.Stat(shot).stddev[0] > 20  # text and plots on white, not an empty page
    dark = sum(shot.histogram()[:200]) / (shot.width * shot.height)
    assert 0.02 < dark < 0.5, f"{dark:.1%} of the page is drawn"
    return seen, path


def tiny_run(run_dir):
    """A run folder as the pipeline leaves it (eval, sft, eval, rl, eval), written by hand: every plot of the
    report has data, and the numbers are known."""
    run_dir.mkdir(parents=True, exist_ok=True)
    store = RunStore(run_dir / "store.sqlite")
    store.start_stage("base", "eval", 0)
    store.add_samples("base", 0, [{"problem_id": "p1", "prompt": "What is 2 + 2?", "completion": "Answer: <4>",
                                   "reward": 1.0, "correct": True, "tokens": 3}])
    store.finish_stage("base", {"top1": 0.5, "top1_ci95": [0.2, 0.8], "n": 2, "mean_tokens": 3.0})
    store.start_stage("sft", "sft", 1)
    for step in (1, 2, 3):
        store.log_metrics("sft", step, {"loss": 1.0 / step})
    store.finish_stage("sft", {"final_loss": 0.33})
    store.start_stage("eval_sft", "eval", 2)
    store.finish_stage("eval_sft", {"top1": 0.75, "top1_ci95": [0.4, 0.9], "n": 2, "mean_tokens": 5.0})
    store.start_stage("grpo", "rl", 3)
    for step in (1, 2, 3, 4):
        times = {"time/generate": 2.0, "time/judge": 0.1, "time/old_logprobs": 0.3, "time/update": 1.0,
                 "time/sync": 0.05} | ({"time/eval": 1.5, "eval_top1": 0.25 * step / 2} if step % 2 == 0 else {})
        store.log_metrics("grpo", step, {"loss": 0.1 * step, "reward_mean": 0.2 + 0.05 * step,
                                         "flat_share": 0.5, "curriculum/seen_share": step / 4, **times})
    store.finish_stage("grpo", {"final_loss": 0.4, "final_reward": 0.4, "steps": 4})
    store.start_stage("eval_grpo", "eval", 4)
    store.finish_stage("eval_grpo", {"top1": 0.8, "top1_ci95": [0.5, 0.95], "n": 2, "mean_tokens": 6.0})
    store.close()
    base = {"top1": 0.5, "top1_ci95": [0.2, 0.8], "n": 2, "mean_tokens": 3.0, "maj_k": None}
    after_sft = {"top1": 0.75, "top1_ci95": [0.4, 0.9], "n": 2, "mean_tokens": 5.0, "maj_k": None,
                 "paired": {"vs": "base", "n": 2, "delta": 0.25, "delta_ci95": [-0.3, 0.7], "p_value": 1.0,
                            "wins": 1, "losses": 0}}
    after_rl = {"top1": 0.8, "top1_ci95": [0.5, 0.95], "n": 2, "mean_tokens": 6.0, "maj_k": None,
                "paired": {"vs": "eval_sft", "n": 2, "delta": 0.05, "delta_ci95": [-0.2, 0.3], "p_value": 0.03,
                           "wins": 9, "losses": 1}}
    # as pipeline._summary_entries writes it: a training stage carries the next eval's numbers
    (run_dir / "summary.json").write_text(json.dumps({"stages": [
        {"name": "base", "kind": "eval", "seconds": 1.0, "eval": base},
        {"name": "sft", "kind": "sft", "seconds": 2.0, "final_loss": 0.33, "steps": 3, "eval": after_sft},
        {"name": "eval_sft", "kind": "eval", "seconds": 1.0, "eval": after_sft},
        {"name": "grpo", "kind": "rl", "seconds": 9.0, "final_loss": 0.4, "steps": 4, "eval": after_rl},
        {"name": "eval_grpo", "kind": "eval", "seconds": 1.0, "eval": after_rl}]}))
    return run_dir
