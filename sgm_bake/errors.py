"""User-facing errors.

An `SGMError` is bad input, not a bug: the CLI prints its message as one line and exits non-zero
without a traceback. Messages name the problem and the fix.
"""

from __future__ import annotations


class SGMError(Exception):
    """A problem with the user's input that the user can fix."""
