"""How every command runs: a failure is one line on stderr and a non-zero
exit status (2 for bad input), never a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from picogpt2.util.errors import PicoGPT2Error
from picogpt2.util.status import error


def run_cli(body: Callable[[], int], prog: str) -> int:
    """Run a command's body; expected failures become one line on stderr
    (nothing at all when stderr is closed, never a line on stdout)."""
    try:
        return body()
    except PicoGPT2Error as e:
        error(f"{prog}: error: {e}")
        return e.exit_status
    except KeyboardInterrupt:
        error(f"\n{prog}: interrupted")
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, as cat does
        quiet_stdout()
        return 0
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        error(f"{prog}: error: {where}{e.strerror or e}")
        return 1


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass
