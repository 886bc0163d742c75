"""Message digests by rsync name, including md4 where a library provides it.

md4 is missing from hashlib on OpenSSL 3; pycryptodomex supplies it when
installed. Nothing here is home-made cryptography.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from typing import Any


@functools.cache
def _md4_factory():
    """hashlib's md4 if OpenSSL has it, else pycryptodomex's, else None.

    Found on first use: pycryptodomex loads cffi and pycparser, ~4 MB that a
    session without md4 never needs.
    """
    try:
        hashlib.new("md4")
        return lambda data=b"": hashlib.new("md4", data)
    except ValueError:
        pass
    try:
        from Cryptodome.Hash import MD4
    except ImportError:  # pragma: no cover - depends on the installation
        return None
    return lambda data=b"": MD4.new(data)


def new_digest(name: str, data: bytes = b"") -> Any:
    """Return a hashlib-style object for ``name`` (md4, md5, sha1, sha256, sha512).

    Raises:
        ValueError: unknown name, or md4 without a provider.
    """
    if name == "md4":
        md4 = _md4_factory()
        if md4 is None:
            raise ValueError("md4 is not available")
        return md4(data)
    if name not in ("md5", "sha1", "sha256", "sha512"):
        raise ValueError(f"unknown digest {name!r}")
    return hashlib.new(name, data)


@functools.cache
def have_md4() -> bool:
    """True when an md4 implementation is importable (checked without importing pycryptodomex)."""
    if "md4" in hashlib.algorithms_available:
        return True
    return importlib.util.find_spec("Cryptodome") is not None
