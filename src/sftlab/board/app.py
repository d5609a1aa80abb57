"""The board's FastAPI app: the single-page interface under /, its JSON API under /api.

    app = create_app(BoardSettings(runs_dir="runs"))

Pages (static HTML/CSS/JS bundled in `board/static`, strings in `board/i18n/{en,zh}.json`): new run,
runs, a run's page (live curves, stop/resume, evaluate, chat), compare, policy push. Every user error
answers 400 with `{"error": message, "field": form field}` where the message is the CLI's own.
When `api_keys` are set every /api route needs `Authorization: Bearer KEY` or the cookie set by /login.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from sftlab.board import forms
from sftlab.board.chat import ChatPool
from sftlab.board.policy import PolicyView
from sftlab.board.runs import RunManager, check_run_name, read_json, read_rows
from sftlab.errors import SftlabError

HERE = Path(__file__).parent
LANGUAGES = ("en", "zh")
COOKIE = "sftlab_board_key"
DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet"}
EVAL_TASKS = ("lm", "generation", "labels", "ranking")


@dataclass
class BoardSettings:
    """Where runs live, who may use the board, and the policy application's database and report."""

    runs_dir: str | Path = "runs"
    workdir: str | Path = "."
    api_keys: list[str] = field(default_factory=list)
    policy_db: str | None = None
    policy_report: str | None = None
    plan_timeout_s: float = 300.0
    allowed_hosts: list[str] | None = None  # Host headers accepted (DNS-rebinding guard); None = any
    trust_remote_code: bool = False  # chat and evaluate run code shipped with a run's model (`--trust-remote-code`)


def load_strings(lang: str) -> dict[str, str]:
    if lang not in LANGUAGES:
        raise SftlabError(f"language {lang!r}: choose one of {', '.join(LANGUAGES)}")
    return json.loads((HERE / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))


def _finite(value):
    """`value` with NaN and infinite floats (a metrics file may hold them; JSON has no such numbers) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """The API's responses: strict JSON, a NaN or infinite metric sent as null rather than failing the request."""

    def render(self, content) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _error(exc: Exception, status: int = 400) -> JSONResponse:
    message = str(exc)
    return JSONResponse({"error": message, "field": forms.error_field(message)}, status_code=status)


def _request_error(exc) -> JSONResponse:
    """FastAPI's validation error of a request (not JSON, not an object) as the board's one-line 400."""
    first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if not isinstance(part, int)) or "request"
    detail = first.get("ctx", {}).get("error") if first.get("type") == "json_invalid" else None
    message = f"{where}: {first.get('msg', 'invalid')}" + (f" ({detail})" if detail else "")
    return JSONResponse({"error": message, "field": "_form"}, status_code=400)


def _number(body: dict, key: str, default, kind=int, low: float | None = None):
    """`body[key]` as an int or float (`default` when absent or empty); a bad value is a one-line error naming key."""
    value = body.get(key)
    if value is None or value == "":
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise SftlabError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if low is not None and not number >= low:  # also refuses NaN
        raise SftlabError(f"{key}: must be at least {low:g}, got {value!r}")
    return number


def _eval_request(body: dict) -> tuple[str, str, int | None]:
    """(data, task, max_samples) of an Evaluate request, each checked."""
    data, task = str(body.get("data", "")).strip(), str(body.get("task", "lm"))
    if not data:
        raise SftlabError("eval data: choose the file to evaluate on")
    if task not in EVAL_TASKS:
        raise SftlabError(f"eval task {task!r}: choose one of {', '.join(EVAL_TASKS)}")
    return data, task, _number(body, "max_samples", None, low=1)


def create_app(settings: BoardSettings) -> FastAPI:
    """The board app; training jobs it started get SIGINT (a checkpoint) when it shuts down."""
    runs = RunManager(settings.runs_dir, trust_remote_code=settings.trust_remote_code)
    if runs.runs_dir.exists() and not runs.runs_dir.is_dir():
        raise SftlabError(f"--runs-dir {settings.runs_dir}: a file, not a directory; give the directory of the runs")
    runs.runs_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(settings.workdir).resolve()
    pool = ChatPool(trust_remote_code=settings.trust_remote_code)
    policy = PolicyView(settings.policy_db, settings.policy_report)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(pool.close)
        await asyncio.to_thread(runs.shutdown)

    app = FastAPI(title="sftlab board", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=FiniteJSONResponse)
    app.state.runs, app.state.pool = runs, pool
    _install_auth(app, settings.api_keys)
    if settings.allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)

    @app.exception_handler(SftlabError)
    async def user_error(request: Request, exc: SftlabError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError):
        return _request_error(exc)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(HERE / "static" / "index.html")

    @app.get("/api/i18n/{lang}")
    async def strings(lang: str):
        return load_strings(lang)

    @app.get("/api/options")
    async def options():
        return await asyncio.to_thread(_options, workdir, runs.runs_dir)

    _form_routes(app, runs, workdir, settings)
    _run_routes(app, runs, pool, workdir)

    @app.get("/api/policy")
    async def policy_overview():
        return await asyncio.to_thread(policy.overview)

    @app.get("/api/policy/{enterprise_id}")
    async def policy_pushes(enterprise_id: str):
        return await asyncio.to_thread(policy.pushes, enterprise_id)

    return app


def _install_auth(app: FastAPI, keys: list[str]) -> None:
    """Bearer key or login cookie on every /api route when keys are configured (as `sftlab serve` checks them)."""
    encoded = [key.encode() for key in keys]

    def allowed(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        token = given.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
        return bool(token) and any(hmac.compare_digest(token.encode(), key) for key in encoded)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        path = request.url.path
        if not encoded or path == "/login" or path.startswith("/static/") or allowed(request):
            return await call_next(request)
        if path.startswith("/api/"):
            return JSONResponse({"error": "missing or incorrect API key", "field": "_form"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.get("/login", include_in_schema=False)
    async def login_page():
        return FileResponse(HERE / "static" / "login.html")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = parse_qs((await request.body()).decode("utf-8", "replace"))  # no python-multipart needed
        key = (form.get("key") or [""])[0]
        if not any(hmac.compare_digest(key.encode(), k) for k in encoded):
            return HTMLResponse("incorrect API key; <a href='/login'>try again</a>", status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return response


def _options(workdir: Path, runs_dir: Path) -> dict:
    """Choices for the new-run form: cached models, data files under the working directory, config literals."""
    from typing import get_args

    from sftlab.config.schema import DataConfig, EvalConfig, StrategyConfig, TrainConfig
    from sftlab.models.pull import EMBEDDED, list_cached

    def literal(model, name):
        return list(get_args(model.model_fields[name].annotation))

    data_files = []
    for folder, dirs, files in os.walk(workdir):
        here = Path(folder)
        depth = len(here.relative_to(workdir).parts)
        if depth >= 3 or here == runs_dir or {"config.json", "metrics.jsonl"} & set(files):
            dirs.clear()  # too deep, the runs, a model or a run directory: no training data in there
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in {"node_modules", "__pycache__"})
        data_files += [str((here / f).relative_to(workdir)) for f in sorted(files) if Path(f).suffix in DATA_SUFFIXES]
        if len(data_files) >= 200:
            break
    templates = ["auto"] + sorted(p.stem for p in (Path(forms.__file__).parents[1] / "templates").glob("*.yaml"))
    return {"models": list_cached(), "embedded": list(EMBEDDED), "data_files": data_files, "templates": templates,
            "formats": literal(DataConfig, "format"), "masks": literal(DataConfig, "mask"),
            "stages": literal(TrainConfig, "stage"), "strategies": literal(StrategyConfig, "kind"),
            "precisions": literal(TrainConfig, "precision"), "eval_tasks": list(EVAL_TASKS),
            "eval_modes": literal(EvalConfig, "mode"), "workdir": str(workdir), "runs_dir": str(runs_dir)}


def _form_routes(app: FastAPI, runs: RunManager, workdir: Path, settings: BoardSettings) -> None:
    def config_of(body: dict):
        name = check_run_name(str(body.get("name", "")).strip())
        fields = body.get("fields") or {}
        if not isinstance(fields, dict):
            raise SftlabError(f"fields: expected an object of form fields, got {type(fields).__name__}")
        return name, forms.form_to_config(fields, runs.run_dir(name), workdir)

    @app.post("/api/form/check")
    async def check(body: dict):
        name, (text, cfg) = config_of(body)
        notes = await asyncio.to_thread(forms.check_sources, cfg)
        return {"yaml": text, "config_file": str(runs.config_path(name)), "notes": notes}

    @app.post("/api/form/preview")
    async def preview(body: dict):
        _, (_, cfg) = config_of(body)
        return await asyncio.to_thread(_preview, cfg, runs.runs_dir, _number(body, "count", 3))

    @app.post("/api/form/plan")
    async def plan(body: dict):
        name, (text, _) = config_of(body)
        return await asyncio.to_thread(_plan, runs, name, text, settings.plan_timeout_s)

    @app.post("/api/runs")
    async def create_run(body: dict):
        from sftlab.io import atomic_write_text

        name, (text, cfg) = config_of(body)
        await asyncio.to_thread(forms.check_sources, cfg)
        run_dir = runs.run_dir(name)
        if runs.config_path(name).exists() or (run_dir.exists() and any(run_dir.iterdir())):
            raise SftlabError(f"run name {name!r}: a run with this name already exists in {runs.runs_dir}")
        atomic_write_text(runs.config_path(name), text)
        runs.launch(name)
        return {"name": name, "config_file": str(runs.config_path(name))}


def _preview(cfg, runs_dir: Path, count: int) -> dict:
    """The first samples as training tokenizes them, as (text, supervised) pieces, and the split's totals."""
    from sftlab.data.preview import check_supervision, load_preview, runs, summary_line
    from sftlab.models.load import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    shown = load_preview(cfg, tokenizer, base_dir=runs_dir, count=max(1, min(count, 10)))
    samples = []
    for view in shown.views:
        pieces = ([[tokenizer.decode(view.input_ids[a:b], skip_special_tokens=False), sup]
                   for a, b, sup in runs(view.labels)] if view.labels is not None
                  else [[tokenizer.decode(view.input_ids, skip_special_tokens=False), False]])
        samples.append({"src": view.src, "tokens": len(view.input_ids), "supervised": view.supervised,
                        "ratio": round(view.ratio, 4), "label": view.label_name, "pieces": pieces})
    warning = ""
    try:
        check_supervision(cfg.train.stage, cfg.data.mask, shown.stats)
    except SftlabError as exc:
        warning = str(exc)
    return {"samples": samples, "summary": summary_line("train", shown.stats), "template": shown.template,
            "warning": warning}


def _plan(runs: RunManager, name: str, text: str, timeout_s: float) -> dict:
    """`sftlab plan` on the form's config (written to RUNS/.board/plan-NAME.yaml); its table and recommendation."""
    from sftlab.io import atomic_write_text

    config = atomic_write_text(runs.runs_dir / ".board" / f"plan-{name}.yaml", text)
    try:
        done = subprocess.run([sys.executable, "-m", "sftlab", "plan", str(config)], capture_output=True, text=True,
                              cwd=runs.runs_dir, timeout=timeout_s, env=dict(os.environ, NO_COLOR="1"))
    except subprocess.TimeoutExpired:
        raise SftlabError(f"sftlab plan took longer than {timeout_s:g} s") from None
    if done.returncode != 0 and "invalid choice: 'plan'" in done.stderr:
        raise SftlabError("the planner (`sftlab plan`) is not available in this installation")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        raise SftlabError(lines[-1].removeprefix("error: ") if lines else done.stderr.strip()[-500:])
    return {"output": done.stdout, "command": f"sftlab plan {config}"}


def _run_routes(app: FastAPI, runs: RunManager, pool: ChatPool, workdir: Path) -> None:
    @app.get("/api/runs")
    async def list_runs():
        return await asyncio.to_thread(runs.summaries)

    @app.get("/api/runs/{name}")
    async def run_detail(name: str):
        return await asyncio.to_thread(runs.detail, check_run_name(name))

    @app.get("/api/runs/{name}/config.yaml")
    async def run_config(name: str):
        path = runs.config_path(name)
        if not path.is_file():  # a run started outside the board: its resolved config
            path = runs.run_dir(name) / "config.yaml"
        if not path.is_file():
            raise SftlabError(f"run {name!r}: no config {path}")
        return Response(path.read_bytes(), media_type="application/yaml",  # the file as it is, whatever its encoding
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}.yaml"})

    @app.post("/api/runs/{name}/stop")
    async def stop(name: str):
        runs.stop(name)
        return {"name": name, "status": "stopping"}

    @app.post("/api/runs/{name}/resume")
    async def resume(name: str):
        pool.forget(runs.run_dir(name))
        runs.launch(name, resume=True)
        return {"name": name, "status": "running"}

    @app.post("/api/runs/{name}/eval")
    async def evaluate(name: str, body: dict):
        data, task, max_samples = _eval_request(body)
        runs.evaluate(name, forms.absolute_path(data, workdir), task, max_samples)
        return {"name": name, "status": "running"}

    @app.post("/api/runs/{name}/chat")
    async def chat(name: str, body: dict):
        messages = body.get("messages") or []
        if runs.summary(name)["stage"] == "cls":
            raise SftlabError(f"run {name!r} is a classifier (train.stage=cls); chat needs a pt or sft run")
        if not isinstance(messages, list):
            raise SftlabError(f"messages: expected a list of chat messages, got {type(messages).__name__}")
        stream = pool.stream(runs.run_dir(check_run_name(name)), messages, _number(body, "max_tokens", 64, low=1),
                             _number(body, "temperature", 0.0, float, low=0))
        first = await anext(stream)  # a user error (no model, bad messages) answers 400 before streaming starts

        async def events():
            yield f"data: {json.dumps(first, ensure_ascii=False)}\n\n"
            async for event in stream:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/api/compare")
    async def compare(runs_param: str = Query("", alias="runs")):
        names = [check_run_name(n) for n in runs_param.split(",") if n.strip()]
        return await asyncio.to_thread(lambda: [_compare_row(runs, name) for name in names])


def _compare_row(runs: RunManager, name: str) -> dict:
    """A run's summary, final metrics, logged rows and its card's trainable-parameters line."""
    run = runs.run_dir(name)
    row = runs.summary(name)
    row.update(final=read_json(run / "metrics.json"), rows=read_rows(run / "metrics.jsonl"), trainable=None)
    card = run / "model" / "README.md"
    if card.is_file():
        lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
        row["trainable"] = next((line.removeprefix("- ") for line in lines if line.startswith("- trainable")), None)
    return row
