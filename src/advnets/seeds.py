"""Seeds derived from integers: the same in every process, so ranks and resumed runs draw what they should."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int) -> int:
    """A 62-bit seed from integers, the same in every process (unlike hash() of mixed tuples)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2
