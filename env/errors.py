"""The exception types that end a run with one line instead of a traceback.

UserInputError: a user mistake (a config value, a file, a name out of range); entry scripts print it and exit
with status 2. RunStopped: a run that cannot or should not go on (a stop signal, a diverged loss), printed with
what to do next and ending with its own exit status. Any other exception is a bug and keeps its traceback.
They live here, at the bottom of the import graph (entry scripts -> utils -> datasets -> env, models), so that
every layer can raise them.
"""

import difflib


class UserInputError(ValueError):
    pass


class RunStopped(Exception):
    """exit_code: 128 + the signal's number after a stop signal (130 SIGINT, 143 SIGTERM, the shell's convention),
    1 for a run that failed (training diverged)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def did_you_mean(name: str, choices, cutoff: float = 0.6) -> str:
    """' Did you mean: a, b?' for the closest choices to a misspelled name, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=cutoff)
    return f" Did you mean: {', '.join(close)}?" if close else ""
