"""The one base class of the errors a user can fix.

A ``UserError``'s message is one sentence that says what is wrong and what to do about it. Every
command-line program catches this one type, prints the sentence and exits with status 2; anything
else is a bug and keeps its traceback. Each layer derives its own classes from it (``StoreError``,
``DatasetError``, ``TrainingError``, ...), so that a caller can catch the narrow type or the base.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; ``str(error)`` is the sentence to print."""

    #: the exit status a command-line program ends with for this error
    exit_code = 2
