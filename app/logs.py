"""The gateway's log output: level and format (JSON lines or text) from the settings.

Configures the `fleetgate` logger only (Ray, uvicorn and the libraries keep their own). In JSON each
record is one object per line: time, level, logger, message, the access-log fields of a request's
line (router/telemetry.py), `request_id` where the caller gave one, and the traceback of an error.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

import orjson

_HANDLER_NAME = "fleetgate"
current_request_id: ContextVar[str | None] = ContextVar("fleetgate_request_id", default=None)
"""The id of the request being served (set by the API for each inference request): every record logged
while serving it, an error's included, carries it."""


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id.get()
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        line.update(getattr(record, "access", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class Text(logging.Formatter):
    """The usual text line, with a request's access-log fields as compact JSON after the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        access = getattr(record, "access", None)
        return text if access is None else f"{text} {orjson.dumps(access, default=str).decode()}"


def configure_logging(level: str, log_format: str) -> None:
    """Send the `fleetgate` loggers to stderr at `level`, in `log_format` (enabled again if a library's
    `logging.config` disabled them); calling it again replaces the handler it installed rather than adding
    another."""
    logger = logging.getLogger("fleetgate")
    logger.handlers = [h for h in logger.handlers if h.get_name() != _HANDLER_NAME]
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonLines() if log_format == "json" else Text())
    handler.addFilter(_RequestId())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    for name, child in logging.root.manager.loggerDict.items():  # a library's dictConfig may have disabled them
        if name.startswith("fleetgate.") and isinstance(child, logging.Logger):
            child.disabled = False
