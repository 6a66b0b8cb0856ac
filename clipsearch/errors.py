"""The errors a user can cause, each carrying the exit code the CLI gives it.

Every library error derives from `ClipsearchError`, so the command line maps
them in one place (cli/__init__.py) and anything else is, by definition, a bug: an
"internal error" with its own exit code. This module imports nothing of ours.
"""

from __future__ import annotations

import math

EXIT_OK = 0
EXIT_NOTHING = 1  # nothing to search or nothing found
EXIT_BAD_INPUT = 2  # the user asked for something that cannot be done as given
EXIT_INDEX = 3  # the index cannot be used as asked (another model, not an index, read-only, disk full)
EXIT_BUSY = 4  # another clipsearch is writing to the index
EXIT_INTERNAL = 70  # a bug: "internal error ... please report" (EX_SOFTWARE of sysexits.h)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_PIPE_CLOSED = 141  # the reader of stdout went away (`| head -1`): 128 + SIGPIPE, as `ls | head` gives
EXIT_TERMINATED = 143  # SIGTERM (kill, systemd, a container stopping): 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds as Ctrl-C does: work done so far is committed."""


class ClipsearchError(Exception):
    """An error the user can act on; the message says why and what to do."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(ClipsearchError):
    """Bad arguments, files or queries."""

    exit_code = EXIT_BAD_INPUT


class NothingFoundError(ClipsearchError):
    """Nothing to work on: no index yet, an empty index or folder."""

    exit_code = EXIT_NOTHING


class MissingIndexError(NothingFoundError):
    """No index at the path given (or an empty SQLite file there): exit 1, as the README's table says."""


class IndexUnusableError(ClipsearchError):
    """The index exists but cannot be used as asked."""

    exit_code = EXIT_INDEX


class IndexBusyError(ClipsearchError):
    """Another clipsearch process holds the index's writer lock."""

    exit_code = EXIT_BUSY


def check_finite(value: float | None, what: str) -> None:
    """Refuse NaN and infinities (they compare false with everything and are not JSON)."""
    if value is not None and not math.isfinite(value):
        raise BadInputError(f"{what} must be a finite number, not {value}.")
