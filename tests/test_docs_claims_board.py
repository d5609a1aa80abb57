"""docs/board.md: the options table is the parser's (names and defaults), and the login cookie is HttpOnly."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fastapi.testclient import TestClient

from sftlab.board.app import BoardSettings, create_app
from sftlab.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "board.md"


def _board_parser() -> argparse.ArgumentParser:
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["board"]


def test_the_options_table_names_every_option_with_its_default():
    rows = dict(re.findall(r"^\| `(--[a-z-]+)` \| (.*) \|$", DOC.read_text(encoding="utf-8"), re.M))
    actions = {a.option_strings[0]: a for a in _board_parser()._actions if a.option_strings and a.dest != "help"}
    assert set(rows) == set(actions)
    for option, meaning in rows.items():
        stated = re.search(r"\(default `?([^`;)]+)`?", meaning)
        if stated and not stated.group(1).startswith("$"):
            assert str(actions[option].default) == stated.group(1), option
    assert rows["--port"].startswith("port (default 7860") and actions["--port"].default == 7860


def test_the_login_cookie_is_http_only(tmp_path):
    with TestClient(create_app(BoardSettings(runs_dir=tmp_path / "runs", api_keys=["k1"]))) as client:
        answer = client.post("/login", data={"key": "k1"}, follow_redirects=False)
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "k1" in cookie
