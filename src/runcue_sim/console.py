"""The simulator's rich console: it goes quiet, instead of exiting, when its reader goes away."""

from __future__ import annotations

import os

from rich.console import Console

__all__ = ["QuietOnClose"]


class QuietOnClose(Console):
    """A console that stops writing when its output is closed (``runcue-sim -v | head``).

    rich's own reaction to a broken pipe is ``SystemExit(1)`` raised from whatever printed;
    inside an event listener that would tear the cue down from the middle of the scheduler.
    This one sets :attr:`output_closed` instead, and the simulator ends the run itself.
    """

    output_closed = False

    def on_broken_pipe(self) -> None:
        """Note the closed output, write nothing more, and point the stream at /dev/null."""
        self.output_closed = True
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:  # so that the interpreter's last flush at exit does not complain either
            os.dup2(devnull, self.file.fileno())
        except (OSError, ValueError):
            pass
        finally:
            os.close(devnull)
