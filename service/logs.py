"""Logging: the request being served (its id, and what handling it learnt: model kind,
device), carried in a context variable so that every log line of the service can name it;
the text and JSON line formats; the logging configuration of `gradiag serve` and `worker`."""

import copy
import datetime
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]


@dataclass
class RequestContext:
    """One request: its id, and fields for its access log line that handling adds."""

    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)


# Tasks and threads started while serving a request copy it (asyncio does; the in-process
# backend's run threads are handed a copy), so their log lines name the request too.
_current: ContextVar[RequestContext | None] = ContextVar("gradiag_request", default=None)


def current() -> RequestContext | None:
    return _current.get()


def request_id() -> str | None:
    """The id of the request being served here; None outside any."""
    context = _current.get()
    return context.request_id if context is not None else None


@contextmanager
def bound(request_id: str | None) -> Iterator[RequestContext | None]:
    """Serve (or run for) the request `request_id`, within the block; None: no request."""
    if request_id is None:
        yield None
        return
    context = RequestContext(request_id)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def annotate(**fields: Any) -> None:
    """Add fields to the current request's access log line; nothing outside a request."""
    context = _current.get()
    if context is not None:
        context.fields.update(fields)


class RequestIdFilter(logging.Filter):
    """Sets `request_id` on every record: the request being served where it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id()
        return True


class TextFormatter(logging.Formatter):
    """`time level logger message request_id=...` (the id where there is one)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", None)
        return f"{line} request_id={rid}" if rid else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, the record's `fields`
    (`extra={"fields": {...}}`), and `exc`, the traceback, where there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        document.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exc"] = record.exc_text
        return orjson.dumps(document, default=str).decode()


def dict_config(base: dict[str, Any], log_format: LogFormat, level: str) -> dict[str, Any]:
    """`base` (a `logging.config.dictConfig` document, e.g. uvicorn's) with the `gradiag`
    loggers writing to stderr in `log_format`, each line with its request id; with JSON
    logs, the lines of `base`'s `default` formatter (uvicorn's own) are JSON too."""
    config = copy.deepcopy(base)
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    formatters = config.setdefault("formatters", {})
    formatters["gradiag"] = {"()": f"{__name__}.{formatter.__name__}"}
    config.setdefault("filters", {})["request_id"] = {"()": f"{__name__}.RequestIdFilter"}
    handlers = config.setdefault("handlers", {})
    handlers["gradiag"] = {
        "class": "logging.StreamHandler",
        "formatter": "gradiag",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    if log_format == "json" and "default" in formatters:
        formatters["default"] = dict(formatters["gradiag"])
        for handler in handlers.values():
            if handler.get("formatter") == "default":
                handler["filters"] = ["request_id"]
    loggers = config.setdefault("loggers", {})
    loggers["gradiag"] = {"handlers": ["gradiag"], "level": level.upper(), "propagate": False}
    return config
