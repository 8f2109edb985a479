"""A minimal Django project the end-to-end tests serve with uvicorn or daphne.

Everything that differs between test runs comes from environment variables
set by :mod:`tests.e2e.harness`; see :mod:`tests.e2e.project.settings`.
"""
