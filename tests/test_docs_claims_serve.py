"""docs/serve.md: claims not covered elsewhere: the settings block shows the defaults and only real settings, and
/health names the served model."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml

from sftlab.infer.loading import load_served
from sftlab.models.tiny import save_tiny
from sftlab.serve.config import ServeSettings, load_settings

from logged_server import start_logged_server

DOC = Path(__file__).resolve().parents[1] / "docs" / "serve.md"
EXAMPLES = {"model_name", "adapters", "api_keys"}  # shown with example values; the rest with their defaults


def _settings_block() -> dict:
    section = DOC.read_text(encoding="utf-8").split("### Settings", 1)[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def test_the_settings_block_shows_the_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("SFTLAB_API_KEYS", raising=False)
    shown = _settings_block()
    defaults = ServeSettings()
    assert set(shown) <= set(ServeSettings.model_fields) and EXAMPLES <= set(shown)
    assert {key: value for key, value in shown.items() if key not in EXAMPLES} == {
        key: getattr(defaults, key) for key in shown if key not in EXAMPLES}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(shown), encoding="utf-8")
    assert load_settings(tmp_path / "serve.yaml").api_keys == ["sk-team-a"]  # the block is a valid --config file
    assert load_settings(tmp_path / "serve.yaml", max_batch=4).max_batch == 4  # flags override the file


@pytest.mark.timeout(120)
def test_health_names_the_served_model(tmp_path_factory):
    served = load_served(save_tiny("qwen2", tmp_path_factory.mktemp("health") / "tiny", hidden=32, layers=1))
    thread = start_logged_server(served, tmp_path_factory, api_keys=["sk-key"])
    try:
        assert httpx.get(f"{thread.url}/health", timeout=30).json() == {"status": "ok", "model": "tiny"}  # no key
    finally:
        thread.stop()
