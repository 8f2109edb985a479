"""End-to-end tests: real ASGI server processes, real Redis, real websocket clients.

Run them (a redis-server binary on PATH is started and stopped for you, or set
``REDIS_URL``; the tests that stop or restart Redis skip with an external one)::

    /work/venv/bin/python -m pytest tests/e2e            # all of them
    /work/venv/bin/python -m pytest -m "not e2e"         # everything else
    /work/venv/bin/python -m pytest tests/e2e -k sigkill # one scenario

``harness.py`` starts the servers (uvicorn, or daphne), logs in over HTTP and
opens websocket clients; ``project/`` is the Django site they serve;
``conftest.py`` holds the fixtures. A failing test prints the servers' logs.
"""
