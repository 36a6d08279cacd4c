"""The one exception type for user mistakes (a config value, a file, a name out of range).

Entry scripts print its message as one line and exit with status 2, without a traceback; any other
exception is a bug and keeps its traceback. It lives here, at the bottom of the import graph
(entry scripts -> utils -> datasets -> env, models), so that every layer can raise it.
"""

import difflib


class UserInputError(ValueError):
    pass


def did_you_mean(name: str, choices, cutoff: float = 0.6) -> str:
    """' Did you mean: a, b?' for the closest choices to a misspelled name, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=cutoff)
    return f" Did you mean: {', '.join(close)}?" if close else ""
