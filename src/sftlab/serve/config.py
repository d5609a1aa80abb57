"""Server settings: a YAML file (`sftlab serve --config serve.yaml`), command-line flags, SFTLAB_API_KEYS.

    host: 127.0.0.1
    port: 8000
    api_keys: [sk-team-a, sk-team-b]     # plus comma-separated SFTLAB_API_KEYS; none at all = no auth
    adapters: {legal: runs/legal/model}  # served as model "legal" on the same base
    max_batch: 16                         # rows decoded together
    max_queue: 64                         # waiting requests before 429
    request_timeout_s: 120
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sftlab.config.load import closest_field
from sftlab.config.types import Float, Int
from sftlab.errors import SftlabError
from sftlab.io import read_yaml_mapping


class ServeSettings(BaseModel):
    """Everything `sftlab serve` can be told; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    host: str = "127.0.0.1"
    port: Int = Field(8000, ge=0, le=65535)
    model_name: str | None = Field(None, description="served name of MODEL (default: its directory name)")
    adapters: dict[str, str] = Field(default_factory=dict, description="served name -> PEFT adapter dir")
    api_keys: list[str] = Field(default_factory=list)
    template: str | None = Field(None, description="chat template (default: the run's data.template, else auto)")
    dtype: str = Field("float32", pattern="^(float32|bfloat16|float16|auto)$",
                       description="weights dtype; auto: bfloat16 where the machine has bf16 matmuls in hardware")
    max_batch: Int = Field(16, ge=1)
    max_queue: Int = Field(64, ge=1)
    batch_window_ms: Float = Field(5.0, ge=0, description="wait this long for company before starting an idle batch")
    request_timeout_s: Float = Field(120.0, gt=0)
    max_tokens_limit: Int = Field(2048, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: Int = Field(256, ge=1)
    retry_after_s: Int = Field(1, ge=1, description="Retry-After seconds sent with 429")
    access_log: str | None = Field(None, description="file for the JSON access log (default: stderr)")
    shutdown_timeout_s: Float = Field(60.0, gt=0, description="how long shutdown waits for requests in flight")


def load_settings(path: str | Path | None = None, **overrides) -> ServeSettings:
    """Settings from YAML at `path`, then non-None `overrides`, then keys from SFTLAB_API_KEYS added."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SftlabError(f"serve config not found: {path}")
        raw = read_yaml_mapping(path, "a mapping of serve settings")
    for key, value in overrides.items():
        if value is None:
            continue
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    env_keys = [key.strip() for key in os.environ.get("SFTLAB_API_KEYS", "").split(",") if key.strip()]
    raw["api_keys"] = list(raw.get("api_keys") or []) + env_keys
    try:
        return ServeSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":  # as a run config's unknown keys: with the closest known one
            close = closest_field(ServeSettings, key)
            message = "unknown key" + (f"; did you mean {close!r}?" if close else
                                       f"; known keys: {', '.join(ServeSettings.model_fields)}")
        raise SftlabError(f"{path or 'serve settings'}: {key}: {message}") from None
