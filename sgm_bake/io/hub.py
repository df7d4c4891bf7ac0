"""Whether the Hugging Face Hub can be reached, decided at once.

huggingface_hub retries a failed connection five times with backoff (about 25 seconds, a warning
line per try) and then raises an error about a missing local file, which names the wrong cause.
Every command that would fetch from the Hub asks here first: `HF_HUB_OFFLINE` (or
`TRANSFORMERS_OFFLINE`) set, or one connection attempt to the endpoint without retries that
fails, is the answer, in words, and the command falls back to the local cache or stops with one
line naming the real cause.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
"""Seconds to wait for the Hub to accept a connection and answer once."""


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message (httpx wraps the socket error that names the cause)."""
    for _ in range(10):  # chains are short; the bound only guards against a cycle
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:120]


def unreachable() -> str | None:
    """None when the Hub answers; else why it cannot be used, as a phrase ("HF_HUB_OFFLINE is
    set", "the Hub at https://huggingface.co cannot be reached ([Errno -2] Name or service not
    known)")."""
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT)
    except Exception as exc:  # httpx/requests connection errors and timeouts: one try, no retry
        logger.debug("the Hub at %s did not answer: %r", endpoint, exc)
        return f"the Hub at {endpoint} cannot be reached ({_root_cause(exc)})"
    return None
