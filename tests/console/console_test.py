"""The keygate console in a real headless Chromium (Debian's chromium and
chromium-driver) through Selenium: sign in, create an account and a key, the key
shown once and gone after a reload, rotate, revoke (the gateway refuses the key
within a second), the usage chart after traffic, the audit log.

Run by bins/keygate's tests with KG_ADMIN_URL, KG_GATEWAY_URL and KG_TOKEN set;
KG_SCREENSHOTS names a directory for screenshots of the main pages."""

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ADMIN = os.environ["KG_ADMIN_URL"]
GATEWAY = os.environ["KG_GATEWAY_URL"]
TOKEN = os.environ["KG_TOKEN"]
SHOTS = os.environ.get("KG_SCREENSHOTS")


def chat(key):
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        GATEWAY + "/v1/chat/completions",
        data=body,
        headers={"authorization": "Bearer " + key, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    started = time.monotonic()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="kg-chromium-")
    for flag in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1200,900", "--user-data-dir=" + profile,
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, 10)
    shot = lambda name: SHOTS and driver.save_screenshot(os.path.join(SHOTS, name))
    try:
        driver.get(ADMIN + "/")
        token = wait.until(EC.visibility_of_element_located((By.ID, "token")))
        token.send_keys(TOKEN, Keys.ENTER)  # keyboard only
        wait.until(EC.visibility_of_element_located((By.ID, "nav")))
        wait.until(EC.presence_of_element_located((By.ID, "create-account")))
        assert TOKEN not in driver.page_source

        driver.find_element(By.ID, "account-name").send_keys("Acme")
        balance = driver.find_element(By.ID, "account-balance")
        balance.clear()
        balance.send_keys("25", Keys.ENTER)
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "Account created"))
        assert "Acme" in driver.find_element(By.ID, "view").text
        shot("console-accounts.png")

        driver.find_element(By.CSS_SELECTOR, "nav button[data-view=keys]").click()
        wait.until(EC.presence_of_element_located((By.ID, "create-key")))
        driver.find_element(By.ID, "key-name").send_keys("web", Keys.ENTER)
        secret_box = wait.until(EC.visibility_of_element_located((By.ID, "new-secret")))
        key = secret_box.get_attribute("value")
        assert key.startswith("kg_sk_"), key
        assert "cannot be shown again" in driver.find_element(By.CSS_SELECTOR, ".secret").text
        driver.find_element(By.ID, "copy-secret").click()
        assert chat(key) == 200

        # Gone after a reload: the page never had it from the server again.
        driver.refresh()
        wait.until(EC.presence_of_element_located((By.ID, "create-key")))
        assert not driver.find_elements(By.ID, "new-secret")
        assert key not in driver.page_source
        assert key[6:20] not in driver.page_source
        shot("console-keys.png")

        # Rotate with a grace period: a new key, shown once.
        old_id = driver.find_element(By.CSS_SELECTOR, "button.rotate:not([disabled])").get_attribute("data-id")
        driver.find_element(By.CSS_SELECTOR, f"button.rotate[data-id='{old_id}']").click()
        prompt = wait.until(EC.alert_is_present())
        prompt.send_keys("1h")
        prompt.accept()
        rotated = wait.until(EC.visibility_of_element_located((By.ID, "new-secret"))).get_attribute("value")
        assert rotated.startswith("kg_sk_") and rotated != key
        assert chat(rotated) == 200 and chat(key) == 200  # the old one works for its grace

        # Revoke the new key, with a confirmation: the gateway refuses it within a second.
        new_id = [b.get_attribute("data-id") for b in driver.find_elements(By.CSS_SELECTOR, "button.revoke:not([disabled])") if b.get_attribute("data-id") != old_id][0]
        driver.find_element(By.CSS_SELECTOR, f"button.revoke[data-id='{new_id}']").click()
        wait.until(EC.alert_is_present()).accept()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "revoked"))
        since = time.monotonic()
        while chat(rotated) != 401:
            assert time.monotonic() - since < 1.0, "revocation not seen within 1 s"
            time.sleep(0.025)

        # The usage chart after traffic (usage records are written in batches).
        driver.find_element(By.CSS_SELECTOR, "nav button[data-view=usage]").click()
        deadline = time.monotonic() + 15
        while True:
            wait.until(EC.presence_of_element_located((By.ID, "usage-chart")))
            bars = driver.find_elements(By.CSS_SELECTOR, "#usage-chart rect")
            if bars or time.monotonic() > deadline:
                break
            time.sleep(0.3)
            driver.find_element(By.CSS_SELECTOR, "nav button[data-view=usage]").click()
        assert bars, "no bar in the usage chart"
        assert "gpt-4o-mini" in driver.find_element(By.ID, "view").text
        shot("console-usage.png")

        driver.find_element(By.CSS_SELECTOR, "nav button[data-view=audit]").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "view"), "key.revoke"))
        assert key not in driver.page_source and rotated not in driver.page_source
        shot("console-audit.png")
    finally:
        driver.quit()
    print(f"console test passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
