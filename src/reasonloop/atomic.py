"""Atomic writes: a file or folder is written beside its destination, then renamed into place, so a kill at
any moment leaves the previous version or the new one, never a half-written one.

Temporary names start with a dot and end in `.tmp` (`.summary.json.x1y2.tmp`, `.model.x1y2.tmp`), which is
what `pipeline.clean_leftovers` removes after a killed run; `X.old` is the previous folder during the two
renames of `replace_folder`, and a reader that finds no `X` looks there (`checkpoint.read_checkpoint`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from reasonloop.errors import write_error


def _write_errors() -> tuple[type[BaseException], ...]:
    # A failed write shows as OSError, as RuntimeError from torch.save, or as safetensors' own error.
    from safetensors import SafetensorError

    return OSError, RuntimeError, SafetensorError


def write_text_atomic(path: str | Path, text: str, *, what: str | None = None, kept: str = "") -> Path:
    """Write `text` (UTF-8) to `path` through a temp file in the same folder and one rename.

    With `what` (e.g. "samples"), a failed write is one UserError naming the file and what was `kept`;
    without it, the OSError propagates (the command line reports a full disk in one line).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if what is None:
            raise
        raise write_error(path, err, what, kept) from None
    return path


@contextmanager
def replace_folder(out: str | Path, *, what: str | None = None, kept: str = "", first_wins: bool = False):
    """Yield an empty temp folder beside `out`; when the block ends without error it becomes `out`.

    An existing `out` is moved to `out.old` for the moment between the two renames, then removed.
    `first_wins`: if `out` appears meanwhile (another rank built the same thing), keep that one.
    With `what`, a failed write inside the block is one UserError naming `out` and what was `kept`.
    On any error the temp folder is removed and `out` is untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        try:
            yield tmp
        except _write_errors() as err:
            if what is None:
                raise
            raise write_error(out, err, what, kept) from None
        if first_wins:
            try:
                tmp.rename(out)
            except OSError:  # `out` exists: another process got there first, with the same content
                pass
            return
        old = out.with_name(out.name + ".old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
