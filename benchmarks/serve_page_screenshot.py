"""A screenshot of the web page answering a question: ``reasoner serve`` on a model (in this process, a real
uvicorn server on a free port) and a real headless Chromium (Debian chromium + chromium-driver) typing into it.

    python benchmarks/serve_page_screenshot.py --model runs/smollm2-135m-instruct \
        --out benchmarks/results/serve-page.png [--question "..."]

The page samples as any client does (the server's default temperature); ``--seed`` fixes the server's draws
through ``torch.manual_seed``, so the same model and question give the same picture."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

API_KEY = "screenshot"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--question", action="append", help="asked in turn (default: two questions)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    questions = args.question or [
        "What is the capital of France?",
        "Tom has 3 apples and buys 4 more. How many?",
    ]

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from reasoner.config import ServeConfig
    from reasoner.serve.app import create_app
    from reasoner.serve.server import run_in_thread
    from reasoner.serve.service import ServeService

    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="reasoner-shot-"))
    svc = ServeService.from_config(ServeConfig(db=str(work / "feedback.db"), api_key=API_KEY), args.model)
    handle = run_in_thread(create_app(svc))
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={work / 'profile'}", "--window-size=1000,720"):  # fmt: skip
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
    try:
        browser.get(handle.url + "/")
        key = browser.find_element(By.ID, "api-key")
        key.send_keys(API_KEY)
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        wait = WebDriverWait(browser, 600)
        for i, question in enumerate(questions, start=1):
            browser.find_element(By.ID, "chat-input").send_keys(question)
            browser.find_element(By.ID, "chat-send").click()
            wait.until(lambda d, i=i: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant .thumb-up")) == i)
        browser.find_element(By.CSS_SELECTOR, ".msg.assistant .thumb-up").click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant .thumb-up").get_attribute("disabled")
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(args.out)
        for msg in browser.find_elements(By.CSS_SELECTOR, ".msg"):
            print(repr(msg.text))
    finally:
        browser.quit()
        handle.stop()
        svc.store.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
