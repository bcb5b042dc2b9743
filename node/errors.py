"""Errors that reach the user as one clear line instead of a traceback."""


class UserError(Exception):
    """Bad input from the person at the keyboard: a path, an argument, a file's content."""
