"""The board in a real headless browser (Debian's /usr/bin/chromium driven by Playwright; nothing downloaded).

Fast: the new-run form shows the CLI's errors next to the field, the YAML and the supervised-token preview, and
the language switch. Slow (subprocess training): create a run with a tiny model, watch it live, stop it (clean
checkpoint), resume it to the end, see the curve, compare, evaluate, and chat with the result.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium)"),
    pytest.mark.timeout(600),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

ROWS = [{"messages": [{"role": "user", "content": f"question {i}"},
                      {"role": "assistant", "content": "answer " + "word " * (1 + i % 5)}]} for i in range(16)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from sftlab.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("board")
    save_tiny("qwen2", root / "base", hidden=32, layers=1)
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def board_url(workspace):
    from sftlab.board.app import BoardSettings
    from sftlab.board.server import BoardThread

    old = os.getcwd()
    os.chdir(workspace)
    try:
        with BoardThread(BoardSettings(runs_dir=workspace / "runs", workdir=workspace)) as url:
            yield url
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def page(board_url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def open_board(page, url, lang="en"):
    page.goto(url + "/#/new")
    page.wait_for_selector("body[data-ready='1']")
    if page.evaluate("board.lang") != lang:
        page.click("#lang-toggle")
        page.wait_for_function(f"board.lang === '{lang}'")


def fill_form(page, name, **fields):
    page.fill("[name=name]", name)
    for key, value in fields.items():
        selector = f"#new-form [name='{key}']"
        if page.eval_on_selector(selector, "e => e.tagName") == "SELECT":
            page.select_option(selector, value)
        else:
            page.fill(selector, value)


def test_form_errors_yaml_preview_and_language(page, board_url, workspace):
    open_board(page, board_url)
    fill_form(page, "form-run", **{"model.path": "base", "data.train": "data/train.jsonl", "train.lr": "-1",
                                   "train.max_steps": "3", "train.batch_size": "4"})
    page.click("#btn-check")
    error = page.wait_for_selector(".field-error[data-error-for='train.lr']")
    assert error.inner_text() == "config: train.lr: Input should be greater than 0 (got -1)"  # the CLI's message
    fill_form(page, "form-run", **{"train.lr": "0.001", "model.path": "no-such-model-dir"})
    page.click("#btn-check")
    assert "no such directory" in page.wait_for_selector(".field-error[data-error-for='model.path']").inner_text()
    fill_form(page, "form-run", **{"model.path": "base", "strategy.kind": "lora", "strategy.lora.rank": "4"})
    page.click("#btn-check")
    page.wait_for_selector("#yaml-box:not([hidden])")
    text = page.inner_text("#yaml-text")
    assert "kind: lora" in text and "rank: 4" in text and "lr: 0.001" in text and str(workspace / "base") in text
    assert page.inner_text("#yaml-command") == f"sftlab train {workspace / 'runs' / 'form-run.yaml'}"
    assert not (workspace / "runs" / "form-run.yaml").exists()  # checking writes nothing
    page.click("#btn-preview")
    marks = page.wait_for_selector("#preview-samples mark.supervised")
    assert marks.inner_text().startswith("answer")
    assert "<|im_start|>user" in page.inner_text("#preview-samples pre")  # the prompt is shown, not highlighted

    page.click("#lang-toggle")
    page.wait_for_function("document.querySelector(\"nav a[href='#/new']\").textContent === '新建训练'")
    assert page.inner_text("#btn-launch") == "开始训练" and page.evaluate("document.documentElement.lang") == "zh-CN"
    page.click("#lang-toggle")
    page.wait_for_function("document.querySelector(\"nav a[href='#/new']\").textContent === 'New run'")


def wait_status(page, status, timeout_ms=240_000):
    page.wait_for_selector(f"#page-run[data-run-status='{status}']", timeout=timeout_ms)


@pytest.mark.slow
def test_run_live_stop_resume_compare_evaluate_chat(page, board_url, workspace):
    open_board(page, board_url)
    fill_form(page, "live", **{"model.path": "base", "data.train": "data/train.jsonl", "data.val_ratio": "0.25",
                               "train.max_steps": "300", "train.batch_size": "4", "train.lr": "0.001",
                               "eval.every_n_steps": "100", "train.max_length": "64"})
    page.click("#btn-launch")
    page.wait_for_url("**/#/run/live")
    wait_status(page, "running")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) >= 2")  # live curve
    page.click("#btn-stop")
    wait_status(page, "stopped")  # SIGINT: the loop saved a checkpoint and exited 130
    checkpoints = list((workspace / "runs" / "live" / "checkpoints").glob("step-*"))
    assert checkpoints and not (workspace / "runs" / "live" / "model").exists()
    page.click("#btn-resume")
    wait_status(page, "completed")
    assert page.inner_text("#run-progress") == "300 / 300"
    rows = [json.loads(line) for line in (workspace / "runs" / "live" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if not r.get("eval")] == list(range(1, 301))  # one run, no gap, no repeat
    assert int(page.eval_on_selector("#chart-loss", "c => c.dataset.points")) == 300 + 3  # train + 3 evals
    assert "train_loss" in page.inner_text("#run-metrics")

    page.fill("#eval-form [name=data]", "data/train.jsonl")
    page.select_option("#eval-form [name=task]", "lm")
    page.fill("#eval-form [name=max_samples]", "4")
    page.click("#btn-eval")
    page.wait_for_selector("#eval-results [data-eval='lm'], #eval-status.error", timeout=240_000)
    log = (workspace / "runs" / ".board" / "live.eval.log").read_text()
    assert page.query_selector("#eval-status.error") is None, log
    assert "loss" in page.inner_text("#eval-results [data-eval='lm']")

    page.fill("#chat-input", "question 1")
    page.click("#btn-send")
    page.wait_for_selector("#chat-log[data-finished='2']")
    assert page.inner_text("#chat-template") == "auto"  # the run's data.template, as in training
    assert len(page.query_selector_all("#chat-log .message.assistant")) == 1

    page.click("#lang-toggle")
    page.wait_for_function("document.querySelector('#run-status').textContent === '已完成'")
    page.click("#lang-toggle")
    shutil.copytree(workspace / "runs" / "live", workspace / "runs" / "live-copy")
    page.goto(board_url + "/#/compare/live,live-copy")
    page.wait_for_selector("#compare-table tbody tr[data-run='live-copy']")
    assert int(page.eval_on_selector("#chart-compare", "c => c.dataset.points")) == 600
