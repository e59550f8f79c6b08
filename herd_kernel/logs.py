"""structlog, configured once by the CLI: readable lines on the console, JSON lines in
``<data dir>/logs/<name>.jsonl``."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from pathlib import Path

import structlog

_configured = False
_listener: logging.handlers.QueueListener | None = None


class _PassThroughQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread untouched; structlog formats them there."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def setup_logging(level: str, data_dir: Path | None, filename: str = "herd.jsonl") -> Path | None:
    """Console + JSON-lines file. Returns the log file path (None when no data dir is given)."""
    global _configured, _listener
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
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
            ],
        )
    )
    handlers.append(console)
    path = None
    if data_dir is not None:
        path = Path(data_dir) / "logs" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.TimedRotatingFileHandler(
            path, when="midnight", backupCount=14, encoding="utf-8", utc=True
        )
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
        handlers.append(file_handler)
    # console and file writes happen on a thread, never on the event loop
    queue_handler = _PassThroughQueueHandler(queue.SimpleQueue())
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
    if _listener is not None and getattr(_listener, "_thread", None) is not None:
        _listener.stop()
