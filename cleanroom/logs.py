"""Process logging for ``coordinator serve`` and ``node serve``: human-readable
lines by default, or one JSON object per line (``--log-format json`` or
``CLEANROOM_LOG_FORMAT=json``) for a log shipper."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Final

FORMATS: Final = ("text", "json")
ENV: Final = "CLEANROOM_LOG_FORMAT"
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "thread"[, "exception"]}``."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(log_format: str | None = None, *, level: int = logging.INFO) -> None:
    """Log to stderr in ``log_format`` (else $CLEANROOM_LOG_FORMAT, else text)."""
    chosen = log_format or os.environ.get(ENV) or "text"
    if chosen not in FORMATS:
        chosen = "text"
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if chosen == "json" else logging.Formatter(_TEXT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
