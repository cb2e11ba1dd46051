"""The one exception type a user sees as a message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (recipe, data file, model path, CLI flag).

    The CLI prints ``str(err)`` on one line and exits with status 2. Raise it with a message
    that names the file (and line) or the field the user has to fix.
    """


def write_error(path, err: BaseException, what: str, kept: str) -> UserError:
    """A failed write (disk full, quota, read-only folder) as one line naming `path` and what was kept.

    Writers report a full disk in different words (torch: "unexpected pos ..."), so free space is
    checked too; the partial file still exists when this is called, so a full disk shows as ~0 free.
    """
    import shutil
    from pathlib import Path

    reason = err.strerror if isinstance(err, OSError) and err.strerror else (str(err).splitlines() or [""])[0]
    parent = Path(path)
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        if shutil.disk_usage(parent).free < 16 * 2**20:
            reason = "no space left on device"
    except OSError:
        pass
    return UserError(f"{path}: could not write {what} ({reason or type(err).__name__}); {kept}. Free disk "
                     "space if it is full, then run the same command to resume")
