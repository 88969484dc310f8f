"""The paella-serve page in real headless Chromium (Debian's chromium, driven by Playwright):
type a prompt and generate; upload an image, paint a mask and inpaint. Saves docs/serve.png."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.test_serve import Server

CHROMIUM = "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                                   reason=f"no {CHROMIUM} (apt-get install -y chromium)")]


def test_generate_and_inpaint_in_the_page(tiny_checkpoints, tmp_path):
  playwright = pytest.importorskip("playwright.sync_api")
  image = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / "upload.png")
  server = Server(tiny_checkpoints / "model", tmp_path, "--max-batch", "2")
  try:
    with playwright.sync_playwright() as p:
      browser = p.chromium.launch(
          executable_path=CHROMIUM, headless=True,
          args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
      page = browser.new_page(viewport={"width": 1000, "height": 900})
      errors = []
      page.on("pageerror", lambda e: errors.append(str(e)))
      page.goto(server.url + "/")
      page.fill("#prompt", "a red circle on a blue square")
      page.fill("#seed", "4")
      page.click("#generate")
      page.wait_for_selector("#gallery img.generate", timeout=60_000)
      generated = page.eval_on_selector("#gallery img.generate",
                                        "img => [img.naturalWidth, img.naturalHeight]")
      assert generated == [32, 32]

      page.set_input_files("#upload", str(tmp_path / "upload.png"))
      page.wait_for_function("!document.getElementById('inpaint').disabled")
      box = page.locator("#paint").bounding_box()
      page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
      page.mouse.down()
      page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7, steps=8)
      page.mouse.up()
      page.click("#inpaint")
      page.wait_for_selector("#gallery img.inpaint", timeout=60_000)
      assert "inpaint: 1 image(s)" in page.text_content("#status")
      page.screenshot(path=str(ROOT / "docs" / "serve.png"))
      browser.close()
    assert not errors
    stored = [np.asarray(Image.open(path).convert("L")) for path in tmp_path.glob("*.png")
              if path.name != "upload.png"]
    masks = [m for m in stored if ((m == 0) | (m == 255)).mean() > 0.9]  # black, white, antialiased
    assert masks and 0.05 < (masks[0] > 127).mean() < 0.6  # the painted stroke, sent as the mask
    metrics = server.get("/metrics")[1]
    assert metrics["statuses"] == {"200": 2}
  finally:
    server.stop()
