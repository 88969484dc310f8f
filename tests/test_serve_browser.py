"""The paella-serve page in real headless Chromium (Debian's chromium, driven by Playwright):
generate; upload an image, paint a mask and inpaint; outpaint it onto a wider canvas; vary it;
interpolate between prompts; a refused request shows the server's error, a missing API key
too until it is entered. Saves docs/serve.png."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.test_serve import Server

CHROMIUM = "/usr/bin/chromium"
API_KEY = "a-key-of-the-page-test"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no {CHROMIUM} (apt-get install -y chromium)")


def sizes(page, mode: str) -> list[list[int]]:
  """[width, height] of the gallery's newest `mode` images, in order."""
  return page.eval_on_selector_all(
      f"#gallery figure.{mode}:first-of-type img",
      "imgs => imgs.map(img => [img.naturalWidth, img.naturalHeight])")


def run(page, mode: str) -> list[list[int]]:
  """Clicks `mode`'s button and waits for its images."""
  page.click(f"#{mode}")
  page.wait_for_selector(f"#gallery img.{mode}, #status.error", timeout=120_000)
  assert page.get_attribute("#status", "class") != "error", page.text_content("#status")
  page.wait_for_function("imgs => imgs.every(img => img.complete && img.naturalWidth)",
                         arg=page.query_selector_all(f"#gallery img.{mode}"))
  return sizes(page, mode)


@pytest.mark.slow  # 60-75 s on the busy 2-core CPU: a server start and four compiles
def test_every_mode_in_the_page(tiny_checkpoints, tmp_path):
  playwright = pytest.importorskip("playwright.sync_api")
  y, x = np.mgrid[:32, :32]
  image = np.where(((y - 16) ** 2 + (x - 14) ** 2 < 81)[..., None], [220, 40, 30], [40, 70, 200])
  Image.fromarray(image.astype(np.uint8)).save(tmp_path / "upload.png")  # a red disc on blue
  os.environ["PAELLA_SERVE_API_KEY"] = API_KEY
  try:
    server = Server(tiny_checkpoints / "model", tmp_path, "--max-batch", "2")
  finally:
    del os.environ["PAELLA_SERVE_API_KEY"]
  try:
    with playwright.sync_playwright() as p:
      browser = p.chromium.launch(
          executable_path=CHROMIUM, headless=True,
          args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
      page = browser.new_page(viewport={"width": 1000, "height": 1100})
      errors = []
      page.on("pageerror", lambda e: errors.append(str(e)))
      page.goto(server.url + "/")
      page.fill("#prompt", "a red circle on a blue square")
      page.fill("#seed", "4")
      page.click("#generate")  # the server needs its API key: refused until it is given
      page.wait_for_selector("#status.error", timeout=30_000)
      assert "generate refused (401)" in page.text_content("#status")
      page.fill("#api_key", API_KEY)
      assert run(page, "generate") == [[32, 32]]

      page.set_input_files("#upload", str(tmp_path / "upload.png"))
      page.wait_for_function("!document.getElementById('inpaint').disabled")
      box = page.locator("#paint").bounding_box()
      page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
      page.mouse.down()
      page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7, steps=8)
      page.mouse.up()
      assert run(page, "inpaint") == [[32, 32]]

      page.fill("#canvas_w", "30")  # not a multiple of the VQGAN factor: refused, shown in red
      page.click("#outpaint")
      page.wait_for_selector("#status.error", timeout=30_000)
      refused = page.text_content("#status")
      assert "outpaint refused (400)" in refused and "multiple of the VQGAN factor" in refused
      assert page.query_selector("#gallery img.outpaint") is None
      page.fill("#canvas_w", "64")  # the upload (32x32) at the left of a 32x64 canvas
      page.fill("#offset_top", "0")
      page.fill("#offset_left", "0")
      assert run(page, "outpaint") == [[64, 32]]

      assert run(page, "vary") == [[32, 32]]

      page.fill("#prompts", "a red circle\n\na blue square\n")
      page.fill("#frames", "2")
      assert run(page, "interpolate") == [[32, 32]] * 2
      titles = page.eval_on_selector_all("#gallery img.interpolate",
                                         "imgs => imgs.map(img => img.title)")
      assert [t.splitlines()[0] for t in titles] == ["frame 0", "frame 1"]
      page.screenshot(path=str(ROOT / "docs" / "serve.png"), full_page=True)
      browser.close()
    assert not errors
    stored = [np.asarray(Image.open(path).convert("L")) for path in tmp_path.glob("*.png")
              if path.name != "upload.png"]
    masks = [m for m in stored if ((m == 0) | (m == 255)).mean() > 0.9]  # black, white, antialiased
    assert masks and 0.05 < (masks[0] > 127).mean() < 0.6  # the painted stroke, sent as the mask
    metrics = json.loads(urllib.request.urlopen(urllib.request.Request(
        server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})).read())
    assert metrics["statuses"] == {"200": 5, "400": 1, "401": 1}
    server.log.seek(0)
    assert "Traceback" not in server.log.read()
  finally:
    server.stop()


def test_the_page_sends_what_its_fields_say(tmp_path):
  """The request bodies the page builds (captured before they leave the browser)."""
  playwright = pytest.importorskip("playwright.sync_api")
  Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "upload.png")
  with playwright.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page()
    sent = {}

    def answer(route):
      mode = route.request.url.rsplit("/", 1)[1]
      sent[mode] = json.loads(route.request.post_data)
      route.fulfill(status=400, content_type="application/json",
                    body=json.dumps({"error": f"refused {mode}"}))

    page.route("**/v1/*", answer)
    page.route("**/", lambda route: route.fulfill(
        path=str(ROOT / "paella_jax" / "serve" / "static" / "index.html")))
    page.route("**/static/app.js", lambda route: route.fulfill(
        path=str(ROOT / "paella_jax" / "serve" / "static" / "app.js")))
    page.goto("http://paella.test/")
    page.fill("#prompt", "a fox")
    page.fill("#cfg", "off")
    page.fill("#t_start", "0.7")
    page.fill("#t_end", "0.2")
    page.set_input_files("#upload", str(tmp_path / "upload.png"))
    page.wait_for_function("!document.getElementById('edit').disabled")
    page.fill("#start_step", "6")
    for mode in ("edit", "vary", "outpaint", "interpolate"):
      page.click(f"#{mode}")
      page.wait_for_function(f"document.getElementById('status').textContent.includes("
                             f"'refused {mode}')")
      assert page.get_attribute("#status", "class") == "error"
    browser.close()
  common = {"seed": 0, "num_images": 1, "cfg": "off", "temperature": [0.7, 0.2]}
  assert sent["edit"] == dict(common, prompt="a fox", image=sent["edit"]["image"], start_step=6)
  assert Image.open(io.BytesIO(base64.b64decode(sent["edit"]["image"]))).size == (24, 16)
  assert sent["vary"] == dict(common, image=sent["edit"]["image"])
  assert sent["outpaint"] == dict(common, prompt="a fox", image=sent["edit"]["image"],
                                  canvas=[16, 48])
  assert sent["interpolate"] == dict(common, prompts=["a red circle", "a blue square"], frames=4,
                                     mode="lerp")
