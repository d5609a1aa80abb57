"""`sftlab serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine.

config.py (settings, API keys), schemas.py (request bodies), errors.py (OpenAI error shape),
accesslog.py (one JSON line per request), app.py (endpoints), server.py (uvicorn, graceful shutdown).
"""
