"""User-facing errors.

An `SGMError` is bad input, not a bug: the CLI prints its message as one line and exits non-zero
without a traceback. Messages name the problem and the fix.
"""

from __future__ import annotations


class SGMError(Exception):
    """A problem with the user's input that the user can fix."""


class TamperedError(SGMError):
    """A baked folder no longer matches the sha256 its record holds (changed, missing or
    unrecorded files). Every command that reads or adds to a baked folder stops on it, with
    exit code 4, before writing anything."""
