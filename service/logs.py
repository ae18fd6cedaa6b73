"""Logging: plain text (default) or one JSON object per line (`server.log_format = "json"`).

Every record made while a request is served carries its request id (a context variable the guard sets), so
`jq 'select(.request_id == "...")'` finds everything about one request.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("messplus_request_id", default="")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """ts, level, logger, msg, request_id, every `extra=` field, and the exception text if any."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items()
                    if k not in _STANDARD and k not in out and not k.startswith("_")})  # extras never replace these
        if not out.get("request_id"):
            out.pop("request_id", None)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str) -> None:
    """Switch the root logger's handlers to `fmt` ("text" or "json") and tag records with the request id."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    # the PostgreSQL readers' pool logs each failed reconnect as a multi-line WARNING (a dozen in a 7 s outage);
    # the router's own line says the store is unavailable, and why, once
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    for handler in root.handlers:
        if not any(isinstance(f, _RequestId) for f in handler.filters):
            handler.addFilter(_RequestId())
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
