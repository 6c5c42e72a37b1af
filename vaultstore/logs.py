"""JSON-lines logging: one object per line with level, time, msg and fields.

Modules log through ``logging.getLogger(__name__)`` with lazy ``%`` arguments and
put structured data in ``extra={"event": "...", ...}``. Only the CLI calls
:func:`configure`. Fields are copied verbatim, so callers must never pass a
secret in ``extra``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

_STANDARD = set(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one JSON object: level, time, logger, msg, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname.lower(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "info", log_file: str | None = None) -> None:
    """Send vaultstore's logs as JSON lines to stderr or to ``log_file``."""
    stream: IO[str]
    if log_file:
        # Created 0600 whatever the umask: logs name agents and files.
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        stream = sys.stderr
        handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLinesFormatter())
    root = logging.getLogger("vaultstore")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
