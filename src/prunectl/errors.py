"""Errors a user can cause and fix: the CLI prints their message on one line and exits 2."""

import errno
import os


class UserError(Exception):
    """Bad input: a recipe, an option, a file or a model the user can correct.

    The message is one line that names the problem and the fix.  Raising it must leave every
    file already computed untouched.
    """

    exit_code = 2


#: what the disk or the permissions answer to a write: the user's to fix, not an internal error
_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def write_refused(error: BaseException) -> UserError | None:
    """A refused write (disk full, read-only or unwritable folder) as one line naming the path;
    ``None`` for any other error."""
    if not isinstance(error, OSError) or error.errno not in _FULL | _DENIED:
        return None
    where = error.filename or "a project file"
    fix = ("free some space (or choose a folder on another disk)" if error.errno in _FULL
           else "make the folder writable or choose another one")
    return UserError(f"cannot write {where}: {error.strerror or os.strerror(error.errno)}; "
                     f"{fix}, then re-run the same command")
