"""Errors a user can cause and fix: the CLI prints their message on one line and exits 2."""

import errno
import os
import re


class UserError(Exception):
    """Bad input: a recipe, an option, a file or a model the user can correct.

    The message is one line that names the problem and the fix.  Raising it must leave every
    file already computed untouched.
    """

    exit_code = 2


#: what the disk or the permissions answer to a write: the user's to fix, not an internal error
_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
#: how Rust writers (safetensors, tokenizers) report an OS error: "... (os error 28)"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _errno(error: BaseException) -> int | None:
    if isinstance(error, OSError):
        return error.errno
    found = _RUST_OS_ERROR.search(str(error))
    return int(found.group(1)) if found else None


def write_refused(error: BaseException) -> UserError | None:
    """A refused write (disk full, read-only or unwritable folder) as one line naming the path
    (the error's ``filename``, which ``io.atomic_path`` sets); ``None`` for any other error."""
    code = _errno(error)
    if code not in _FULL | _DENIED:
        return None
    where = getattr(error, "filename", None) or "a file of this step"
    fix = ("free some space (or choose a folder on another disk)" if code in _FULL
           else "make the folder writable or choose another one")
    return UserError(f"cannot write {where}: {os.strerror(code)}; {fix}, then re-run the same "
                     "command")
