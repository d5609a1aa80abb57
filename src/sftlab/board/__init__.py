"""`sftlab board`: a local, offline web interface for runs (new run, live curves, compare, evaluate, chat, policy push).

`app.create_app(BoardSettings(...))` builds the FastAPI app; `runs.RunManager` launches training and
evaluation as `sftlab` subprocesses; `forms` turns the new-run form into an ordinary YAML run config.
"""
