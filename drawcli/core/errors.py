"""One exception type for every error a user can cause.

The CLI turns it into a single line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


class DrawError(Exception):
    """A problem the user can fix (bad config, missing run, corrupt file...)."""

    exit_code = 1
    # Shown as "error: MESSAGE"; a stop that was asked for (Interrupted) is no error and shows its message alone.
    is_error = True
    # In a multi-process job only rank 0 shows user errors (every rank usually meets the same
    # one). An error that only this rank can meet (its own GPU, say) sets this to be shown too.
    every_rank = False


class RankError(DrawError):
    """An error of one process of a job that rank 0 does not see: shown by the rank that met it."""

    every_rank = True


class Interrupted(DrawError):
    """Training stopped on request (SIGINT/SIGTERM) after a checkpoint was written: not an error, so
    the line says what was saved and how to go on, without "error:"."""

    exit_code = 130  # the shell's convention for SIGINT
    is_error = False

    def __init__(self, step: int, detail: str = "last.pt written"):
        super().__init__(f"stopped at step {step}: {detail}")
        self.step = step
