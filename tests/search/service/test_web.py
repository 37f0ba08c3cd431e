"""The web page and the dashboard (issue 22, acceptance 5) in headless Chromium, driven by Playwright.

``scripts/serve.py`` runs as a real process. The browser signs in with the token, submits a small
Optuna search from the form, watches its live page reach 100% through the event stream, opens the
report, and opens optuna-dashboard on the study. Playwright drives Debian's chromium (nothing is
downloaded); without it the browser tests skip.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from search.service.db import RESUMABLE, SearchState
from search.service.manager import ARTIFACTS
from search.service.validation import settable_options
from search.service.web import COOKIE, STATIC_DIR, session_valid, session_value
from tests import forkserver
from tests.search.helpers import REPO, subprocess_env
from tests.search.service.helpers import TOKEN, wait_for

pytestmark = pytest.mark.xdist_group("web")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SETTINGS = {"strategy": "optuna", "budget": "0.5", "evaluations": "5"}


def test_session_cookie_is_signed_by_the_token_and_expires() -> None:
    value = session_value(TOKEN, 2_000)
    assert session_valid(TOKEN, value, now=1_999)
    assert not session_valid(TOKEN, value, now=2_001)  # expired
    assert not session_valid("another-token", value, now=1_999)  # a new token voids it
    assert not session_valid(TOKEN, session_value(TOKEN, 3_000).split(".")[0] + "." + value.split(".")[1], now=1)
    for bad in (None, "", "2000", "x.y", "2000.", f"{value}.1", "-1." + "0" * 64):
        assert not session_valid(TOKEN, bad, now=0), bad


def test_the_page_knows_every_artifact() -> None:
    script = (STATIC_DIR / "search.js").read_text()
    block = re.search(r"const ARTIFACTS = \{(.*?)\};", script, re.DOTALL).group(1)
    assert set(re.findall(r'"([\w.]+)": "', block)) == set(ARTIFACTS)


def test_the_page_offers_resume_where_the_service_takes_it() -> None:
    """A failed search offers no Resume: the page's states are the service's (db.RESUMABLE)."""
    script = (STATIC_DIR / "search.js").read_text()
    block = re.search(r"const RESUMABLE = \[(.*?)\];", script, re.DOTALL).group(1)
    assert re.findall(r'"(\w+)"', block) == [str(state) for state in RESUMABLE]
    assert SearchState.FAILED not in RESUMABLE


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``scripts/serve.py`` on a free port with a known token, and Chromium (launched while the server starts).

    The server is stopped with Ctrl-C (SIGINT) at the end: a running search stops with it.
    """
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (make install)")
    amc_cache: Path = request.getfixturevalue("amc_cache")  # only now: a skipped module trains no model
    state = tmp_path_factory.mktemp("web")
    (state / "token").write_text(TOKEN + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = state / "serve.log"
    with log.open("w") as out:
        proc = forkserver.Process([sys.executable, str(REPO / "scripts" / "serve.py"), "--port", str(port),
                                 "--state-dir", str(state), "--token-file", str(state / "token"),
                                 "--poll-interval", "0.1", "--log-level", "warning"],
                                cwd=REPO, env=subprocess_env(amc_cache), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--disable-gpu", "--disable-dev-shm-usage"])
            try:
                wait_for(up, bool, timeout=60, what=f"the server up (log: {log})")
                yield url, browser
            finally:
                browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def watched(served):
    """The browser's session: sign in, submit a search from the form and watch it on its live page to its end.

    While it runs (``--max-concurrent 1``), a second search waits in the queue: its page's buttons
    cancel it, resume it and cancel it again.
    """
    from playwright.sync_api import expect

    server, browser = served
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    missing: list[str] = []  # every answer of 404 (the favicon was one on every page)
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    page.goto(f"{server}/")
    page.fill("#token", "not-the-token")
    page.click("#login-form button")
    expect(page.locator("#login-error")).to_contain_text("Wrong token")
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#token", TOKEN)
    page.click("#login-form button")
    expect(page.locator("#list-empty")).to_be_visible()

    # The form is laid out from the OpenAPI document: search.py's choices; a bad value gets the CLI's reason.
    expect(page.locator("#f-strategy option")).to_have_count(1 + len(settable_options()["strategy"].choices))
    page.fill("#f-budget", "0")
    page.click("#submit")
    expect(page.locator("#submit-error")).to_contain_text("budget: must be a number in (0, 1]")
    assert page.get_attribute("#f-budget", "aria-invalid") == "true"
    page.select_option("#f-strategy", SETTINGS["strategy"])
    page.fill("#f-budget", SETTINGS["budget"])
    page.fill("#f-evaluations", SETTINGS["evaluations"])
    # No deploy rung (an advanced option, folded away): the search ends before the queued one below is handled.
    page.locator("#f-select").evaluate("input => { input.value = \"none\"; }")
    page.check("#f-no_export")
    page.click("#submit")
    page.wait_for_url(re.compile(r"#/searches/[0-9a-f]{16}$"))
    search_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#s-state")).to_have_text("running", timeout=60_000)

    response = httpx.post(f"{server}/v1/searches", json={"strategy": "random", "evaluations": 5, "no_export": True},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    queued = response.json()["id"]
    page.goto(f"{server}/#/searches/{queued}")
    expect(page.locator("#s-id")).to_have_text(queued)
    for action, state in (("#cancel", "cancelled"), ("#resume", re.compile("queued|running")),
                          ("#cancel", "cancelled")):
        page.click(action)
        expect(page.locator("#s-state")).to_have_text(state, timeout=60_000)
    # The page shows the state the cancel left, not one an older event or read carried (they used to race).
    expect(page.locator("#cancel")).to_be_disabled()
    expect(page.locator("#resume")).to_be_enabled()
    page.wait_for_timeout(1500)  # an event or read still in flight when cancel answered has landed by now
    assert page.text_content("#s-state") == "cancelled" and page.is_disabled("#cancel")

    page.goto(f"{server}/#/searches/{search_id}")
    expect(page.locator("#s-state")).to_have_text("succeeded", timeout=90_000)
    yield server, context, page, search_id
    assert errors == []
    assert missing == []
    context.close()


@pytest.mark.timeout(300)  # its setup may train the session's cnn first
def test_submit_from_the_form_watch_progress_and_open_the_report(watched) -> None:
    from playwright.sync_api import expect

    server, _, page, search_id = watched
    search = httpx.get(f"{server}/v1/searches/{search_id}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert search["settings"] == {"strategy": "optuna", "budget": 0.5, "evaluations": 5, "select": "none",
                                  "no_export": True}
    expect(page.locator("#s-percent")).to_have_text("100%")
    assert page.locator("#s-progress").evaluate("bar => bar.value") == 1
    # The form's search runs with the defaults: its 5 evaluations after the two baselines (issue 31).
    assert (page.text_content("#s-done"), page.text_content("#s-total")) == ("7", "7")
    assert page.text_content("#s-best-accuracy") == f"{search['best']['accuracy']:.4f}"
    # Every evaluation came through the event stream, newest first.
    rows = page.locator("#evaluations tbody tr")
    assert [rows.nth(i).locator("td").first.text_content() for i in range(rows.count())] == \
        ["6", "5", "4", "3", "2", "1", "0"]
    assert page.is_disabled("#cancel") and page.is_disabled("#resume")  # succeeded: neither applies

    with page.expect_popup() as popup_info:
        page.click("a[data-artifact='report.html']")
    report = popup_info.value
    report.wait_for_url(re.compile(r"^blob:"))
    title = "optuna on cnn/digits, budget 0.5 flops"  # search.outputs' title for these settings
    expect(report.locator("h1")).to_have_text(title)
    assert report.title() == title
    expect(report.locator("h2", has_text="Base vs pruned")).to_be_visible()
    assert report.locator("img").evaluate("img => img.complete && img.naturalWidth > 100")  # the embedded figure
    assert "sans-serif" in report.evaluate("getComputedStyle(document.body).fontFamily")  # its own style applies
    report.close()

    # Only the files written are offered: no pruned.pt2 (no_export), no pareto.json (TPE), no pruned.onnx.
    listed = page.locator("#artifacts a[data-artifact]")
    expect(listed).to_have_count(7)
    assert set(listed.all_text_contents()) == {"policy.json", "history.csv", "report.html", "report.png",
                                               "config.json", "run.log", "service.log"}

    page.click("nav >> text=Searches")
    row = page.locator(f"#searches tr[data-id='{search_id}']")
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("100%")
    expect(row).to_contain_text(f"{search['best']['accuracy']:.4f}")


@pytest.mark.timeout(300)
def test_the_search_view_shows_the_curve_the_widths_and_the_comparison(watched) -> None:
    """What report.html shows (issue 32, point 9): the search curve with the best so far, the per-layer widths of
    the best policy against base and uniform, base/best/uniform accuracy, the time, the best row marked."""
    from playwright.sync_api import expect

    server, _, page, search_id = watched
    headers = {"Authorization": f"Bearer {TOKEN}"}
    search = httpx.get(f"{server}/v1/searches/{search_id}", headers=headers).json()
    policy = httpx.get(f"{server}/v1/searches/{search_id}/artifacts/policy.json", headers=headers).json()
    best = search["best"]
    page.goto(f"{server}/#/searches/{search_id}")
    expect(page.locator("#s-state")).to_have_text("succeeded")
    expect(page.locator("#curve svg .points circle")).to_have_count(7)  # one point per candidate: 2 baselines + 5
    expect(page.locator("#curve svg polyline.best-line")).to_have_count(1)
    expect(page.locator("#curve svg circle.best-point")).to_have_count(1)
    layers = page.locator("#widths svg g.layer")
    expect(layers).to_have_count(len(policy["keep"]))
    assert [layers.nth(i).get_attribute("data-layer") for i in range(layers.count())] == list(policy["keep"])
    expect(page.locator("#widths svg g.layer rect.best-bar")).to_have_count(len(policy["keep"]))
    expect(page.locator("#widths svg g.layer line.uniform-mark")).to_have_count(len(policy["keep"]))
    first = next(iter(policy["keep"]))
    assert f"best {policy['channels'][first]}" in page.text_content(f"#widths g.layer[data-layer='{first}'] title")
    metrics = policy["metrics"]
    for model, val, test in (("base", "base_val_accuracy", "base_test_accuracy"),
                             ("best", "val_accuracy", "test_accuracy"),
                             ("uniform", "uniform_val_accuracy", "uniform_test_accuracy")):
        cells = page.locator(f"#comparison tr[data-model='{model}'] td")
        expect(cells.nth(0)).to_have_text(f"{metrics[val]:.4f}")
        expect(cells.nth(1)).to_have_text(f"{metrics[test]:.4f}")
    expect(page.locator("#s-elapsed")).to_have_text(re.compile(r"^\d+ (s|min)"))
    assert page.is_hidden("#s-remaining-part")  # finished: no estimate
    expect(page.locator("#s-best-index")).to_have_text(str(best["index"]))
    expect(page.locator("#s-best-trial")).to_have_text(f"(Optuna trial {best['step']})")
    marked = page.locator("#evaluations tr.best")
    expect(marked).to_have_count(1)
    assert marked.get_attribute("data-index") == str(best["index"])


@pytest.mark.timeout(300)
def test_a_failed_search_offers_no_resume_and_delete_works(watched) -> None:
    from playwright.sync_api import expect

    server, _, page, _ = watched
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(f"{server}/v1/searches", headers=headers,
                          json={"strategy": "random", "evaluations": 3, "no_export": True,
                                "checkpoint": "/nonexistent/base.pt"})  # accepted; the run cannot load it
    failed = response.json()["id"]
    page.goto(f"{server}/#/searches/{failed}")
    expect(page.locator("#s-state")).to_have_text("failed", timeout=90_000)
    expect(page.locator("#s-error")).to_contain_text("/nonexistent/base.pt")
    expect(page.locator("#resume")).to_be_hidden()  # it would fail again
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#delete")).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    page.wait_for_url(re.compile(r"#/$"))
    expect(page.locator("#list-view")).to_be_visible()
    expect(page.locator(f"#searches tr[data-id='{failed}']")).to_have_count(0)
    assert httpx.get(f"{server}/v1/searches/{failed}", headers=headers).status_code == 404


@pytest.mark.timeout(300)
def test_dashboard_shows_the_study_behind_the_session_cookie(watched) -> None:
    from playwright.sync_api import expect

    server, context, page, search_id = watched
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    assert page.evaluate("document.cookie") == ""  # no script of the page can read it
    jar = {COOKIE: cookie["value"]}
    assert httpx.get(f"{server}/dashboard/").status_code == 401
    assert httpx.get(f"{server}/api/studies", cookies={COOKIE: session_value(TOKEN, int(time.time()) - 1)}) \
        .status_code == 401  # expired
    studies = httpx.get(f"{server}/api/studies", cookies=jar).json()["study_summaries"]
    assert [s["study_name"] for s in studies] == [f"amc-search/{search_id}"]
    # The cookie opens the (read-only) dashboard and nothing else: the API still wants the header.
    assert httpx.post(f"{server}/api/studies", cookies=jar, json={"study_name": "x", "directions": ["maximize"]}) \
        .status_code == 405
    assert httpx.get(f"{server}/v1/searches", cookies=jar).status_code == 401

    dashboard = context.new_page()
    dashboard.goto(f"{server}/dashboard/")
    expect(dashboard.get_by_text(f"amc-search/{search_id}")).to_be_visible(timeout=30_000)
    # Read-only: the controls that would answer 405 are on its page, and hidden.
    for control in ('button:has(svg[data-testid="AddBoxIcon"])', "[aria-label='delete study']"):
        expect(dashboard.locator(control)).not_to_have_count(0)
        for i in range(dashboard.locator(control).count()):
            expect(dashboard.locator(control).nth(i)).to_be_hidden()
    assert httpx.get(f"{server}/favicon.ico").status_code == 200
    dashboard.close()

    page.click("#sign-out")
    expect(page.locator("#login-view")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    wait_for(context.cookies, lambda cookies: all(c["name"] != COOKIE for c in cookies), timeout=10,
             what="the dashboard cookie gone")
    assert json.loads(httpx.get(f"{server}/api/studies").text)["detail"].startswith("sign in")
