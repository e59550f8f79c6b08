"""structlog, configured once by the CLI: readable lines on the console, JSON lines in
``<data dir>/logs/<name>.jsonl``.

Writing happens on a thread, never on the event loop. The one line per request is the exception
to structlog: ``request_line`` formats it on the loop in a few microseconds (``json.dumps`` and an
f-string) and the thread only writes it, because a writer thread that formats holds the GIL for
hundreds of microseconds a line and the event loop waits for it on every request.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import json
import logging
import logging.handlers
import queue
import sys
from pathlib import Path
from typing import Any

import structlog

_configured = False
_listener: logging.handlers.QueueListener | None = None
_queue: queue.SimpleQueue[logging.LogRecord] | None = None
_request_level = logging.INFO
_console_colors = False


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread untouched; structlog formats them there."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Preformatted(logging.Formatter):
    """Writes a record's ready-made line for this handler (``request_line``), else lets
    structlog format it."""

    def __init__(self, kind: str, inner: logging.Formatter) -> None:
        super().__init__()
        self.kind = kind
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        lines = getattr(record, "herd_lines", None)
        if lines is not None:
            return lines[self.kind]
        return self.inner.format(record)


_BATCH_S = 0.05  # request lines are handed to the log thread in batches this often
_MAX_PENDING = 5000  # lines held for the next batch; beyond it they are counted and dropped


class _RequestLines:
    """Request lines waiting for the next batch: one queue put and one write per batch, so the log
    thread needs the GIL briefly, and a log thread that falls behind cannot grow memory."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.json: list[str] = []
        self.dropped = 0
        self.flush_handle: Any = None

    def add(self, console: str, line: str) -> None:
        if len(self.json) >= _MAX_PENDING:
            self.dropped += 1
            return
        self.console.append(console)
        self.json.append(line)
        if self.flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script): write at once
                self.flush()
                return
            self.flush_handle = loop.call_later(_BATCH_S, self.flush)

    def flush(self) -> None:
        self.flush_handle = None
        if not self.json or _queue is None:
            return
        if self.dropped:
            note = f"{self.dropped} request log lines dropped: the log writer fell behind"
            self.console.append(note)
            self.json.append(json.dumps({"event": note, "level": "warning",
                                         "logger": "herd.request"}))
            self.dropped = 0
        record = logging.LogRecord("herd.request", logging.INFO, "", 0, "request", None, None)
        record.herd_lines = {  # type: ignore[attr-defined]
            "console": "\n".join(self.console), "json": "\n".join(self.json)}
        self.console, self.json = [], []
        _queue.put(record)


_lines = _RequestLines()


def request_line(fields: dict[str, object]) -> bool:
    """Log one finished request at INFO: formatted here in microseconds, written by the log thread
    in batches. False when logging is not set up, so the caller can use structlog instead."""
    if _queue is None or not _configured:
        return False
    if logging.getLogger().level > _request_level:
        return True
    now = dt.datetime.now(dt.UTC)
    stamp = now.isoformat().replace("+00:00", "Z")
    shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    _lines.add(
        f"{now:%Y-%m-%d %H:%M:%S} [info     ] request {' ' * 24}{shown}",
        json.dumps({"event": "request", **fields, "level": "info", "logger": "herd.request",
                    "timestamp": stamp}, default=str),
    )
    return True


def setup_logging(level: str, data_dir: Path | None, filename: str = "herd.jsonl") -> Path | None:
    """Console + JSON-lines file. Returns the log file path (None when no data dir is given)."""
    global _configured, _listener, _queue
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_herd", False):
            root.removeHandler(handler)
    if _listener is not None:
        _stop_listener()
        for handler in _listener.handlers:
            handler.close()
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_Preformatted("console",
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
            ],
        )
    ))
    handlers.append(console)
    path = None
    if data_dir is not None:
        path = Path(data_dir) / "logs" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", backupCount=14, encoding="utf-8", utc=True
        )
        file_handler.setFormatter(_Preformatted("json",
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
            )
        ))
        handlers.append(file_handler)
    # console and file writes happen on a thread, never on the event loop
    _queue = queue.SimpleQueue()
    queue_handler = _PassThroughQueueHandler(_queue)
    queue_handler._herd = True  # type: ignore[attr-defined]
    root.addHandler(queue_handler)
    _listener = logging.handlers.QueueListener(queue_handler.queue, *handlers)
    _listener.start()
    atexit.register(_stop_listener)
    root.setLevel(numeric)
    # aiohttp's access log duplicates our one line per request
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _configured = True
    return path


def _stop_listener() -> None:
    _lines.flush()
    if _listener is not None and getattr(_listener, "_thread", None) is not None:
        _listener.stop()
