"""The one base class of every error a user can cause.

Bad input, a missing or corrupt file, a wrong config key, weights that cannot be had
offline: each raises a ``CaptionerError`` subclass whose message names the thing and the
fix. The CLI prints those as one line and exits 2; anything else is a bug and keeps its
traceback. A leaf module: it imports nothing of the package.
"""


class CaptionerError(Exception):
    """An error the user can fix; the message says what was wrong and what to do."""
