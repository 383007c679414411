"""Log output: one JSON object per line (containers, log shippers) or readable text (a terminal).

The access line's fields travel in ``record.fields`` (``extra={"fields": {...}}``): the JSON
formatter puts them at the top level, the text formatter as ``key=value``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields:
            record.message = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)
        return super().formatMessage(record)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text.isprintable() and " " not in text and '"' not in text:
        return text
    # Quoted with JSON's escapes: a client's path may hold a line break or a quote, which
    # written as is would forge a line (or a field) of the log.
    return orjson.dumps(text).decode()


def setup_logging(level: str, log_format: str) -> None:
    """Configure the root logger (and uvicorn's) for ``log_format``: json, text or auto."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    # The logging HOWTO's optimisations: no caller lookup (a stack walk per line), no thread or
    # process names; an access line per request made them a visible cost in the benchmark.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
