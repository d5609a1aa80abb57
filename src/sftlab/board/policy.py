"""The policy-push page's data: the evaluation against the baselines, one enterprise's pushes, the model behind them.

    view = PolicyView(db_url, report_dir)
    view.overview()                 # {"db", "results", "enterprises": [{"id", "name", "pushes"}]}
    view.pushes("E000001")          # {"enterprise", "pushes": [...], "models": {model_version: strategy section}}

The metrics come from the `metrics.json` written by `sftlab policy evaluate` / `baselines` (the board does not
recompute them); pushes come from the application's database (`sftlab.policy.db`); the importance report of the
model that made the pushes is the "Strategy" section of its run's model card.
"""

from __future__ import annotations

from pathlib import Path

from sftlab.board.runs import read_json
from sftlab.eval.report_data import card_section
from sftlab.errors import SftlabError


class PolicyView:
    """Read-only views over one policy database and one evaluation report directory."""

    def __init__(self, db_url: str | None = None, report_dir: str | Path | None = None):
        self.db_url = db_url
        self.report_dir = Path(report_dir).expanduser() if report_dir else None
        self._engine = None

    def engine(self):
        """The database's engine; a SQLite file that does not exist is an error (a view never creates one)."""
        if self._engine is None:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            from sftlab.policy.db import make_engine, resolve_db_url

            url = resolve_db_url(self.db_url)
            try:
                parsed = make_url(url)
            except ArgumentError:  # make_engine reports a bad URL in one line
                parsed = None
            database = parsed.database if parsed is not None and parsed.get_backend_name() == "sqlite" else None
            if database and database != ":memory:" and not database.startswith("file:") \
                    and not Path(database).expanduser().is_file():
                raise SftlabError(f"database {url}: no such file; run `sftlab policy simulate` or `sftlab policy import` "
                                  "first, or start the board with --db")
            self._engine = make_engine(url)
        return self._engine

    def _query(self, run):
        """`run(conn)` on a connection; a database error is a one-line SftlabError naming the database."""
        from sqlalchemy.exc import SQLAlchemyError

        engine = self.engine()
        try:
            with engine.connect() as conn:
                return run(conn)
        except SQLAlchemyError as exc:
            raise SftlabError(f"database {engine.url.render_as_string(hide_password=True)}: {exc.__class__.__name__}: "
                              f"{' '.join(str(getattr(exc, 'orig', exc)).split())}") from None

    def overview(self) -> dict:
        """The database (password hidden), the evaluation results and the enterprises that have pushes."""
        from sqlalchemy import func, select

        from sftlab.policy.db import Enterprise, Push

        report = read_json(self.report_dir / "metrics.json") if self.report_dir else None
        counted = self._query(lambda conn: conn.execute(
            select(Push.enterprise_id, Enterprise.name, func.count(Push.id))
            .join(Enterprise, Enterprise.id == Push.enterprise_id)
            .group_by(Push.enterprise_id, Enterprise.name).order_by(Push.enterprise_id)).all())
        return {"db": self.engine().url.render_as_string(hide_password=True),
                "report_dir": str(self.report_dir) if self.report_dir else None,
                "results": (report or {}).get("results"), "manifest": (report or {}).get("manifest"),
                "enterprises": [{"id": eid, "name": name, "pushes": count} for eid, name, count in counted]}

    def pushes(self, enterprise_id: str) -> dict:
        """The enterprise, its pushes (newest window first, by rank) with policy titles and reasons, and the models."""
        from sqlalchemy import select

        from sftlab.policy.db import Enterprise, Policy, Push

        def read(conn):
            enterprise = conn.execute(select(Enterprise).where(Enterprise.id == enterprise_id)).mappings().first()
            return enterprise, conn.execute(
                select(Push.window_key, Push.rank, Push.score, Push.reason, Push.model_version, Push.status,
                       Push.created_at, Policy.id.label("policy_id"), Policy.title, Policy.category)
                .join(Policy, Policy.id == Push.policy_id).where(Push.enterprise_id == enterprise_id)
                .order_by(Push.window_key.desc(), Push.rank)).mappings().all()

        enterprise, rows = self._query(read)
        if enterprise is None:
            raise SftlabError(f"enterprise {enterprise_id!r} is not in the database")
        pushes = [dict(row, created_at=str(row["created_at"])) for row in rows]
        models = {version: model_importance(version) for version in sorted({p["model_version"] for p in pushes})}
        ent = dict(enterprise)
        ent["registered_on"] = str(ent.get("registered_on"))
        return {"enterprise": ent, "pushes": pushes, "models": models}


def model_importance(model_version: str) -> dict:
    """What the run that made the pushes trained: strategy kind and its card's Strategy section (importance units)."""
    path = Path(model_version)
    run_dir = path if (path / "model").is_dir() else path.parent
    card = run_dir / "model" / "README.md" if (run_dir / "model").is_dir() else path / "README.md"
    section = card_section(card, "## Strategy")
    return {"run_dir": str(run_dir) if section else None, "strategy": section or None}
