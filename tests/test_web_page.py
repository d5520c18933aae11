"""The web page in a real headless Chromium (selenium + Debian's chromium and chromium-driver)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed")
httpx = pytest.importorskip("httpx")

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if not (CHROMEDRIVER.is_file() and CHROMIUM):
    pytest.skip(
        "headless Chromium is not installed: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )
pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from background_server import BackgroundServer  # noqa: E402
from captioner.serve.app import create_app  # noqa: E402

IMAGES = Path(__file__).parent / "fixtures" / "tiny" / "images"
DESKTOP, PHONE = (1280, 900), (390, 844)


@pytest.fixture(scope="module")
def server(trained_show_tell):
    with BackgroundServer(create_app(trained_show_tell)) as running:
        yield running


def open_browser(profile: Path, size: tuple[int, int]):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
        f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path, request):
    size = getattr(request, "param", DESKTOP)
    driver = open_browser(tmp_path / "profile", size)
    if size == PHONE:  # headless windows have a minimum width; emulate the phone's screen instead
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 2, "mobile": True},
        )
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def api_caption(server, path: Path, beam_size: int = 3, n_best: int = 3) -> dict:
    response = httpx.post(
        f"{server.url}v1/captions",
        data={"beam_size": str(beam_size), "n_best": str(n_best)},
        files=[("image", (path.name, path.read_bytes()))],
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def load_page(driver, server, decoder: str = "show-tell"):
    driver.get(server.url)
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: decoder in d.find_element(By.ID, "model-info").text)
    return wait


def upload_and_wait(driver, wait, path: Path) -> str:
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    wait.until(lambda d: d.find_element(By.ID, "caption").text or d.find_element(By.ID, "error").is_displayed())
    return driver.find_element(By.ID, "caption").text


def severe_console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_captions_an_uploaded_image(server, browser, tmp_path):
    path = IMAGES / "chelsea.jpg"
    wait = load_page(browser, server)
    caption = upload_and_wait(browser, wait, path)
    expected = api_caption(server, path)
    assert caption == expected["caption"]
    assert not browser.find_element(By.ID, "error").is_displayed()
    items = browser.find_elements(By.CSS_SELECTOR, "#alternatives li")
    shown = [li.find_element(By.CLASS_NAME, "alt-caption").text for li in items]
    assert shown == [a["caption"] for a in expected["alternatives"]]
    image = browser.find_element(By.ID, "preview")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 128
    assert not browser.find_element(By.ID, "attention").is_displayed()  # show-tell has no attention
    assert "Captioned in" in browser.find_element(By.ID, "status").text
    browser.save_screenshot(str(tmp_path / "desktop.png"))
    assert severe_console_errors(browser) == []


@pytest.mark.parametrize("browser", [PHONE], indirect=True, ids=["phone"])
def test_page_fits_a_phone(server, browser, tmp_path):
    wait = load_page(browser, server)
    path = IMAGES / "grace_hopper.jpg"
    assert upload_and_wait(browser, wait, path) == api_caption(server, path)["caption"]
    assert browser.execute_script("return window.innerWidth") == PHONE[0]
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    width = browser.execute_script("return document.getElementById('preview').getBoundingClientRect().width")
    assert 0 < width <= PHONE[0]
    browser.save_screenshot(str(tmp_path / "phone.png"))


def test_page_shows_a_clear_error(server, browser, tmp_path):
    wait = load_page(browser, server)
    notes = tmp_path / "notes.png"
    notes.write_text("this is a text file, not a picture\n")
    upload_and_wait(browser, wait, notes)
    error = browser.find_element(By.ID, "error")
    wait.until(lambda d: error.is_displayed())
    assert "notes.png" in error.text and "accepted format" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    browser.save_screenshot(str(tmp_path / "error.png"))
    # The page recovers: the next good image is captioned and the error goes away.
    path = IMAGES / "rocket.jpg"
    browser.find_element(By.ID, "file-input").send_keys(str(path))
    wait.until(lambda d: d.find_element(By.ID, "caption").text == api_caption(server, path)["caption"])
    assert not error.is_displayed()


def test_attention_overlay_is_drawn_per_word(server, browser, tmp_path):
    """The heat map drawing, fed a result shaped like an attention decoder's (7×7 grid)."""
    wait = load_page(browser, server)
    upload_and_wait(browser, wait, IMAGES / "astronaut.jpg")  # square: the crop is the whole image
    peaks = {"an": 0, "astronaut": 48}  # top-left and bottom-right cells
    weights = [[0.9 if i == peak else 0.1 / 48 for i in range(49)] for peak in peaks.values()]
    result = {
        "filename": "astronaut.jpg", "caption": "an astronaut", "score": -1.0,
        "alternatives": [{"caption": "an astronaut", "score": -1.0}],
        "attention": {"words": list(peaks), "grid": [7, 7], "weights": weights},
    }
    browser.execute_script("window.captionerPage.render(arguments[0])", result)
    overlay = browser.find_element(By.ID, "overlay")
    wait.until(lambda d: overlay.get_attribute("data-drawn") == "true")
    buttons = browser.find_elements(By.CSS_SELECTOR, "#words button")
    assert [b.text for b in buttons] == list(peaks)
    alpha_at = """
        const c = document.getElementById('overlay'), ctx = c.getContext('2d');
        const px = (fx, fy) => ctx.getImageData(Math.floor(c.width * fx), Math.floor(c.height * fy), 1, 1).data[3];
        return [px(0.12, 0.12), px(0.88, 0.88)];"""  # inside the 224/256 center crop
    top_left, bottom_right = browser.execute_script(alpha_at)
    assert top_left > 100 > bottom_right
    browser.save_screenshot(str(tmp_path / "attention-word0.png"))
    buttons[1].click()
    wait.until(lambda d: overlay.get_attribute("data-word") == "1")
    top_left, bottom_right = browser.execute_script(alpha_at)
    assert bottom_right > 100 > top_left
    assert buttons[1].get_attribute("aria-pressed") == "true"
    browser.save_screenshot(str(tmp_path / "attention-word1.png"))


def test_bundled_attention_model_end_to_end(browser, tmp_path):
    """The bundled show-attend-tell model: real attention weights reach the page's overlay."""
    examples = Path(__file__).parent.parent / "examples"
    with BackgroundServer(create_app()) as bundled:
        wait = load_page(browser, bundled, "show-attend-tell")
        caption = upload_and_wait(browser, wait, examples / "emoji-rocket.png")
        assert caption == "rocket"
        overlay = browser.find_element(By.ID, "overlay")
        wait.until(lambda d: overlay.get_attribute("data-drawn") == "true")
        assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#words button")] == ["rocket"]
        browser.save_screenshot(str(tmp_path / "bundled-attention.png"))
        assert severe_console_errors(browser) == []


def test_low_confidence_notice_on_a_photo(browser, tmp_path):
    """The bundled emoji model flags a photograph on the page, naming what it knows; an emoji is not flagged."""
    examples = Path(__file__).parent.parent / "examples"
    with BackgroundServer(create_app()) as bundled:
        wait = load_page(browser, bundled, "show-attend-tell")
        notice = browser.find_element(By.ID, "low-confidence")
        upload_and_wait(browser, wait, examples / "photo-chelsea.jpg")
        wait.until(lambda d: notice.is_displayed())
        assert notice.text == "low confidence — this model knows emoji art"
        assert "confidence 0." in browser.find_element(By.ID, "score").text
        browser.save_screenshot(str(tmp_path / "low-confidence.png"))
        browser.find_element(By.ID, "file-input").send_keys(str(examples / "emoji-rocket.png"))
        wait.until(lambda d: d.find_element(By.ID, "caption").text == "rocket")
        assert not notice.is_displayed()
        assert severe_console_errors(browser) == []


def test_language_menu_captions_in_the_chosen_language(trained_en_de, browser, tmp_path):
    """A multilingual model: the page offers its languages, captions in the chosen one, and marks
    the caption's language; an Arabic caption is laid out right to left."""
    from selenium.webdriver.support.ui import Select

    path = IMAGES / "chelsea.jpg"
    with BackgroundServer(create_app(trained_en_de)) as server:
        wait = load_page(browser, server)
        menu = browser.find_element(By.ID, "language")
        assert menu.is_displayed()
        assert [o.get_attribute("value") for o in Select(menu).options] == ["en", "de"]
        Select(menu).select_by_value("de")
        caption = upload_and_wait(browser, wait, path)
        german = httpx.post(f"{server.url}v1/captions", data={"language": "de"},
                            files=[("image", (path.name, path.read_bytes()))], timeout=60).json()
        assert caption == german["results"][0]["caption"] and german["language"] == "de"
        assert browser.find_element(By.ID, "caption").get_attribute("lang") == "de"
        result = {"filename": "x.png", "caption": "وجه كلب", "score": -1.0,
                  "alternatives": [{"caption": "وجه كلب", "score": -1.0}, {"caption": "كلب", "score": -2.0}]}
        browser.execute_script("window.captionerPage.render(arguments[0], 'ar')", result)
        direction = "return getComputedStyle(arguments[0]).direction"
        shown = browser.find_element(By.ID, "caption")
        assert shown.text == "وجه كلب" and browser.execute_script(direction, shown) == "rtl"
        for alternative in browser.find_elements(By.CLASS_NAME, "alt-caption"):
            assert browser.execute_script(direction, alternative) == "rtl"
        browser.save_screenshot(str(tmp_path / "arabic.png"))
        assert severe_console_errors(browser) == []
