"""The one base class of every error a user can cause.

Bad input, a missing or corrupt file, a wrong config key, weights that cannot be had
offline: each raises a ``CaptionerError`` subclass whose message names the thing and the
fix. The CLI prints those as one line and exits 2; anything else is a bug and keeps its
traceback. A leaf module: it imports nothing of the package.

The subclasses here are the generic kinds; modules add their own (``DatasetError``,
``ConfigError``, ``ModelDirectoryError``, ...). Each also derives from the built-in
exception it refines, so ``except ValueError`` keeps working.
"""


class CaptionerError(Exception):
    """An error the user can fix; the message says what was wrong and what to do."""


class InvalidInputError(CaptionerError, ValueError):
    """An argument, option, config value or file content that cannot work."""


class UnknownNameError(CaptionerError, KeyError):
    """A name that is not registered (an encoder, decoder or objective)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would print the message quoted


class MissingFileError(CaptionerError, FileNotFoundError):
    """A file or folder the user named that does not exist."""


class MissingDependencyError(CaptionerError, RuntimeError):
    """An optional dependency (an extra such as 'serve' or 'onnx', Java) that is not installed."""
