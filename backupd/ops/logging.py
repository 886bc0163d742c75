"""loguru sinks: readable lines on stderr by default, JSON on request, a log file."""

from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

HUMAN_FORMAT = "{time:YYYY-MM-DD HH:mm:ss} [{process}] {level: <7} {extra[session]} {message}"


def setup_logging(*, json: bool = False, log_file: Path | None = None, level: str = "INFO") -> None:
    """Replace loguru's default sink. ``extra[session]`` defaults to ``-``."""
    logger.remove()
    logger.configure(extra={"session": "-"})
    logger.add(sys.stderr, level=level, format=HUMAN_FORMAT, serialize=json, backtrace=False, diagnose=False)
    if log_file is not None:
        logger.add(str(log_file), level=level, format=HUMAN_FORMAT, serialize=json, backtrace=False, diagnose=False)
