"""Errors a user can cause and fix: the CLI prints their message on one line and exits 2."""


class UserError(Exception):
    """Bad input: a recipe, an option, a file or a model the user can correct.

    The message is one line that names the problem and the fix.  Raising it must leave every
    file already computed untouched.
    """

    exit_code = 2
