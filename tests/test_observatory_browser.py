"""The observatory in a real browser: Debian's chromium, driven through chromium-driver by
selenium, against two real `qudag-node run` processes on 127.0.0.1.

The page must load with no console error, show the node's peer (and who attests whom) and a
template's lineage (with an ancestor, so the genealogy really went through the ledger), fetch
nothing from any origin but the node, and a screenshot is saved (`tmp_path/observatory.png`; set
QUDAG_OBSERVATORY_PNG=path to also write a small palette copy there: docs/observatory.png
is made that way).

Without chromium, chromium-driver or selenium the test is skipped, saying which is missing,
unless QUDAG_REQUIRE_BROWSER=1 (CI sets it): then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qudag.node.commands.testnet import free_loopback_port
from qudag.node.ops.cluster import NodeProcess, start_nodes, stop_all

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]

MAX_PNG_BYTES = 200_000
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


def _browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skip (or fail, QUDAG_REQUIRE_BROWSER=1) if absent."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "the selenium package (pip install -e '.[dev]')"
    else:
        missing = ""
    if chromium is None:
        missing = "chromium (apt-get install chromium)"
    elif driver is None:
        missing = "chromedriver (apt-get install chromium-driver)"
    if missing:
        reason = f"the browser test needs {missing}"
        if os.environ.get("QUDAG_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and QUDAG_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    assert chromium is not None and driver is not None
    return chromium, driver


def get_json(node: NodeProcess, path: str) -> Any:
    with _OPENER.open(f"http://{node.http}{path}", timeout=3.0) as reply:
        return json.loads(reply.read())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def node_args(seed: int) -> list[str]:
    return [
        *("--task", "xor", "--population", "16", "--generations", "60"),
        *("--publish-every", "2", "--migrants", "4", "--seed", str(seed)),
        *("--heads-interval", "1", "--reeval-budget-ms", "300", "--when-done", "serve"),
    ]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    from qudag.node.commands.testnet import bootstrap_peer_id

    port = free_loopback_port()
    seed = f"/ip4/127.0.0.1/tcp/{port}/p2p/{bootstrap_peer_id(tmp_path / 'node0')}"
    started = start_nodes(
        [
            (
                "node0",
                tmp_path / "node0",
                [*node_args(1), "--listen", f"/ip4/127.0.0.1/tcp/{port}"],
                [],
            ),
            ("node1", tmp_path / "node1", node_args(2), [seed]),
        ]
    )
    try:
        yield started
    finally:
        stop_all(started)


def lineage_with_ancestor(node: NodeProcess) -> bool:
    """The template the page shows first (the best ranked one with genetic parents) has an
    ancestor the node stores, and a verdict somewhere in its lineage."""
    board = get_json(node, "/api/leaderboard?limit=20")
    bred = [row for row in board["templates"] if row["genetic_parents"]]
    if not bred:
        return False
    view = get_json(node, f"/api/lineage/{bred[0]['id']}")
    stored = [n for n in view["nodes"] if not n.get("missing")]
    return len(stored) >= 2 and any(n["verdicts"] for n in stored)


@pytest.fixture
def browser() -> tuple[str, str]:
    return _browser()


def test_observatory_in_chromium(
    browser: tuple[str, str], nodes: list[NodeProcess], tmp_path: Path
) -> None:
    """`browser` first: without one, no node is started before the skip."""
    chromium, chromedriver = browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    t0 = time.monotonic()
    node = nodes[1]
    peer_ids = {n.ready["peer_id"] for n in nodes} - {node.ready["peer_id"]}
    wait_until(
        lambda: {p["peer"] for p in get_json(node, "/api/peers")["peers"]} >= peer_ids,
        60,
        "node1 to list node0 as its peer",
    )
    wait_until(lambda: lineage_with_ancestor(node), 90, "a template lineage with an ancestor")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # we run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1400,1300",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(chromedriver, log_output=str(tmp_path / "driver.log"))
    )
    try:
        driver.set_page_load_timeout(30)
        base = f"http://{node.http}"
        driver.get(base + "/")

        def shown() -> bool:
            peers = driver.find_element("id", "peers").text
            lineage = driver.find_elements("css selector", "#lineage .lineage-node")
            dag = driver.find_elements("css selector", "#dag-graph circle.vertex")
            board = driver.find_elements("css selector", "#leaderboard tr.pick")
            verdict = "valid" in driver.find_element("id", "lineage-list").text
            links = driver.find_elements("css selector", "#peers-graph path.link")
            return (
                all(p[:16] in peers for p in peer_ids)
                and len(lineage) >= 2
                and verdict
                and len(links) > 0  # at least: node1 attests node0's templates
                and len(dag) > 0
                and len(board) > 0
            )

        wait_until(shown, 30, "the page to show peers, ledger, leaderboard and a lineage")
        time.sleep(2.5)  # one more poll round: a failing refresh would log an error too
        state = driver.find_element("id", "state").get_attribute("class")
        assert state == "muted", driver.find_element("id", "state").text
        lineage_text = driver.find_element("id", "lineage-list").text
        assert "claimed" in lineage_text and "valid" in lineage_text, lineage_text

        # Everything the page loaded came from the node itself.
        urls = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert urls and all(u.startswith(base + "/") for u in urls), urls

        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert not errors, errors

        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(2600, int(height) + 200))
        time.sleep(0.5)
        shot = tmp_path / "observatory.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert shot.stat().st_size > 10_000  # a page, not a blank
    small = _palette_png(shot, tmp_path / "observatory-small.png")
    assert small.stat().st_size < MAX_PNG_BYTES
    target = os.environ.get("QUDAG_OBSERVATORY_PNG")
    if target:
        shutil.copyfile(small, target)
    assert time.monotonic() - t0 < 200


def _palette_png(source: Path, out: Path) -> Path:
    """A copy of the screenshot with at most 64 colours (an order of magnitude smaller)."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=64).save(out, optimize=True)
    return out
