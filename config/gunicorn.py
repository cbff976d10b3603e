"""gunicorn settings for the web process: `gunicorn -c config/gunicorn.py config.wsgi:application`.

The access log prints each request's path; reset and unsubscribe links carry
their token in the path, so the logger redacts it (ops/redaction.py).
"""

from __future__ import annotations

import datetime
from typing import Any

from gunicorn.glogging import Logger

from ops.redaction import redact

# Access log lines go to stdout with the rest of the process's output.
accesslog = "-"

# Atoms of the access log format that can hold a path or a URL.
_URL_ATOMS = ("r", "U", "f", "{raw_uri}e", "{path_info}e", "{http_referer}e", "{referer}i")


class RedactingLogger(Logger):
    """gunicorn's logger, with the credential in reset and unsubscribe links cut out of access lines."""

    def atoms(self, resp: Any, req: Any, environ: dict, request_time: datetime.timedelta) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for key in _URL_ATOMS:
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms


logger_class = RedactingLogger
