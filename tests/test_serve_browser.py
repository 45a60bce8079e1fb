"""`draw serve`'s page in a real headless Chromium, driven with Selenium: every feature is clicked
through and checked on what the page shows (canvas pixels read with getImageData, and text).

The server is the real command (`python -m drawcli serve --port 0`) on 127.0.0.1, serving @mnist
and a small colour run. Needs the serve extra, selenium and Debian's chromium and chromium-driver;
skipped with the reason when one is missing (.ci/run installs them, so CI runs these).

DRAW_UPDATE_SCREENSHOTS=1 also writes the screenshots of docs/serve.md (docs/serve-*.png).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason='the serve extra is not installed (pip install -e ".[serve]")')
pytest.importorskip("uvicorn", reason='the serve extra is not installed (pip install -e ".[serve]")')
pytest.importorskip("selenium", reason="selenium is not installed (it is in the test extra)")

from PIL import Image, ImageDraw  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from helpers import make_colour_run, start_server, url_in  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)
SCREENSHOTS = os.environ.get("DRAW_UPDATE_SCREENSHOTS") == "1"

# Page-side helpers: a canvas's pixels, and the picture it shows (one value per image pixel).
STATS_JS = """
const c = arguments[0];
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let sum = 0, red = 0, green = 0, coloured = 0, white = 0;
for (let i = 0; i < d.length; i += 4) {
  const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
  sum += r + g + b;
  if (r === 255 && g === 0 && b === 0) red++;
  if (r === 0 && g === 255 && b === 0) green++;
  if (Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;
  if (r > 200 && g > 200 && b > 200) white++;
}
return {mean: sum / (3 * d.length / 4), red, green, coloured, white, width: c.width, height: c.height};
"""
PICTURE_JS = """
const [c, h, w] = [arguments[0], arguments[1], arguments[2]];
const s = c.width / w, d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, out = [];
for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
  const i = 4 * (Math.floor((y + 0.5) * s) * c.width + Math.floor((x + 0.5) * s));
  out.push(d[i], d[i + 1], d[i + 2]);
}
return out;
"""


COLOUR = {"glimpses": 3, "height": 12, "width": 10}  # make_colour_run's model; the screenshots' trained run: below


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The URL of `draw serve` with @mnist and 'rgb', a colour run on pictures of coloured blocks: an
    untrained one (helpers.make_colour_run), or for the screenshots one trained for 600 steps (15 s)."""
    root = tmp_path_factory.mktemp("browser")
    pictures = root / "pictures"
    pictures.mkdir()
    g = np.random.default_rng(1)
    side = 16 if SCREENSHOTS else None
    for i in range(400 if SCREENSHOTS else 12):
        h, w = (side, side) if side else (COLOUR["height"], COLOUR["width"])
        img = Image.new("RGB", (w, h), tuple(int(v) for v in g.integers(0, 70, 3)))
        x, y = (int(v) for v in g.integers(1, w // 2, 2))
        size = int(g.integers(w // 3, w // 2 + 1))
        shape = ImageDraw.Draw(img).ellipse if i % 2 else ImageDraw.Draw(img).rectangle
        shape([x, y, x + size, y + size], fill=tuple(int(v) for v in g.integers(100, 256, 3)))
        img.save(pictures / f"{i:03d}.png")
    if SCREENSHOTS:
        COLOUR.update(glimpses=8, height=side, width=side)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "drawcli", "train", "--dataset", f"folder:{pictures}", "--glimpses", "8",
                        "--hidden", "128", "--latent", "10", "--read-n", "3", "--write-n", "3", "--max-steps", "600",
                        "--batch-size", "64", "--name", "rgb", "--runs-dir", str(root / "runs"), "--device", "cpu",
                        "--data-dir", str(root / "data"), "--no-tensorboard"], env=env, check=True, capture_output=True)
    else:
        make_colour_run(root / "runs", "rgb", pictures, root / "data")
    proc, lines = start_server(["@mnist", "rgb", "--runs-dir", str(root / "runs"), "--device", "cpu", "--engine", "python"], root)
    yield url_in(lines)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 0


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="draw-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,1500", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(server, browser):
    """The page, freshly loaded, with @mnist's first grid and player shown; no script errors by the end."""
    browser.get(server)
    wait(browser, "document.getElementById('player').dataset.key === '@mnist|16|0|0'")
    yield browser
    # Script errors fail the test; a 4xx a test asked for is logged by the browser as a network error.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, errors


def wait(driver, condition: str, timeout: float = 30):
    """Until the JavaScript expression is true (and no request is running)."""
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(f"return document.body.dataset.busy === '0' && !!({condition});"))


def el(driver, id_: str):
    return driver.find_element(By.ID, id_)


def stats(driver, id_or_element) -> dict:
    element = el(driver, id_or_element) if isinstance(id_or_element, str) else id_or_element
    return driver.execute_script(STATS_JS, element)


def picture(driver, element, h: int, w: int) -> np.ndarray:
    return np.array(driver.execute_script(PICTURE_JS, element, h, w)).reshape(h, w, 3)


def shot(target, name: str) -> None:
    """docs/serve-NAME.png, when asked for (DRAW_UPDATE_SCREENSHOTS=1): an element, or the browser's
    whole window scrolled to the top."""
    if not SCREENSHOTS:
        return
    if isinstance(target, webdriver.Chrome):
        target.execute_script("window.scrollTo(0, 0)")
        png = target.get_screenshot_as_png()
    else:
        png = target.screenshot_as_png
    Image.open(io.BytesIO(png)).convert("RGB").save(ROOT / "docs" / f"serve-{name}.png", optimize=True)


def set_number(driver, id_: str, value: int) -> None:
    box = el(driver, id_)
    box.clear()
    box.send_keys(str(value))


def stroke(driver, element, points) -> None:
    """A mouse stroke through ``points`` (offsets from the element's centre)."""
    chain = ActionChains(driver, duration=10).move_to_element_with_offset(element, *points[0]).click_and_hold()
    for a, b in zip(points, points[1:]):
        chain.move_by_offset(b[0] - a[0], b[1] - a[1])
    chain.release().perform()


# ----------------------------------------------------------------------------- the model picker and card
def test_the_picker_lists_the_models_and_the_card_shows_the_numbers(page):
    options = [o.text for o in Select(el(page, "model")).options]
    assert options == ["@mnist (built-in)", "rgb"]
    card = el(page, "card").text
    assert "80.94 nats" in card and "T = 64 glimpses, LSTM 256, z 100, read 2×2, write 5×5" in card
    assert "grey, 28×28" in card and "mnist" in card and "python engine on cpu" in card
    cells = page.find_elements(By.CSS_SELECTOR, "#grid canvas")
    assert len(cells) == 16
    for cell in cells:  # each a digit: mostly black with white strokes
        s = stats(page, cell)
        assert 5 < s["mean"] < 120 and s["white"] > 20, s
    assert el(page, "status").text == "16 samples from @mnist, seed 0"
    shot(page, "page")
    shot(el(page, "card-section"), "card")


# ----------------------------------------------------------------------------- samples
def test_the_grid_follows_count_and_seed(page):
    first = picture(page, page.find_elements(By.CSS_SELECTOR, "#grid canvas")[0], 28, 28)
    set_number(page, "count", 25)
    set_number(page, "seed", 7)
    el(page, "sample-btn").click()
    wait(page, "document.getElementById('grid').dataset.key === '@mnist|25|7'")
    cells = page.find_elements(By.CSS_SELECTOR, "#grid canvas")
    assert len(cells) == 25
    seven = picture(page, cells[0], 28, 28)
    assert np.abs(seven.astype(int) - first).mean() > 10  # another seed, other digits
    shot(el(page, "samples-section"), "samples")
    set_number(page, "count", 300)  # over the limit: the server's one line is shown
    el(page, "sample-btn").click()
    wait(page, "document.getElementById('status').classList.contains('error')")
    assert el(page, "status").text == "n: 300 is out of range (1..256)"
    assert len(page.find_elements(By.CSS_SELECTOR, "#grid canvas")) == 25  # the grid stays
    set_number(page, "count", 25)
    el(page, "sample-btn").click()
    wait(page, "document.getElementById('grid').dataset.key === '@mnist|25|7' && !document.getElementById('status').classList.contains('error')")
    again = picture(page, page.find_elements(By.CSS_SELECTOR, "#grid canvas")[0], 28, 28)
    assert np.array_equal(again, seven)  # the same seed, the same samples


# ----------------------------------------------------------------------------- the glimpse player
def test_a_clicked_sample_plays_in_the_player_and_scrubs_without_requests(page):
    cells = page.find_elements(By.CSS_SELECTOR, "#grid canvas")
    cells[5].click()
    wait(page, "document.getElementById('player').dataset.key === '@mnist|16|0|5'")
    assert el(page, "player-title").text == "sample 5 of 16, seed 0, @mnist"
    assert el(page, "glimpse").text == "glimpse 64 / 64"
    assert "picked" in cells[5].get_attribute("class")
    player = el(page, "player")
    assert stats(page, "player")["red"] > 20  # the write window
    shot(el(page, "player-section"), "player")
    el(page, "player-boxes").click()  # windows off: the canvas alone
    assert stats(page, "player")["red"] == 0
    last = picture(page, player, 28, 28).astype(int)
    difference = int(np.abs(last - picture(page, cells[5], 28, 28)).max())
    assert difference <= 1  # the final canvas is the sample

    requests = page.execute_script("return performance.getEntriesByType('resource').length")
    scrub = el(page, "scrub")
    scrub.send_keys(Keys.HOME)
    assert el(page, "glimpse").text == "glimpse 1 / 64"
    early = picture(page, player, 28, 28)
    assert float(np.abs(early - last).mean()) > 20  # the canvas at glimpse 1 is nearly empty grey
    for _ in range(20):
        scrub.send_keys(Keys.ARROW_RIGHT)
    assert el(page, "glimpse").text == "glimpse 21 / 64" and player.get_attribute("data-glimpse") == "21"
    assert page.execute_script("return performance.getEntriesByType('resource').length") == requests  # no round trip

    el(page, "player-boxes").click()  # windows on again
    assert stats(page, "player")["red"] > 0

    el(page, "play").click()
    assert el(page, "play").text == "Pause"
    WebDriverWait(page, 10).until(lambda d: int(el(d, "player").get_attribute("data-glimpse")) >= 30)
    el(page, "play").click()
    assert el(page, "play").text == "Play"
    stopped = el(page, "player").get_attribute("data-glimpse")
    page.execute_script("return new Promise(r => setTimeout(r, 300))")
    assert el(page, "player").get_attribute("data-glimpse") == stopped  # paused
    el(page, "play").click()  # plays on to the end and stops there
    WebDriverWait(page, 15).until(lambda d: el(d, "glimpse").text == "glimpse 64 / 64" and el(d, "play").text == "Play")


# ----------------------------------------------------------------------------- draw your own
def test_drawing_on_the_pad_shows_the_reconstruction_its_windows_and_its_elbo(page):
    pad = el(page, "pad")
    stroke(page, pad, [(-60, -90), (50, -90), (55, -80), (10, 0), (-20, 100)])  # a 7
    wait(page, "document.getElementById('elbo').dataset.seq === '1'")
    assert stats(page, "pad")["white"] > 2000  # the stroke is on the pad
    elbo = el(page, "elbo").text
    assert elbo.startswith("−ELBO ") and " nats (reconstruction " in elbo
    nats = float(elbo.split()[1])
    assert 10 < nats < 400
    seen = stats(page, "seen-image")
    assert seen["white"] > 30 and seen["mean"] < 128  # white ink on black, as MNIST
    assert stats(page, "seen-input")["white"] > 30
    assert el(page, "recon-glimpse").text == "glimpse 64 / 64"
    recon = stats(page, "recon")
    assert recon["green"] > 10 and recon["red"] > 10  # read and write windows
    final = picture(page, el(page, "recon"), 28, 28)
    el(page, "recon-scrub").send_keys(Keys.HOME)
    assert el(page, "recon-glimpse").text == "glimpse 1 / 64"
    assert np.abs(picture(page, el(page, "recon"), 28, 28).astype(int) - final).mean() > 20
    el(page, "recon-scrub").send_keys(Keys.END)
    shot(el(page, "draw-section"), "draw")

    # A finger: touch events draw too, and the model reads the drawing again.
    finger = ActionBuilder(page, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
    finger.pointer_action.move_to(pad, 80, -60).pointer_down().move_to(pad, 80, 60).pointer_up()
    finger.perform()
    wait(page, "document.getElementById('elbo').dataset.seq === '2'")
    assert float(el(page, "elbo").text.split()[1]) != nats

    el(page, "clear").click()
    assert stats(page, "pad")["white"] == 0 and el(page, "elbo").text == ""


def test_an_uploaded_photo_of_ink_on_paper_is_read(page, tmp_path):
    paper = np.full((300, 200, 3), 235, np.uint8)
    paper[40:260, 90:115] = 30  # a dark '1' on light paper, as a phone takes it
    path = tmp_path / "one.jpg"
    Image.fromarray(paper).save(path, quality=90)
    el(page, "upload").send_keys(str(path))
    wait(page, "document.getElementById('elbo').dataset.seq === '1'")
    image = picture(page, el(page, "seen-image"), 28, 28)[..., 0]
    assert image[0, 0] < 10 and image[:, 12:16].max() > 200  # inverted to white ink on black, centred
    rows = np.nonzero(image.max(axis=1) > 25)[0]
    assert rows.max() - rows.min() + 1 == 20  # fitted to MNIST's 20-pixel box
    assert "−ELBO" in el(page, "elbo").text and el(page, "status").text == "@mnist read one.jpg"
    shot(el(page, "draw-section"), "upload")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    el(page, "upload").send_keys(str(bad))
    wait(page, "document.getElementById('status').classList.contains('error')")
    assert el(page, "status").text == "cannot read notes.png: not a picture this browser can open"


# ----------------------------------------------------------------------------- latent walk
def test_a_latent_walk_goes_from_one_sample_to_the_other(page):
    set_number(page, "walk-a", 2)
    set_number(page, "walk-b", 9)
    set_number(page, "walk-steps", 7)
    el(page, "walk-btn").click()
    wait(page, "document.getElementById('walk-row').dataset.key === '@mnist|16|0|2|9|7'")
    row = page.find_elements(By.CSS_SELECTOR, "#walk-row canvas")
    cells = page.find_elements(By.CSS_SELECTOR, "#grid canvas")
    assert len(row) == 7
    ends = [picture(page, row[i], 28, 28).astype(int) for i in (0, 3, 6)]
    a, b = (picture(page, cells[i], 28, 28).astype(int) for i in (2, 9))
    assert np.abs(ends[0] - a).max() <= 1 and np.abs(ends[2] - b).max() <= 1
    assert np.abs(ends[1] - a).mean() > 5 and np.abs(ends[1] - b).mean() > 5  # the middle is neither
    shot(el(page, "walk-section"), "walk")


# ----------------------------------------------------------------------------- a colour model, and switching
def test_a_colour_model_works_everywhere_on_the_page(page):
    Select(el(page, "model")).select_by_value("rgb")
    wait(page, "document.getElementById('player').dataset.key === 'rgb|16|0|0'")
    card = el(page, "card").text
    t, h, w = COLOUR["glimpses"], COLOUR["height"], COLOUR["width"]
    assert f"colour, {w}×{h}" in card and "run rgb" in card and "checkpoint of epoch " in card
    cells = page.find_elements(By.CSS_SELECTOR, "#grid canvas")
    assert len(cells) == 16 and all(stats(page, c)["coloured"] > 0 for c in cells[:4])  # RGB, not grey
    assert el(page, "glimpse").text == f"glimpse {t} / {t}"
    assert picture(page, el(page, "player"), h, w).shape == (h, w, 3)
    assert el(page, "ink-label").is_displayed()
    page.execute_script("const i = document.getElementById('ink'); i.value = '#20a0ff'; i.dispatchEvent(new Event('input'));")
    stroke(page, el(page, "pad"), [(-50, -50), (50, 50)])
    wait(page, "document.getElementById('elbo').dataset.seq === '1'")
    assert stats(page, "pad")["coloured"] > 500  # drawn in the ink's colour
    seen = picture(page, el(page, "seen-image"), h, w)
    assert (seen[..., 2] > seen[..., 0] + 40).any()  # the model's input keeps the blue
    assert el(page, "recon-glimpse").text == f"glimpse {t} / {t}" and "−ELBO" in el(page, "elbo").text
    el(page, "walk-btn").click()
    wait(page, "document.getElementById('walk-row').dataset.key === 'rgb|16|0|0|1|10'")
    assert len(page.find_elements(By.CSS_SELECTOR, "#walk-row canvas")) == 10
    shot(page, "colour")

    Select(el(page, "model")).select_by_value("@mnist")  # and back: the drawing is read by the new model
    wait(page, "document.getElementById('player').dataset.key === '@mnist|16|0|0' && document.getElementById('elbo').dataset.seq === '2'")
    assert "80.94 nats" in el(page, "card").text and el(page, "recon-glimpse").text == "glimpse 64 / 64"
    assert not el(page, "ink-label").is_displayed()
    assert page.find_elements(By.CSS_SELECTOR, "#walk-row canvas") == []
