"""One exception type for every error a user can cause.

The CLI turns it into a single line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


class DrawError(Exception):
    """A problem the user can fix (bad config, missing run, corrupt file...)."""

    exit_code = 1
