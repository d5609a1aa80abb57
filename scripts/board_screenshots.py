"""Screenshots of the board's main pages, in English and Chinese, for a person to look at.

    .venv/bin/python scripts/board_screenshots.py --out board-screenshots

Builds a throw-away workspace (a tiny random qwen2 model, a small chat dataset, a small simulated policy world
with pushes and an evaluation report), starts the board on it, creates two runs through the new-run form in
headless system Chromium (/usr/bin/chromium, never downloaded), waits for them to finish, chats with one, and
writes PNGs: new run (an error next to its field; form, YAML, preview), runs, run page, compare, policy push, each as `<page>-<lang>.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROWS = [{"messages": [{"role": "user", "content": f"政策问题 {i}: which subsidy applies?"},
                      {"role": "assistant", "content": "answer " + "word " * (1 + i % 6)}]} for i in range(24)]


def make_workspace(root: Path) -> dict:
    """A tiny model, a chat file and a policy database with pushes and a baseline evaluation report."""
    from sftlab.models.tiny import save_tiny
    from sftlab.policy.baselines import category_frequency
    from sftlab.policy.db import open_db
    from sftlab.policy.evaluate import run_evaluation
    from sftlab.policy.examples import build_data
    from sftlab.policy.push import push
    from sftlab.policy.simulate import WorldSpec, simulate, write_world

    save_tiny("qwen2", root / "base", hidden=64, layers=2)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "chat.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    url = f"sqlite:///{root / 'policy.db'}"
    engine = open_db(url)
    write_world(engine, simulate(WorldSpec(n_enterprises=30, n_policies=80, days=200, seed=3)))
    build_data(engine, root / "policy-data", None, max_train=300, category_limit=50)
    run_evaluation(engine, root / "policy-data", root / "policy-report")
    push(engine, category_frequency().score, datetime(2025, 6, 1), 3, "category_frequency", now=datetime(2025, 7, 15))
    engine.dispose()
    return {"policy_db": url, "policy_report": str(root / "policy-report")}


def create_run(page, url: str, name: str, strategy: str, extra: dict[str, str]) -> None:
    """Fill the new-run form, check it, preview the data and launch; wait until the run completes."""
    page.goto(url + "/#/new")
    page.wait_for_selector("body[data-ready='1']")
    page.fill("[name=name]", name)
    fields = {"model.path": "base", "data.train": "data/chat.jsonl", "data.val_ratio": "0.2", "train.max_steps": "40",
              "train.batch_size": "4", "train.lr": "0.002", "eval.every_n_steps": "10", **extra}
    page.select_option("#new-form [name='strategy.kind']", strategy)  # first: it shows the strategy's own field
    for key, value in fields.items():
        page.fill(f"#new-form [name='{key}']", value)
    page.click("#btn-check")
    page.wait_for_selector("#yaml-box:not([hidden])")
    page.click("#btn-preview")
    page.wait_for_selector("#preview-samples mark.supervised")
    page.click("#btn-launch")
    page.wait_for_url(f"**/#/run/{name}")
    page.wait_for_selector("#page-run[data-run-status='completed']", timeout=600_000)


def shoot(page, url: str, out: Path, lang: str) -> list[Path]:
    """One PNG per main page in `lang`."""
    page.goto(url + "/#/runs")
    page.wait_for_selector("body[data-ready='1']")
    if page.evaluate("board.lang") != lang:
        page.click("#lang-toggle")
        page.wait_for_function(f"board.lang === '{lang}'")
    shots = []
    for name, hash_, ready in [("runs", "#/runs", "#runs-table tbody tr"),
                               ("run", "#/run/full-run", "#page-run[data-run-status='completed']"),
                               ("compare", "#/compare/full-run,lora-run", "#compare-table tbody tr"),
                               ("policy", "#/policy", "#policy-pushes tbody tr")]:
        page.goto(url + "/" + hash_)
        page.wait_for_selector(ready)
        page.wait_for_timeout(600)
        shots.append(out / f"{name}-{lang}.png")
        page.screenshot(path=str(shots[-1]), full_page=True)
    page.goto(url + "/#/new")
    page.wait_for_selector("#new-form")
    return shots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="board-screenshots", help="directory for the PNGs")
    parser.add_argument("--workdir", help="workspace to build (default: a temporary directory)")
    args = parser.parse_args()
    if not Path(CHROMIUM).is_file():
        print(f"error: {CHROMIUM} not found; install Debian's chromium (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from sftlab.board.app import BoardSettings
    from sftlab.board.server import BoardThread

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="sftlab-board-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    policy = make_workspace(root)
    os.chdir(root)
    settings = BoardSettings(runs_dir=root / "runs", workdir=root, **policy)
    with BoardThread(settings) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(120_000)
        create_run(page, url, "lora-run", "lora", {"strategy.lora.rank": "4"})
        create_run(page, url, "full-run", "full", {})
        page.fill("#chat-input", "政策问题 1: which subsidy applies?")
        page.click("#btn-send")
        page.wait_for_selector("#chat-log[data-finished='2']")
        shots = []
        for lang in ("en", "zh"):
            shots += shoot(page, url, out, lang)
            page.fill("[name=name]", "new-run")
            for key, value in {"model.path": "base", "data.train": "data/chat.jsonl", "train.lr": "-1"}.items():
                page.fill(f"#new-form [name='{key}']", value)
            page.click("#btn-check")
            page.wait_for_selector(".field-error")
            shots.append(out / f"new-error-{lang}.png")
            page.screenshot(path=str(shots[-1]))
            page.fill("#new-form [name='train.lr']", "1e-4")
            page.click("#btn-check")
            page.click("#btn-preview")
            page.wait_for_selector("#preview-samples mark.supervised")
            shots.append(out / f"new-{lang}.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
        browser.close()
    print("\n".join(str(path) for path in shots))
    print(f"workspace: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
