"""`sftlab policy simulate|import|build-data|baselines|evaluate|push|api|demo`: the policy-push application.

Every subcommand takes `--db URL` (any SQLAlchemy URL; default $SFTLAB_DB_URL, else the SQLite file
sftlab_policy.db). Heavy imports happen inside the handlers. The commands that load a model (evaluate, push, api,
demo) run code shipped with it (config.json's `auto_map`) only with `--trust-remote-code`.
"""

from __future__ import annotations

import argparse

from sftlab.commands.generate import add_trust_argument


def register(registry) -> None:
    group = registry.group("policy")
    add = lambda name, help_text, func: _with_db(group.add_parser(name, help=help_text, description=help_text), func)

    p = add("simulate", "generate a seeded simulated world (enterprises, policies, behaviour, true interest)", handle_simulate)
    p.add_argument("--events", type=int, help="size the world for about this many events (overrides --enterprises/--policies)")
    p.add_argument("--enterprises", type=int, default=300)
    p.add_argument("--policies", type=int, default=400)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--start", default="2025-01-01", help="first day of the simulated period")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-dir", help="LawRefBook JSONL files whose regulation titles seed the policy summaries")
    p.add_argument("--csv-dir", help="also export the tables as CSV files here")

    p = add("import", "import CSV files (enterprises, policies, events, pushes) with a rejects file", handle_import)
    p.add_argument("path", help="a directory with <table>.csv files, or one CSV file (see --table)")
    p.add_argument("--table", choices=["enterprises", "policies", "events", "pushes"], help="table of a single file (default: its name)")
    p.add_argument("--rejects-dir", default="policy_rejects",
                   help="where each input file's rejected rows go: events_jan.csv -> events_jan.rejects.csv "
                        "(an import of it without rejected rows removes that file)")

    p = add("build-data", "time split + Chinese 是/否 and next-category training files + held-out candidates", handle_build)
    p.add_argument("--out", default="runs/policy/data")
    p.add_argument("--cutoff", help="YYYY-MM-DD; default: the date before which 80%% of the policies were published")
    p.add_argument("--max-train", type=int, default=2000, help="balanced 是/否 training examples at most (at least 12)")
    p.add_argument("--max-eval-enterprises", type=int, help="evaluate on a random subset of the enterprises")
    p.add_argument("--eval-group", choices=["all", "cold", "active"], default="all",
                   help="evaluate only cold-start (fewer than 3 clicks before the cut-off) or only active enterprises")
    p.add_argument("--category-limit", type=int, default=1000, help="next-category examples at most")
    p.add_argument("--seed", type=int, default=0)

    for name, help_text, func in (("baselines", "evaluate the baselines on the held-out candidates", handle_evaluate),
                                  ("evaluate", "evaluate a fine-tuned run against the baselines", handle_evaluate)):
        p = add(name, help_text, func)
        p.add_argument("--data", default="runs/policy/data", help="directory written by build-data")
        p.add_argument("--out", help="report directory (default: <data>/baselines, or <model>/policy_eval)")
        p.add_argument("--k", type=int, default=5)
        p.add_argument("--batch-size", type=int, default=8)
        if name == "evaluate":
            p.add_argument("--model", required=True, help="run dir (or model/adapter dir) trained on yesno_train.jsonl")
            _precision_arg(p)
            add_trust_argument(p)

    _register_serving(add)


def _register_serving(add) -> None:
    """push, api and demo: the subcommands that put a fine-tuned model to work."""
    p = add("push", "write each enterprise's top-K new policies to the pushes table (idempotent, resumable)", handle_push)
    _scorer_args(p)
    p.add_argument("--since", required=True, help="YYYY-MM-DD: consider policies published since this day (the window)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--now", help="YYYY-MM-DD: decision time (default: the clock; use it for simulated worlds)")
    p.add_argument("--batch-enterprises", type=int, default=64, help="enterprises per committed batch")

    p = add("api", "serve the HTTP API (recommend, feedback, health)", handle_api)
    _scorer_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--now", help="YYYY-MM-DD: a fixed clock (for simulated worlds)")

    p = add("demo", "the whole application end to end on a small simulated world", handle_demo)
    p.add_argument("--workdir", default="runs/policy-demo")
    p.add_argument("--model", default="gemma-3-270m", help="model.path to fine-tune (embedded default, or a local dir)")
    p.add_argument("--full", action="store_true", help="a larger world and longer training than the quick default")
    add_trust_argument(p)


def _with_db(parser: argparse.ArgumentParser, func) -> argparse.ArgumentParser:
    parser.add_argument("--db", help="SQLAlchemy URL (default: $SFTLAB_DB_URL, else sqlite:///sftlab_policy.db)")
    parser.set_defaults(func=func)
    return parser


def _scorer_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="fine-tuned run dir (or model/adapter dir)")
    source.add_argument("--baseline", choices=["popularity", "category_frequency"], help="rank with a baseline instead")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    _precision_arg(parser)
    add_trust_argument(parser)


def _precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="score in fp32 or under bf16 autocast (about twice as fast on CPUs with AMX)")


def _score_fn(args):
    """(score_fn over candidate rows, model version string)."""
    if args.batch_size < 1:
        from sftlab.errors import SftlabError

        raise SftlabError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.baseline:
        from sftlab.policy import baselines

        return getattr(baselines, args.baseline)().score, f"baseline:{args.baseline}"
    from sftlab.policy.scoring import ModelScorer

    scorer = ModelScorer(args.model, batch_size=args.batch_size, precision=args.precision,
                         trust_remote_code=args.trust_remote_code)
    return (lambda rows: scorer([row["prompt"] for row in rows])), scorer.version


def handle_simulate(args) -> int:
    from datetime import date

    from sqlalchemy import func, select

    from sftlab.errors import SftlabError
    from sftlab.policy.catalog import reference_files
    from sftlab.policy.db import Enterprise, open_db
    from sftlab.policy.importer import check_directory_option
    from sftlab.policy.simulate import WorldSpec, simulate, write_world

    sizes = {"--days": args.days} | ({"--events": args.events} if args.events is not None else
                                      {"--enterprises": args.enterprises, "--policies": args.policies})
    for option, value in sizes.items():  # checked before the database is opened (or created)
        if value < 1:
            raise SftlabError(f"{option} must be at least 1, got {value}")
    if args.seed < 0:
        raise SftlabError(f"--seed must be at least 0, got {args.seed}")
    if args.csv_dir:
        check_directory_option(args.csv_dir, "--csv-dir")
    try:
        start = date.fromisoformat(args.start)
    except ValueError:
        raise SftlabError(f"--start {args.start!r} is not a date (YYYY-MM-DD)") from None
    if args.reference_dir:
        reference_files(args.reference_dir)
    engine = open_db(args.db)
    with engine.connect() as conn:
        existing = conn.execute(select(func.count()).select_from(Enterprise)).scalar()
    if existing:
        raise SftlabError(f"--db {engine.url.render_as_string(hide_password=True)} already holds {existing} enterprises; "
                          "simulate into an empty database")
    common = {"start": start, "days": args.days, "reference_dir": args.reference_dir}
    spec = (WorldSpec.for_events(args.events, seed=args.seed, **common) if args.events is not None else
            WorldSpec(n_enterprises=args.enterprises, n_policies=args.policies, seed=args.seed, **common))
    counts = write_world(engine, simulate(spec))
    print("simulated: " + ", ".join(f"{n} {table}" for table, n in counts.items()))
    if args.csv_dir:
        from sftlab.policy.importer import export_csv

        export_csv(engine, args.csv_dir)
        print(f"CSV files in {args.csv_dir}")
    return 0


def handle_import(args) -> int:
    from pathlib import Path

    from sftlab.errors import SftlabError
    from sftlab.policy.db import TABLES, open_db
    from sftlab.policy.importer import import_csv, import_directory

    path = Path(args.path)
    if not path.exists():
        raise SftlabError(f"{path}: no such file or directory")
    if path.is_dir() and args.table:
        raise SftlabError(f"--table {args.table}: {path} is a directory, whose files are named after their tables; "
                          "give --table with one CSV file")
    table = args.table or path.stem
    if path.is_file() and table not in TABLES:
        raise SftlabError(f"{path}: its name does not say its table; pass --table enterprises|policies|events|pushes")
    engine = open_db(args.db)
    if path.is_dir():
        summaries = import_directory(engine, path, args.rejects_dir)
    else:
        summaries = [import_csv(engine, table, path, args.rejects_dir)]
    for s in summaries:
        where = f" (reasons in {s['rejects_file']})" if s["rejects_file"] else ""
        print(f"{s['table']}: {s['rows']} rows, {s['imported']} imported, {s['rejected']} rejected{where}")
    return 0


def handle_build(args) -> int:
    from sftlab.policy.db import open_db
    from sftlab.policy.examples import build_data

    manifest = build_data(open_db(args.db), args.out, args.cutoff, args.max_train, args.max_eval_enterprises,
                          args.category_limit, seed=args.seed, eval_group=args.eval_group)
    print(f"cut-off {manifest['cutoff']}: {manifest['yesno_train']} + {manifest['yesno_valid']} 是/否 examples, "
          f"{manifest['eval_candidates']} held-out candidates ({manifest['eval_positives']} acted on) in {args.out}")
    return 0


def handle_evaluate(args) -> int:
    from pathlib import Path

    from sftlab.policy.db import open_db
    from sftlab.policy.evaluate import format_table, run_evaluation

    model = getattr(args, "model", None)
    out = args.out or (Path(model) / "policy_eval" if model else Path(args.data) / "baselines")
    results, report = run_evaluation(open_db(args.db), args.data, out, model, args.k, args.batch_size,
                                     getattr(args, "precision", "fp32"), getattr(args, "trust_remote_code", False))
    print(format_table(results, args.k))
    print(f"report: {report}")
    return 0


def handle_push(args) -> int:
    from sftlab.policy.db import open_db
    from sftlab.policy.features import parse_cutoff
    from sftlab.policy.push import push

    score_fn, version = _score_fn(args)
    now = parse_cutoff(args.now, "--now") if args.now else None
    summary = push(open_db(args.db), score_fn, parse_cutoff(args.since, "--since"), args.top_k, version, now,
                   args.batch_enterprises)
    print(f"window {summary.window}: {summary.pushes_written} pushes for {summary.pushed_enterprises} enterprises "
          f"({summary.candidates_scored} candidates scored in {summary.batches} batches; "
          f"{summary.skipped_done} enterprises already done)")
    return 0


def handle_api(args) -> int:
    import uvicorn

    from sftlab.errors import SftlabError
    from sftlab.policy.api import create_app
    from sftlab.policy.db import open_db
    from sftlab.policy.features import parse_cutoff
    from sftlab.serve.server import listening_socket, socket_url

    if not 0 <= args.port <= 65535:
        raise SftlabError(f"--port must be between 0 and 65535, got {args.port}")
    clock = None
    if args.now:
        fixed = parse_cutoff(args.now, "--now")
        clock = lambda: fixed  # noqa: E731
    engine = open_db(args.db)
    sock = listening_socket(args.host, args.port, "--port")  # a port in use fails here, before the model loads
    try:
        score_fn, version = _score_fn(args)
        print(f"policy API on {socket_url(args.host, sock)}", flush=True)
        uvicorn.Server(uvicorn.Config(create_app(engine, score_fn, version, clock))).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def handle_demo(args) -> int:
    from sftlab.policy.demo import run_demo

    run_demo(args.workdir, args.model, quick=not args.full, trust_remote_code=args.trust_remote_code)
    return 0
