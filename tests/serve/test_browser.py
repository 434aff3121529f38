"""A real headless Chromium (Debian chromium + chromium-driver, driven by selenium; nothing downloaded) uses
the page: chats, clicks a thumb and a side-by-side choice, and the rows are in the store. User text with HTML
in it shows as text.

``REASONER_SCREENSHOT=PATH`` also saves a screenshot of the page there (the README's picture).
"""

from __future__ import annotations

import os
import shutil
import tempfile

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
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2)
    browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")[1].click()
    wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")[1].get_attribute("disabled")
    )
    if os.environ.get("REASONER_SCREENSHOT"):
        browser.save_screenshot(os.environ["REASONER_SCREENSHOT"])

    browser.find_element(By.ID, "tab-compare").click()
    browser.find_element(By.ID, "compare-input").send_keys("Ann has 3 apples and gets 4. How many now?")
    browser.find_element(By.ID, "compare-send").click()
    wait.until(ec.visibility_of_element_located((By.ID, "choose-a")))
    browser.find_element(By.ID, "choose-b").click()
    wait.until(lambda d: d.find_element(By.ID, "choose-a").get_attribute("disabled"))

    browser.find_element(By.ID, "tab-stats").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#stats-table tbody tr"))
    assert "v0" in browser.find_element(By.CSS_SELECTOR, "#stats-table tbody tr").text

    new = [row for row in svc.store.feedback() if row["id"] not in before]
    assert [(r["kind"], r["rating"]) for r in new] == [("rating", -1), ("rating", 1), ("choice", None)]
    assert new[0]["reason"] == "wrong" and new[0]["comment"] == "not an answer"
    assert new[0]["responses"][0]["messages"][0]["content"] == XSS
    assert new[1]["responses"][0]["messages"][-1]["content"] == "What is 12 + 7?"  # the whole conversation
    choice = new[2]["responses"]
    assert [r["choice"] for r in choice] == [1, 0] and choice[0]["completion_id"] == choice[1][
        "completion_id"
    ]
