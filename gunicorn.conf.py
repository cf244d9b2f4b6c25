"""gunicorn settings, read from the environment (README: "Configuration")."""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
accesslog = "-"
# SIGTERM stops accepting, lets requests in flight finish, then exits.
graceful_timeout = 20
