"""Moved to `tests/helpers.py`; this re-export keeps branches written against the old name
working until they are merged, then goes."""

from tests.helpers import CHAT_TEMPLATE, byte_tokenizer, synthetic_expertise, tiny_llava

__all__ = ["CHAT_TEMPLATE", "byte_tokenizer", "synthetic_expertise", "tiny_llava"]
