"""`cad3d serve` as a person uses it: a real headless Chromium (Debian's package, driven by
Playwright) uploads drawings, presses Convert, looks at the 3D view and downloads the GLB; a bad
upload shows its error; the second tab shows the evaluation and the loss curves."""

from __future__ import annotations

import io
import re
import shutil
import time

import numpy as np
import pytest
import trimesh
from PIL import Image

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip("no chromium (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_server.url)
    yield page
    context.close()


def convert(page, files, method: str) -> str:
    """Upload ``files``, pick ``method``, press Convert; the summary line once the results show."""
    page.locator("#drawings input[type=file]").set_input_files([str(f) for f in files])
    page.locator("#method input").click()
    page.get_by_role("option", name=method, exact=True).click()
    page.locator("#convert").click()
    page.wait_for_function("() => document.querySelector('#summary')?.innerText.includes('converted')")
    page.wait_for_function("name => document.querySelector('#result-0-text')?.innerText.includes(name)", arg=files[0].name)
    return page.locator("#summary").inner_text()


def coloured_pixels(png: bytes) -> int:
    """Pixels of the cloud's height colours (blue to orange), below the view's label strip."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)[40:]
    return int((np.abs(rgb[..., 0] - rgb[..., 2]) > 40).sum())


def test_a_drawing_is_converted_shown_in_3d_and_its_glb_downloads(page, tiny_dataset, tmp_path):
    drawing = sorted((tiny_dataset / "images").glob("*.png"))[0]
    assert convert(page, [drawing], "depth").startswith("converted 1, failed 0")
    text = page.locator("#result-0-text").inner_text()
    assert drawing.name in text and "path depth · trained weights" in text and "cad3d_depth_256.onnx" in text
    assert re.search(r"· \d+\.\d\d s", text), text  # the time taken

    # The viewer draws a moment after its canvas appears: look until the cloud shows.
    canvas = page.locator("#result-0-view canvas")
    canvas.wait_for()
    shot, seen = b"", 0
    for _ in range(120):
        shot = canvas.screenshot()
        seen = coloured_pixels(shot)
        if seen > 400:
            break
        time.sleep(0.25)
    (tmp_path / "view.png").write_bytes(shot)
    assert seen > 400, f"3D view blank ({seen} coloured pixels; {tmp_path / 'view.png'})"

    with page.expect_download() as download:
        page.locator("#result-0-glb").click()
    glb = tmp_path / download.value.suggested_filename
    download.value.save_as(glb)
    assert glb.name == f"{drawing.stem}.glb"
    scene = trimesh.load(glb)
    # The default point count is the auto path's own: 2048 for the tiny ViT or diffusion, 4096 for depth.
    assert len(scene.geometry["points"].vertices) in (2048, 4096) and len(scene.geometry["mesh"].faces) > 0
    assert page.locator("#result-1").is_hidden()


def test_a_bad_upload_shows_its_error_and_no_stack_trace(page, tiny_dataset, tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_text("this is not an image")
    good = sorted((tiny_dataset / "images").glob("*.png"))[1]
    assert convert(page, [bad, good], "geometric").startswith("converted 1, failed 1")
    error = page.locator("#result-0-text").inner_text()
    assert "Could not convert: scan.png: not an image" in error
    assert page.locator("#result-0-view canvas").count() == 0 and page.locator("#result-0-glb").is_hidden()
    assert "path geometric" in page.locator("#result-1-text").inner_text()
    assert "Traceback" not in page.content()


def test_the_second_tab_shows_the_evaluation_and_the_loss_curves(page):
    page.get_by_role("tab", name="Evaluation & training").click()
    page.get_by_text("geometric (no weights)").first.wait_for()
    page.locator("img[src*='eval_chart']").wait_for()
    gallery = page.locator("img[src*='loss_']")
    gallery.first.wait_for()
    names = sorted({src.rsplit("/", 1)[-1] for src in (gallery.nth(i).get_attribute("src") for i in range(gallery.count()))})
    assert names == [f"loss_{m}.png" for m in ("depth", "diffusion", "vae", "vit")]
    for i in range(gallery.count()):  # each figure loads (the gallery loads them lazily)
        gallery.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 400", arg=gallery.nth(i).element_handle())
