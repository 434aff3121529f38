"""A real headless Chromium (Debian chromium + chromium-driver, driven by selenium; nothing downloaded) uses
the page: chats, clicks a thumb and a side-by-side choice, and the rows are in the store. User text with HTML
in it shows as text. What is *visible* is checked too (issue 32): every button's label against its background
(WCAG contrast, from the computed colours), the Compare view showing progress and streamed text before its two
answers are done, and an answer's ``` code rendered as a code block (escaped, no fences shown).

``REASONER_SCREENSHOT=PATH`` also saves a screenshot of the page there (the README's picture).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

import pytest

from tests.serve.conftest import API_KEY

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


@pytest.fixture
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed (pip install selenium)"
    )
    chromium, driver = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
    if not os.path.exists(chromium) or driver is None:
        pytest.skip(
            "Debian chromium + chromium-driver not installed (tests/serve/install-deps.sh installs them)"
        )
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="reasoner-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1000,640",
    ):
        opts.add_argument(flag)
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.implicitly_wait(0)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


# The colour a label is drawn in and the first non-transparent background behind it, as computed by the browser.
COLOURS = """
const out = [];
for (const e of document.querySelectorAll(arguments[0])) {
  if (!e.offsetParent) continue;  // not displayed
  let b = e, bg = "rgba(0, 0, 0, 0)";
  while (b && (bg = getComputedStyle(b).backgroundColor).replace(/ /g, "").endsWith(",0)")) b = b.parentElement;
  out.push([e.textContent.trim(), getComputedStyle(e).color, b ? bg : "rgb(255, 255, 255)"]);
}
return out;
"""


def luminance(css: str) -> float:
    """WCAG relative luminance of an ``rgb(...)`` / ``rgba(...)`` colour."""
    r, g, b = (int(x) / 255 for x in re.findall(r"[\d.]+", css)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_contrast_is_computed_as_wcag_says():
    assert round(contrast("rgb(0, 0, 0)", "rgb(255, 255, 255)"), 1) == 21.0
    assert contrast("rgb(255, 255, 255)", "rgba(255, 255, 255, 1)") == 1.0  # the old white-on-white thumbs
    assert 4.5 < contrast("rgb(29, 35, 48)", "rgb(255, 255, 255)")


def assert_legible(browser, selector: str, minimum: float = 4.5) -> int:
    """Every displayed element of ``selector`` has a label whose colour stands out from its background."""
    shown = browser.execute_script(COLOURS, selector)
    for label, fg, bg in shown:
        assert contrast(fg, bg) >= minimum, (
            f"{selector} {label!r}: {fg} on {bg} (contrast {contrast(fg, bg):.2f})"
        )
    return len(shown)


CODE_ANSWER = (
    "Use this:\n```html\n<img src=x onerror=\"document.title='pwned'\">\nprint(1 < 2)\n```\nthen `x<y` works."
)


def test_chat_thumb_and_compare_choice_reach_the_store(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    svc, h = server
    waiter = WebDriverWait(browser, 60)

    class wait:  # on a timeout, say what the page's status line said
        @staticmethod
        def until(condition):
            try:
                return waiter.until(condition)
            except Exception as e:
                raise AssertionError(f"page status: {browser.find_element(By.ID, 'status').text!r}") from e

    before = {row["id"] for row in svc.store.feedback()}
    browser.get(h.url + "/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(API_KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    wait.until(ec.text_to_be_present_in_element((By.ID, "version"), "v0"))

    browser.find_element(By.ID, "chat-input").send_keys(XSS)
    browser.find_element(By.ID, "chat-send").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".msg.assistant .thumb-up")))
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user pre").text == XSS  # shown as text
    assert browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages script") == []
    assert browser.title == "reasoner"
    browser.find_element(By.CSS_SELECTOR, ".msg.assistant .reason option[value='wrong']").click()
    browser.find_element(By.CSS_SELECTOR, ".msg.assistant .comment").send_keys("not an answer")
    browser.find_element(By.CSS_SELECTOR, ".msg.assistant .thumb-down").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "feedback saved"))

    browser.find_element(By.ID, "chat-input").send_keys("What is 12 + 7?")
    browser.find_element(By.ID, "chat-send").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")) == 2)
    # the thumbs of the second answer before they are pressed: legible labels (they were white on white)
    assert assert_legible(browser, ".msg.assistant:last-child .rate button") == 2
    assert assert_legible(browser, "header button, .composer button") == 5
    browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")[1].click()
    wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")[1].get_attribute("disabled")
    )
    assert assert_legible(browser, ".rate button.picked") == 2
    if os.environ.get("REASONER_SCREENSHOT"):  # the conversation as the model answered it (README's picture)
        browser.save_screenshot(os.environ["REASONER_SCREENSHOT"])

    # an answer with code, rendered by the page's own function: a code block, its HTML shown as text
    rendered = browser.execute_script(
        "const m = addAssistant(); renderText(m.text, arguments[0]); m.done({completion_id: 'shown', choice: 0},"
        " 'v0'); const code = m.text.querySelector('pre.code code'); return [m.text.innerText,"
        " code && code.textContent, getComputedStyle(code.parentElement).fontFamily,"
        " m.text.querySelectorAll('code.inline').length, m.text.querySelectorAll('img, script').length]",
        CODE_ANSWER,
    )
    text, code, font, inline, tags = rendered
    assert code == "<img src=x onerror=\"document.title='pwned'\">\nprint(1 < 2)" and "mono" in font
    assert "```" not in text and "Use this:" in text and inline == 1 and tags == 0
    assert browser.title == "reasoner"

    # Compare: each decoding step slowed so that two 64-token answers take seconds, as a real model's do
    engine = svc.policy.engine

    def slow(requests, on_tokens=None):
        def step(*args):
            time.sleep(0.04)
            on_tokens(*args)

        return type(engine).generate_mixed(engine, requests, step if on_tokens else None)

    engine.generate_mixed = slow
    try:
        browser.find_element(By.ID, "tab-compare").click()
        browser.find_element(By.ID, "compare-input").send_keys("Ann has 3 apples and gets 4. How many now?")
        clicked = time.monotonic()
        browser.find_element(By.ID, "compare-send").click()
        progress = wait.until(lambda d: d.find_element(By.ID, "answer-a").is_displayed() and time.monotonic())
        assert progress - clicked < 2, "the Compare view showed nothing while its answers were generated"
        assert "generating" in browser.find_element(By.ID, "status").text.lower()
        streamed = wait.until(  # part of an answer shows while the choices are still hidden
            lambda d: (
                [
                    e.text
                    for e in d.find_elements(By.CSS_SELECTOR, "#answer-a, #answer-b")
                    if e.text and "generating" not in e.text
                ]
                and not d.find_element(By.ID, "compare-choices").is_displayed()
            )
        )
        assert streamed
        if os.environ.get("REASONER_SCREENSHOT"):  # the Compare view while its answers stream
            browser.save_screenshot(
                re.sub(r"(\.png)?$", "-compare.png", os.environ["REASONER_SCREENSHOT"], count=1)
            )
        wait.until(ec.visibility_of_element_located((By.ID, "choose-a")))
    finally:
        del engine.generate_mixed
    assert assert_legible(browser, "#compare-choices button") == 4
    browser.find_element(By.ID, "choose-b").click()
    wait.until(lambda d: d.find_element(By.ID, "choose-a").get_attribute("disabled"))

    browser.find_element(By.ID, "tab-stats").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#stats-table tbody tr"))
    assert "v0" in browser.find_element(By.CSS_SELECTOR, "#stats-table tbody tr").text

    new = [row for row in svc.store.feedback() if row["id"] not in before]
    assert [(r["kind"], r["rating"]) for r in new] == [("rating", -1), ("rating", 1), ("choice", None)]
    assert "shown" not in {r["completion_id"] for row in new for r in row["responses"]}
    assert new[0]["reason"] == "wrong" and new[0]["comment"] == "not an answer"
    assert new[0]["responses"][0]["messages"][0]["content"] == XSS
    assert new[1]["responses"][0]["messages"][-1]["content"] == "What is 12 + 7?"  # the whole conversation
    choice = new[2]["responses"]
    assert [r["choice"] for r in choice] == [1, 0] and choice[0]["completion_id"] == choice[1][
        "completion_id"
    ]
