#!/usr/bin/env python3
"""The apology portal in a real browser: headless Chromium (Debian's
`chromium`, driven by Playwright) against a real giftxd process (embedded
ledger, demo campaigns) and a real giftx-portal process.

Covers: each option of the demo campaign; the select gift's second step;
double click on confirm -> one exchange; back + resubmit -> the same
result; wrong login key -> message, then the lockout message; an expired
code; Japanese and English (Accept-Language and the switch); the mailed
option end to end (address -> shipments export row with campaign, batch,
serial, address -> mark shipped with giftctl -> the holder sees it).
Throughout: no code, login key or address in any URL, cookie or log line
of either server; every input labelled, <html lang> set, no console
errors; security headers and no-store on result pages.

Environment: GIFTX_BIN (directory of giftxd, giftctl, giftx-portal;
default target/debug), CHROMIUM (default /usr/bin/chromium),
PORTAL_SCREENSHOTS (a directory: also save the README screenshots there).
"""

import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone

from playwright.sync_api import sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, os.environ.get("GIFTX_BIN", "target/debug"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCKOUT = 3
BATCH = "portal-1"
EXPIRING = "portal-expiring"

# Everything that must never show in a URL, a cookie or a log line.
SECRETS = set()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remember(*values):
    for v in values:
        for form in (v, v.replace("-", ""), v.lower(), v.replace("-", "").lower()):
            if len(form) >= 6:
                SECRETS.add(form)


def fail(msg):
    raise AssertionError(msg)


def check(cond, msg):
    if not cond:
        fail(msg)


class Stack:
    """giftxd + giftx-portal processes, stderr captured to files."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.grpc = free_port()
        self.http = free_port()
        self.addr = f"http://127.0.0.1:{self.grpc}"
        self.base = f"http://127.0.0.1:{self.http}"
        self.procs = []
        self.logs = {}

    def spawn(self, name, argv, env):
        log = open(os.path.join(self.tmp, f"{name}.log"), "wb")
        self.logs[name] = log.name
        e = dict(os.environ)
        e.update(env)
        p = subprocess.Popen(argv, env=e, stdout=log, stderr=log, cwd=self.tmp)
        self.procs.append(p)
        return p

    def start(self):
        self.spawn(
            "giftxd",
            [os.path.join(BIN, "giftxd")],
            {
                "GIFTX_LISTEN": f"127.0.0.1:{self.grpc}",
                "GIFTX_LOCKOUT_THRESHOLD": str(LOCKOUT),
                "GIFTX_LOG": "info",
            },
        )
        deadline = time.time() + 60
        while True:
            r = subprocess.run(
                [os.path.join(BIN, "giftctl"), "--addr", self.addr, "campaign", "show", "demo-2014"],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                break
            if time.time() > deadline:
                fail(f"giftxd did not come up: {r.stderr}")
            time.sleep(0.2)
        self.spawn(
            "portal",
            [os.path.join(BIN, "giftx-portal")],
            {
                "GIFTX_PORTAL_LISTEN": f"127.0.0.1:{self.http}",
                "GIFTX_ADDR": self.addr,
                "GIFTX_LOG": "info",
            },
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1).read()
                break
            except OSError:
                if time.time() > deadline:
                    fail("giftx-portal did not come up")
                time.sleep(0.1)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def giftctl(self, *args):
        r = subprocess.run(
            [os.path.join(BIN, "giftctl"), "--addr", self.addr, *args],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            fail(f"giftctl {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def issue(self, campaign, batch, count):
        out = os.path.join(self.tmp, f"{campaign}-{batch}.csv")
        self.giftctl("issue", "--campaign", campaign, "--count", str(count), "--batch", batch, "--out", out)
        with open(out, newline="") as f:
            rows = [
                {"serial": int(r["serial"]), "code": r["code"], "login_key": r["login_key"]}
                for r in csv.DictReader(f)
            ]
        for r in rows:
            remember(r["code"], r["login_key"])
        return rows


class Browser:
    """One Chromium; each journey in a fresh context (its own cookies)."""

    def __init__(self, pw, stack):
        self.browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        self.stack = stack
        self.urls = []
        self.console_errors = []
        self.contexts = []
        self.pages_checked = 0

    def page(self, locale="ja-JP"):
        ctx = self.browser.new_context(locale=locale, viewport={"width": 420, "height": 860})
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.on("request", lambda r: self.urls.append(r.url))
        page.on(
            "console",
            lambda m: self.console_errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        page.on("response", self.check_headers)
        return page

    def check_headers(self, resp):
        h = resp.headers
        if not resp.url.startswith(self.stack.base):
            return
        check("default-src 'self'" in h.get("content-security-policy", ""), f"CSP on {resp.url}")
        check("frame-ancestors 'none'" in h.get("content-security-policy", ""), f"CSP frames on {resp.url}")
        check(h.get("x-frame-options") == "DENY", f"X-Frame-Options on {resp.url}")
        check(h.get("referrer-policy") == "no-referrer", f"Referrer-Policy on {resp.url}")
        check(h.get("x-content-type-options") == "nosniff", f"nosniff on {resp.url}")
        if resp.url.endswith("/exchange") and resp.request.method == "POST":
            check(h.get("cache-control") == "no-store", f"result page cacheable: {h.get('cache-control')}")

    def audit(self, page, lang):
        """Lighthouse-style basics of the page on screen."""
        self.pages_checked += 1
        check(page.evaluate("document.documentElement.lang") == lang, f"<html lang> is not {lang} on {page.url}")
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input, textarea, select')]
                .filter(e => e.type !== 'hidden')
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                .map(e => e.name || e.id)"""
        )
        check(not unlabelled, f"unlabelled inputs on {page.url}: {unlabelled}")
        check(page.title().strip() != "", "page without a title")

    def close(self):
        for c in self.contexts:
            for ck in c.cookies():
                check(ck["name"] in ("giftx_csrf", "giftx_lang"), f"unexpected cookie {ck['name']}")
                for s in SECRETS:
                    check(s not in ck["value"], "a secret in a cookie")
            c.close()
        self.browser.close()


# ---- journey steps -------------------------------------------------------------


def submit(page, selector):
    with page.expect_navigation():
        page.click(selector)


def enter(b, page, row, lang="ja", select=False, login_key=None):
    page.goto(b.stack.base + ("/select" if select else "/"))
    b.audit(page, lang)
    page.fill("#code", row["code"])
    page.fill("#login_key", login_key or row["login_key"])
    submit(page, "form[action='/verify'] button[type=submit]")
    b.audit(page, lang)


def choose(b, page, option, lang="ja", address=None):
    page.check(f"#option-{option}")
    if address is not None:
        page.fill("#shipping_address", address)
    submit(page, "form[action='/choose'] button[type=submit]")
    b.audit(page, lang)
    check(page.locator("#confirm").count() == 1, f"no confirm page after choosing {option}: {page.content()[:2000]}")


def confirm(b, page, lang="ja"):
    submit(page, "#confirm")
    b.audit(page, lang)


def deliverable(page):
    loc = page.locator("#deliverable-code")
    check(loc.count() == 1, f"no deliverable on the result page: {page.inner_text('main')}")
    text = loc.inner_text().strip()
    check(text != "", "empty deliverable")
    return text


def reference(page):
    # The exchange reference: the last <dd> of the result's reference row.
    return page.locator("dt:has-text('受付番号') + dd, dt:has-text('Reference') + dd").last.inner_text().strip()


# ---- the tests ---------------------------------------------------------------------


def test_each_option_and_the_select_gift(b, codes, results):
    """Each option of demo-2014 (Japanese); the select gift's second step."""
    address = "〒100-0001\n東京都千代田区千代田1-1\n山田 太郎 様"
    remember(*address.split("\n"))
    for option, row in zip(["select-gift", "book-card", "donation"], codes):
        page = b.page()
        enter(b, page, row)
        check("ギフトを選んでください" in page.inner_text("h1"), "options page expected")
        choose(b, page, option, address=address if option == "book-card" else None)
        confirm(b, page)
        check("交換が完了しました" in page.inner_text("h1"), f"{option}: {page.inner_text('main')}")
        results[option] = {"row": row, "deliverable": deliverable(page), "reference": reference(page)}
        if option == "select-gift":
            results[option]["pin"] = page.locator("#deliverable-pin").inner_text().strip()
        if option == "book-card":
            check(page.locator("#shipment-waiting").count() == 1, "a new shipment is not yet mailed")
            results[option]["address"] = address
        page.close()

    # The select gift's own page: gift ID + management number -> e-money.
    gift_id, pin = results["select-gift"]["deliverable"], results["select-gift"]["pin"]
    remember(gift_id, pin)
    page = b.page()
    page.goto(b.stack.base + "/")
    page.click("a[href='/select']")
    page.wait_for_load_state()
    b.audit(page, "ja")
    check("選べるギフト" in page.inner_text("h1"), "select page")
    check("ギフトID" in page.inner_text("main"), "select page labels")
    page.fill("#code", gift_id)
    page.fill("#login_key", pin)
    submit(page, "form[action='/verify'] button[type=submit]")
    b.audit(page, "ja")
    names = page.locator("input[name=option_id]").evaluate_all("es => es.map(e => e.value)")
    check(names == ["emoney-a", "emoney-b", "giftcode-c"], f"select gift options: {names}")
    choose(b, page, "emoney-a")
    confirm(b, page)
    results["emoney-a"] = deliverable(page)
    page.close()


def test_double_click_is_one_exchange(b, row, portal_log):
    page = b.page()
    enter(b, page, row)
    choose(b, page, "donation")
    before = open(portal_log, encoding="utf-8", errors="replace").read().count("CODE_ALREADY_REDEEMED")
    form = {
        "csrf": page.locator("form[action='/exchange'] input[name=csrf]").input_value(),
        "state": page.locator("form[action='/exchange'] input[name=state]").input_value(),
    }
    posts = []
    page.on("request", lambda r: posts.append(r) if r.url.endswith("/exchange") else None)
    page.dblclick("#confirm")
    page.wait_for_selector("#deliverable-code")
    page.wait_for_load_state()
    b.audit(page, "ja")
    check(len(posts) >= 1, "the double click sent no exchange request")
    check(page.locator(".note").count() == 0, "double click showed an already-redeemed result")
    ref = reference(page)
    code = deliverable(page)
    # Chromium may fold a double click into one request; a second
    # submission of the same confirm form (as another click, a slow
    # network's retry) must give the same exchange, not a second one.
    again = page.context.request.post(b.stack.base + "/exchange", form=form)
    html = again.text()
    check(again.status == 200 and ref in html and code in html, "resubmitting the form gave another result")
    check('class="note"' not in html, "resubmitting the form was refused as already redeemed")
    shown = b.stack.giftctl("--json", "show-exchange", row["code"], row["login_key"])
    check(ref in shown, f"page reference {ref} is not the code's exchange: {shown}")
    time.sleep(0.3)
    log = open(portal_log, encoding="utf-8", errors="replace").read()
    check(log.count("CODE_ALREADY_REDEEMED") == before, "a second exchange was attempted with a new request id")
    page.close()


def test_back_and_resubmit_shows_the_same_result(b, row):
    page = b.page()
    enter(b, page, row)
    choose(b, page, "donation")
    confirm(b, page)
    first = (deliverable(page), reference(page))
    page.go_back()
    page.wait_for_load_state()
    check(page.locator("#confirm").count() == 1, "back did not return to the confirm page")
    confirm(b, page)
    again = (deliverable(page), reference(page))
    check(again == first, f"resubmit showed another result: {first} vs {again}")
    check(page.locator(".note").count() == 0, "resubmit was treated as a new exchange")
    # A refresh of the result page (re-POST) is the same too.
    page.reload()
    page.wait_for_load_state()
    check((deliverable(page), reference(page)) == first, "refresh showed another result")
    page.close()


def test_wrong_login_key_then_lockout(b, row, other_row):
    page = b.page()
    seen_mismatch = False
    for attempt in range(1, LOCKOUT + 2):
        enter(b, page, row, login_key=other_row["login_key"])
        text = page.inner_text("main")
        if "ロックされています" in text:
            check(seen_mismatch, "locked without a wrong-key message first")
            check("ロック解除の時刻" in text and "日本時間" in text, f"lockout without its time: {text}")
            check(attempt >= LOCKOUT, f"locked after {attempt} tries (threshold {LOCKOUT})")
            break
        check("ギフトコードまたはログインキーが違います" in text, f"attempt {attempt}: {text}")
        seen_mismatch = True
    else:
        fail("never locked")
    # The right key is locked out too, with the same message.
    enter(b, page, row)
    check("ロックされています" in page.inner_text("main"), "right key not locked out")
    # A typo is caught by the check character before any call.
    typo = row["code"][:-1] + ("0" if row["code"][-1] != "0" else "1")
    remember(typo)
    enter(b, page, {"code": typo, "login_key": row["login_key"]})
    check("入力間違い" in page.inner_text("#code-error"), "typo not caught")
    page.close()


def test_english_and_the_switch(b, row):
    page = b.page(locale="en-US")
    page.goto(b.stack.base + "/")
    b.audit(page, "en")
    check(page.inner_text("h1") == "Receive your gift", "English by Accept-Language")
    enter(b, page, row, lang="en")
    check("Choose your gift" in page.inner_text("h1"), "English options page")
    choose(b, page, "select-gift", lang="en")
    confirm(b, page, lang="en")
    check("Your gift is ready" in page.inner_text("h1"), "English result")
    check("Gift ID" in page.inner_text("main"), "English deliverable labels")
    # The switch: Japanese from now on, in spite of Accept-Language.
    page.goto(b.stack.base + "/")
    with page.expect_navigation():
        page.click("header a[href='/lang/ja']")
    b.audit(page, "ja")
    check(page.inner_text("h1") == "ギフトの受け取り", "switch to Japanese")
    page.reload()
    b.audit(page, "ja")
    langs = [c["value"] for c in page.context.cookies() if c["name"] == "giftx_lang"]
    check(langs == ["ja"], f"language cookie: {langs}")
    page.close()


def test_mailed_option_end_to_end(b, results, tmp):
    shipped = results["book-card"]
    row, ref = shipped["row"], shipped["deliverable"]
    out = os.path.join(tmp, "to-mail.csv")
    b.stack.giftctl("shipments", "export", "--provider", "book-card", "--out", out)
    with open(out, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["reference"] == ref]
    check(len(rows) == 1, f"shipment {ref} not exported")
    r = rows[0]
    check(r["campaign"] == "campaigns/demo-2014", f"campaign {r['campaign']}")
    check(r["batch"] == f"campaigns/demo-2014/batches/{BATCH}", f"batch {r['batch']}")
    check(r["serial"] == str(row["serial"]), f"serial {r['serial']} != {row['serial']}")
    check(r["shipping_address"] == shipped["address"], f"address {r['shipping_address']!r}")
    b.stack.giftctl("shipments", "mark-shipped", "--provider", "book-card", "--tracking", "JP-PORTAL-1", "--file", out)
    # The holder comes back with the same code and login key.
    page = b.page()
    enter(b, page, row)
    check(deliverable(page) == ref, "the holder's shipment reference")
    note = page.inner_text("#shipped")
    check("発送済み" in note and "JP-PORTAL-1" in note, f"holder does not see the mailing: {note}")
    page.close()


def test_expired_code(b, row, deadline):
    wait = (deadline - datetime.now(timezone.utc)).total_seconds() + 1.0
    if wait > 0:
        time.sleep(wait)
    page = b.page()
    enter(b, page, row)
    text = page.inner_text("main")
    check("受付期限は過ぎています" in text, f"expired code: {text}")
    page.close()
    page = b.page(locale="en")
    enter(b, page, row, lang="en")
    check("deadline of this gift code has passed" in page.inner_text("main"), "expired in English")
    page.close()


def check_logs_and_urls(b, stack):
    for url in b.urls:
        for s in SECRETS:
            check(s not in url and s not in urllib.request.unquote(url), f"a secret in URL {url}")
    for name, path in stack.logs.items():
        text = open(path, encoding="utf-8", errors="replace").read()
        check(text.strip() != "", f"{name} wrote no log at all")
        for s in SECRETS:
            check(s not in text, f"a secret in the {name} log")
    check(not b.console_errors, f"console errors: {b.console_errors}")


def screenshots(b, codes, directory):
    os.makedirs(directory, exist_ok=True)
    for lang, locale in (("ja", "ja-JP"), ("en", "en-US")):
        page = b.page(locale=locale)
        page.set_viewport_size({"width": 420, "height": 900})
        row = codes.pop()
        enter(b, page, row, lang=lang)
        page.screenshot(path=os.path.join(directory, f"portal-options-{lang}.png"), full_page=True)
        choose(b, page, "select-gift", lang=lang)
        confirm(b, page, lang=lang)
        page.screenshot(path=os.path.join(directory, f"portal-result-{lang}.png"), full_page=True)
        page.close()


def main():
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="giftx-portal-test-") as tmp:
        stack = Stack(tmp)
        try:
            stack.start()
            codes = stack.issue("demo-2014", BATCH, 16)
            deadline = (datetime.now(timezone.utc) + timedelta(seconds=12)).replace(microsecond=0)
            stack.giftctl(
                "campaign", "create", EXPIRING, "--display-name", "Expiring", "--face-value", "500",
                "--currency", "JPY", "--deadline", deadline.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "--option", "id=donation,provider=donation,name=Donation",
            )
            expiring = stack.issue(EXPIRING, "e1", 1)[0]
            results = {}
            with sync_playwright() as pw:
                b = Browser(pw, stack)
                tests = [
                    ("each option of demo-2014 and the select gift's second step",
                     lambda: test_each_option_and_the_select_gift(b, codes[0:3], results)),
                    ("double click on confirm is one exchange",
                     lambda: test_double_click_is_one_exchange(b, codes[3], stack.logs["portal"])),
                    ("back + resubmit shows the same result",
                     lambda: test_back_and_resubmit_shows_the_same_result(b, codes[4])),
                    ("wrong login key, then the lockout",
                     lambda: test_wrong_login_key_then_lockout(b, codes[5], codes[6])),
                    ("English, and the language switch",
                     lambda: test_english_and_the_switch(b, codes[7])),
                    ("the mailed option end to end",
                     lambda: test_mailed_option_end_to_end(b, results, tmp)),
                    ("an expired code", lambda: test_expired_code(b, expiring, deadline)),
                ]
                if os.environ.get("PORTAL_SCREENSHOTS"):
                    tests.append(("screenshots",
                                  lambda: screenshots(b, codes[8:], os.environ["PORTAL_SCREENSHOTS"])))
                for name, fn in tests:
                    t0 = time.time()
                    fn()
                    print(f"ok   {name} ({time.time() - t0:.1f} s)", flush=True)
                b.close()
                check_logs_and_urls(b, stack)
                print(
                    f"ok   no code, login key or address in {len(b.urls)} URLs, the cookies, or the "
                    f"giftxd and portal logs; {b.pages_checked} pages labelled, with <html lang>, "
                    "without console errors",
                    flush=True,
                )
        except Exception:
            for name, path in stack.logs.items():
                sys.stderr.write(f"---- {name} log (tail) ----\n")
                sys.stderr.write("".join(open(path, errors="replace").readlines()[-40:]))
            raise
        finally:
            stack.stop()
    print(f"browser tests passed in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
