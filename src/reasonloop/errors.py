"""The one exception type a user sees as a message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (recipe, data file, model path, CLI flag).

    The CLI prints ``str(err)`` on one line and exits with status 2. Raise it with a message
    that names the file (and line) or the field the user has to fix.
    """
