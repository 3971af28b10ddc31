"""The two ways a data job reports a problem, one line each.

A bad flag or path is a `UsageError` (exit 2, raised before any work); a
job that ran but must not be trusted (it produced nothing, or an input was
truncated or corrupt) is a `JobFailed` (exit 1), raised here or inside a
pipeline's DoFn or source (`input_error`); `pipelines.options.main` reports
either as `error: ...`. Its own module so that sources (`pipelines.corpus`)
can raise them without importing the flag parsing that imports them.
"""

from __future__ import annotations

from configs.schema import ConfigError


class UsageError(ConfigError):
    """A bad flag or argument: reported as one line before any work (exit 2).

    A `ConfigError`, so callers that catch config problems catch it too.
    """


class JobFailed(Exception):
    """The job ran but its output must not be used (exit 1): it produced
    nothing, or an input was truncated or corrupt. One line, no traceback."""


# Marks the first line of a `JobFailed` raised inside a pipeline, so `main`
# finds it again in the exception a runner wraps it in.
_FAILED_MARK = "[job-failed] "


def input_error(message: str) -> JobFailed:
    """A `JobFailed` to raise inside a DoFn/source; `main` reports its line."""
    return JobFailed(_FAILED_MARK + message)


def _failure_line(error: BaseException) -> str | None:
    """The one line of a `JobFailed` raised in a worker, or None."""
    for text in (str(error), repr(error)):
        at = text.find(_FAILED_MARK)
        if at >= 0:
            line = text[at + len(_FAILED_MARK) :].splitlines()[0]
            return line.split(" [while running", 1)[0].rstrip("\\'\" ")
    return None
