"""The MLflow UI as a user sees it: a real sweep into a temporary sqlite store, a real
``mlflow server`` over that store on a loopback port, and Debian's headless Chromium
driven by Playwright to the experiment's runs table.

The browser test is marked ``e2e`` (run by ``just test-all``) and skips when no Chromium is
installed (``scripts/install-browser.sh`` installs it). The ``just ui`` check is a fast test."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Request, Route, ViewportSize, expect, sync_playwright

from tests.conftest import Cli, just_exe
from tests.servers import mlflow_server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
# wide enough that ag-grid renders the added metric/param columns without horizontal scrolling
VIEWPORT: ViewportSize = {"width": 1920, "height": 1080}
UI_TIMEOUT_MS = 60_000


def shown(value: float) -> str:
    """A metric as the UI prints it (JavaScript's Number#toString): 1.0 -> "1", 0.9 -> "0.9"."""
    return str(int(value)) if value.is_integer() else repr(value)


@pytest.mark.parametrize("recipe", ["ui", "server"])
def test_just_ui_and_server_bind_loopback_only(recipe: str) -> None:
    proc = subprocess.run(
        [just_exe(), "--dry-run", recipe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    command = (proc.stdout + proc.stderr).strip()
    assert f"mlflow {recipe} " in command, command
    assert "--host 127.0.0.1" in command, command
    assert "0.0.0.0" not in command, command


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_mlflow_ui_lists_sweep_parent_and_children_with_params_and_metrics(cli: Cli) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"chromium not installed ({CHROMIUM} missing): run scripts/install-browser.sh")

    # 1. a small sweep: 1 parent + 4 children in experiment "lab"
    res = cli.sweep("seed=1,2", "model.C=0.1,1")
    assert res.code == 0, res.stderr
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    exp = client.get_experiment_by_name("lab")
    assert exp is not None
    all_runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in all_runs if r.data.tags.get("lab.kind") == "sweep"]
    children = sorted((r for r in all_runs if r.data.tags.get("lab.kind") == "job"), key=lambda r: r.info.run_name)
    assert parent.info.run_name == "sweep-sweep"
    assert [c.info.run_name for c in children] == ["job-0", "job-1", "job-2", "job-3"]

    shot = cli.cwd / "mlflow-ui.png"
    shot_filtered = cli.cwd / "mlflow-ui-filtered.png"
    outside: list[str] = []
    browser_log: list[str] = []

    # 2. a real tracking server over the same store
    with (
        mlflow_server(cli.uri, cli.cwd / "artifacts", cli.cwd / "mlflow-server.log") as url,
        sync_playwright() as pw,
    ):
        # 3. headless Chromium; nothing may leave the loopback interface
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)

        def only_loopback(route: Route, request: Request) -> None:
            if urlsplit(request.url).hostname in {"127.0.0.1", "localhost"}:
                route.continue_()
            else:
                outside.append(request.url)
                route.abort()

        context.route("**/*", only_loopback)
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.on("console", lambda msg: browser_log.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: browser_log.append(f"pageerror: {err}"))

        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs")

            # 4. the parent run is listed, its children nested (collapsed) under it
            run_name = page.locator('[role="gridcell"][col-id="attributes.`Run Name`"]')
            names = run_name.get_by_role("link")  # the cell also holds the run's colour swatch
            parent_cell = run_name.filter(has=page.get_by_role("link", name="sweep-sweep", exact=True))
            expect(parent_cell).to_be_visible()
            expect(page.get_by_text("5 matching runs")).to_be_visible()
            expect(names).to_have_text(["sweep-sweep"])

            # the MLflow Assistant side panel (open on first visit) narrows the table: close it
            close_assistant = page.get_by_role("button", name="Close", exact=True)
            if close_assistant.count() == 1 and close_assistant.is_visible():
                close_assistant.click()

            # show the accuracy metric and the model.C / seed params as columns
            page.get_by_test_id("column-selection-dropdown").first.click()
            column_search = page.get_by_placeholder("Search columns")
            for column in ("accuracy", "model.C", "seed"):
                column_search.fill(column)
                page.locator(".du-bois-light-tree-title", has_text=re.compile(rf"^{re.escape(column)}$")).click()
            page.keyboard.press("Escape")

            # expand the parent: the four jobs appear right under it
            parent_cell.get_by_role("button").click()
            expect(names).to_have_count(5)
            expect(names.first).to_have_text("sweep-sweep")
            assert sorted(names.all_inner_texts()[1:]) == ["job-0", "job-1", "job-2", "job-3"]

            def cell(run_id: str, col_id: str) -> Locator:
                return page.locator(f'[role="row"][row-id="{run_id}"] [role="gridcell"][col-id="{col_id}"]')

            expect(cell(parent.info.run_id, "metrics.`accuracy`")).to_have_text("-")
            expect(cell(parent.info.run_id, "params.`model.C`")).to_have_text("-")
            for child in children:
                rid = child.info.run_id
                expect(cell(rid, "attributes.`Run Name`").get_by_role("link")).to_have_text(child.info.run_name)
                expect(cell(rid, "params.`model.C`")).to_have_text(child.data.params["model.C"])
                expect(cell(rid, "params.`seed`")).to_have_text(child.data.params["seed"])
                expect(cell(rid, "metrics.`accuracy`")).to_have_text(shown(child.data.metrics["accuracy"]))
            # the values themselves, as a user reads them
            table = page.locator(".ag-root")
            for text in ("sweep-sweep", "job-0", "job-1", "job-2", "job-3", "0.1", "1.0", "0.9", "0.9666666666666667"):
                expect(table).to_contain_text(text)

            # 5. the screenshot (look at it when this test changes)
            page.screenshot(path=str(shot), full_page=True)

            # a search filter keeps the parent and only its matching children
            search = page.get_by_test_id("search-box")
            search.fill("params.`model.C` = '0.1'")
            search.press("Enter")
            expect(page.get_by_text("3 matching runs")).to_be_visible()
            wanted = {c.info.run_name for c in children if c.data.params["model.C"] == "0.1"}
            assert wanted == {"job-0", "job-2"}
            expect(names.first).to_have_text("sweep-sweep")
            # the parent stays expanded across the new query
            expect(names).to_have_count(3)
            assert sorted(names.all_inner_texts()) == ["job-0", "job-2", "sweep-sweep"]
            page.screenshot(path=str(shot_filtered), full_page=True)
        except Exception:
            with contextlib.suppress(PlaywrightError):  # never hide the real failure
                page.screenshot(path=str(cli.cwd / "mlflow-ui-failure.png"), full_page=True)
            raise
        finally:
            expect.set_options(timeout=5_000)  # Playwright's default, for any later test
            (cli.cwd / "browser.log").write_text("\n".join(browser_log) + "\n")
            browser.close()

    assert shot.stat().st_size > 10_000
    assert not outside, f"the UI tried to leave loopback: {outside}"
