#!/usr/bin/env python3
"""End-to-end test of the demo page (`GET /`) in headless Chromium, through Selenium.

    CODETR_SERVE_URL=http://127.0.0.1:18080 CODETR_SAMPLE_IMAGE=path/to/img.jpg \
        python tests/e2e/test_demo.py          # or: pytest tests/e2e/test_demo.py

Environment:
  CODETR_SERVE_URL      base URL of a running codetr-serve. Unset: the stdlib mock in
                        tests/e2e/mock_server.py is started in-process on a free port.
  CODETR_SAMPLE_IMAGE   a JPEG/PNG/WebP to upload. Unset: a small PNG is generated.
  CODETR_SERVE_TOKEN    bearer token to type into the page's token field (optional).
  CODETR_E2E_REQUIRED   "1": a missing chromium/chromedriver/selenium is a failure, not a skip.
  CODETR_E2E_ARTIFACTS  folder for screenshots (default: a temporary folder); a screenshot is
                        always written on failure and its path printed.
  CHROMIUM_BIN, CHROMEDRIVER   override /usr/bin/chromium and /usr/bin/chromedriver.

Needs Debian's `chromium` and `chromium-driver` and `make venv (tests/python/requirements.txt)`.
Selenium is pointed at /usr/bin/chromedriver explicitly, so Selenium Manager never downloads.

What it checks: the upload reaches data-state=done; at threshold 0 some boxes are drawn and the
canvas really holds them (a pixel on a drawn box's edge has that box's colour, and the canvas
differs from the same image drawn without boxes); at threshold 1.0 only boxes with score >= 1
remain (none for real models); a text file named .png shows the server's error in #error.
"""
from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 60
COLOR_TOL = 12


class Skip(Exception):
    pass


class Fail(AssertionError):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Fail(msg)


# ---- fixtures ------------------------------------------------------------------------------

def make_png(path: Path, w: int = 320, h: int = 240) -> None:
    """A small RGB PNG (soft gradient with a few shapes), stdlib only."""
    rows = []
    for y in range(h):
        row = bytearray([0])  # filter: none
        for x in range(w):
            r, g, b = 90 + (x * 100) // w, 110 + (y * 90) // h, 140
            if (x - 80) ** 2 + (y - 90) ** 2 < 40 ** 2:
                r, g, b = 235, 235, 240
            elif 190 <= x < 270 and 60 <= y < 130:
                r, g, b = 30, 30, 40
            row += bytes((r, g, b))
        rows.append(bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
           + chunk(b"IEND", b""))
    path.write_bytes(png)


# ---- browser -------------------------------------------------------------------------------

def browser_problem() -> str | None:
    """Why the browser test cannot run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() and os.access(p, os.X_OK))]
    if missing:
        return ("not installed: " + ", ".join(missing)
                + " (apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the Python package selenium is not installed (make venv (tests/python/requirements.txt))"
    return None


def make_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Never let Selenium Manager look for (or download) a driver or a browser.
    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,1000", "--force-device-scale-factor=1",
              "--no-first-run", "--no-default-browser-check", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--metrics-recording-only", "--password-store=basic"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(service=service, options=opts)


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise Fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def set_threshold(driver, value: float) -> None:
    driver.execute_script(
        "const s = document.getElementById('threshold');"
        "s.value = String(arguments[0]);"
        "s.dispatchEvent(new Event('input', {bubbles: true}));", value)


JS_EDGE_PIXELS = """
const c = document.getElementById('canvas');
const ctx = c.getContext('2d');
const boxes = (window.codetrDemo && window.codetrDemo.drawnBoxes) || [];
const clampX = v => Math.min(c.width - 1, Math.max(0, Math.floor(v)));
const clampY = v => Math.min(c.height - 1, Math.max(0, Math.floor(v)));
return boxes.map(b => {
  const mx = (b.x1 + b.x2) / 2, my = (b.y1 + b.y2) / 2;
  const pts = {left: [b.x1, my], right: [b.x2, my], top: [mx, b.y1], bottom: [mx, b.y2]};
  const out = {};
  for (const k in pts) {
    const x = clampX(pts[k][0]), y = clampY(pts[k][1]);
    out[k] = {x: x, y: y, rgba: Array.from(ctx.getImageData(x, y, 1, 1).data)};
  }
  return {label: b.label, score: b.score, rgb: b.rgb, samples: out};
});
"""

JS_SNAPSHOT = """
const c = document.getElementById('canvas');
window.__e2eSnap = {w: c.width, h: c.height,
                    data: c.getContext('2d').getImageData(0, 0, c.width, c.height).data};
return [c.width, c.height];
"""

JS_DIFF_FROM_SNAPSHOT = """
const c = document.getElementById('canvas');
const s = window.__e2eSnap;
if (!s || s.w !== c.width || s.h !== c.height) return -1;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < d.length; i += 4) {
  if (Math.abs(d[i] - s.data[i]) + Math.abs(d[i+1] - s.data[i+1]) + Math.abs(d[i+2] - s.data[i+2]) > 24) n++;
}
return n;
"""


def canvas_attr(driver, name: str) -> str | None:
    return driver.find_element("id", "canvas").get_attribute(name)


def upload(driver, path: Path) -> str:
    """Send a file to #file and wait until the request has ended; returns data-state."""
    el = driver.find_element("id", "file")
    el.send_keys(str(path.resolve()))
    return wait_for(lambda: (lambda s: s if s in ("done", "error") else None)(canvas_attr(driver, "data-state")),
                    WAIT_S, f"data-state done|error after uploading {path.name}")


def run_demo(base_url: str, sample: Path, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = make_driver()
    try:
        try:
            _run_steps(driver, By, base_url, sample, artifacts)
        except BaseException:
            shot = artifacts / "demo-failure.png"
            try:
                driver.save_screenshot(str(shot))
                print(f"screenshot of the failure: {shot}", file=sys.stderr)
                for entry in driver.get_log("browser"):
                    print(f"browser console: {entry.get('level')} {entry.get('message')}", file=sys.stderr)
            except Exception:  # noqa: BLE001 (best effort diagnostics)
                pass
            raise
    finally:
        driver.quit()


def _run_steps(driver, By, base_url: str, sample: Path, artifacts: Path) -> None:
    page = base_url.rstrip("/") + "/"
    driver.get(page)
    check(driver.find_elements(By.ID, "file"),
          f"the page at {page} has no #file input (is codetr-serve running there and serving the "
          f"demo page? title={driver.title!r})")
    check(canvas_attr(driver, "data-state") == "idle", "canvas data-state is not 'idle' on load")

    token = os.environ.get("CODETR_SERVE_TOKEN", "")
    if token:
        t = driver.find_element(By.ID, "token")
        t.clear()
        t.send_keys(token)
        driver.execute_script("document.getElementById('token').dispatchEvent(new Event('change'))")

    # /v1/models fills the header line (any text but the initial placeholder).
    info = wait_for(lambda: (lambda s: s if s and not s.startswith("Loading") else None)(
        driver.find_element(By.ID, "model-info").text), 10, "#model-info to be filled")
    print(f"model info: {info}")

    # ---- the happy path ----
    state = upload(driver, sample)
    if state != "done":
        raise Fail(f"upload of {sample} ended in state {state!r}: #error says "
                   f"{driver.find_element(By.ID, 'error').text!r}")

    set_threshold(driver, 0)
    n0 = int(canvas_attr(driver, "data-boxes-drawn") or "0")
    check(n0 > 0, f"no boxes drawn at threshold 0 (data-boxes-drawn={n0}); the model found nothing in {sample}")
    check(driver.find_element(By.ID, "threshold-value").text.strip() == "0.00",
          "the threshold display does not show 0.00")
    rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    check(len(rows) == n0, f"results table has {len(rows)} rows, {n0} boxes drawn")
    w, h = driver.execute_script("const c=document.getElementById('canvas'); return [c.width, c.height];")
    check(w > 0 and h > 0, f"canvas is empty ({w}x{h})")

    # Pixels: some drawn box edge must carry the box's colour.
    boxes = driver.execute_script(JS_EDGE_PIXELS)
    check(len(boxes) == n0, f"codetrDemo.drawnBoxes has {len(boxes)} entries, data-boxes-drawn={n0}")
    hits = []
    for b in boxes:
        for side, s in b["samples"].items():
            if all(abs(a - e) <= COLOR_TOL for a, e in zip(s["rgba"][:3], b["rgb"])) and s["rgba"][3] > 200:
                hits.append(f"{b['label']} {side} @({s['x']},{s['y']})")
    check(hits, "no drawn box edge has its box colour on the canvas; samples: "
          + repr([(b["label"], b["rgb"], {k: v["rgba"] for k, v in b["samples"].items()}) for b in boxes]))
    print(f"threshold 0: {n0} boxes drawn on a {w}x{h} canvas; box colour found at {len(hits)} edge samples, "
          f"e.g. {hits[0]}")
    driver.execute_script(JS_SNAPSHOT)
    driver.save_screenshot(str(artifacts / "demo-threshold-0.png"))

    # ---- threshold 1.0: the same canvas redrawn client-side, without the boxes ----
    requests_before = driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/detect')).length;")
    set_threshold(driver, 1.0)
    n1 = int(canvas_attr(driver, "data-boxes-drawn") or "0")
    drawn1 = driver.execute_script("return window.codetrDemo.drawnBoxes.map(b => b.score);")
    check(n1 == len(drawn1), f"data-boxes-drawn={n1} but {len(drawn1)} boxes recorded")
    check(all(s >= 1.0 for s in drawn1), f"boxes with score < 1 drawn at threshold 1.0: {drawn1}")
    check(canvas_attr(driver, "data-state") == "done", "data-state left 'done' after moving the slider")
    requests_after = driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/detect')).length;")
    check(requests_after == requests_before, "moving the slider sent a new /v1/detect request")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == n1,
          "results table not re-filtered at threshold 1.0")
    if n1 == 0:
        changed = driver.execute_script(JS_DIFF_FROM_SNAPSHOT)
        check(changed != -1, "canvas size changed between threshold 0 and 1.0")
        check(changed > 0, "the canvas with boxes equals the canvas without boxes: nothing was drawn")
        print(f"threshold 1.0: 0 boxes; {changed} canvas pixels differ from the drawing with boxes")
    else:
        print(f"threshold 1.0: {n1} boxes with score >= 1 remain")

    # ---- the error path: a text file named .png ----
    bad = artifacts / "not-an-image.png"
    bad.write_text("this is plain text, not a PNG\n")
    state = upload(driver, bad)
    check(state == "error", f"uploading a text file named .png ended in state {state!r}, expected 'error'")
    err = driver.find_element(By.ID, "error")
    check(err.is_displayed(), "#error is not visible after a failed request")
    msg = err.text.strip()
    check(len(msg) > 3, f"#error shows no message: {msg!r}")
    check(canvas_attr(driver, "data-boxes-drawn") == "0", "boxes still counted after a failed request")
    print(f"error path: #error shows {msg!r}")
    driver.save_screenshot(str(artifacts / "demo-error.png"))


# ---- entry points --------------------------------------------------------------------------

def run() -> None:
    """Runs the whole check; raises Skip or Fail (AssertionError)."""
    required = os.environ.get("CODETR_E2E_REQUIRED", "") == "1"
    problem = browser_problem()
    if problem:
        if required:
            raise Fail(f"CODETR_E2E_REQUIRED=1 but the browser test cannot run: {problem}")
        raise Skip(problem)

    art_env = os.environ.get("CODETR_E2E_ARTIFACTS")
    tmp = Path(tempfile.mkdtemp(prefix="codetr-e2e-"))
    artifacts = Path(art_env) if art_env else tmp
    artifacts.mkdir(parents=True, exist_ok=True)
    mock = None
    try:
        base_url = os.environ.get("CODETR_SERVE_URL", "").strip()
        if not base_url:
            sys.path.insert(0, str(HERE))
            import mock_server
            mock, base_url = mock_server.start()
            print(f"CODETR_SERVE_URL unset: testing against the mock server at {base_url}")
        sample_env = os.environ.get("CODETR_SAMPLE_IMAGE", "").strip()
        if sample_env:
            sample = Path(sample_env)
            check(sample.is_file(), f"CODETR_SAMPLE_IMAGE={sample_env} is not a file")
        else:
            sample = tmp / "sample.png"
            make_png(sample)
            print(f"CODETR_SAMPLE_IMAGE unset: uploading a generated {sample}")
        run_demo(base_url, sample, artifacts)
        if art_env:
            print(f"screenshots in {artifacts}")
    finally:
        if mock is not None:
            mock.shutdown()
            mock.server_close()
        if not art_env:
            # keep the folder only if a failure screenshot is in it
            if not (tmp / "demo-failure.png").exists():
                shutil.rmtree(tmp, ignore_errors=True)


def test_demo():
    try:
        run()
    except Skip as e:
        import pytest
        pytest.skip(f"browser e2e: {e}")


def main() -> int:
    try:
        run()
    except Skip as e:
        print(f"SKIP: browser e2e test: {e}")
        return 0
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("FAIL: the browser e2e test raised an unexpected error (above)", file=sys.stderr)
        return 1
    print("PASS: demo page e2e")
    return 0


if __name__ == "__main__":
    sys.exit(main())
