"""``hosts allow`` / ``hosts deny`` matching, as rsyncd's access.c does it.

Patterns: an address (``127.0.0.1``, ``::1``), a network (``10.0.0.0/8``,
``192.168.1.0/255.255.255.0``), a host-name wildcard (``*.example.com``), or
``*``. A name pattern is matched against the peer's reverse-resolved name,
looked up only when such a pattern is present.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Sequence


def _match_one(pattern: str, addr: str, host: Callable[[], str | None]) -> bool:
    if pattern == "*":
        return True
    try:
        peer = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        peer = None
    if peer is not None:
        if peer.version == 6 and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        try:
            if "/" in pattern:
                net_part, mask = pattern.split("/", 1)
                if "." in mask:
                    prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
                    pattern = f"{net_part}/{prefix}"
                return peer in ipaddress.ip_network(pattern, strict=False)
            return peer == ipaddress.ip_address(pattern)
        except ValueError:
            pass
    if any(c.isalpha() for c in pattern) or "*" in pattern or "?" in pattern:
        name = host()
        return bool(name) and fnmatch.fnmatchcase(name.lower(), pattern.lower())
    return False


def access_match(patterns: Sequence[str], addr: str, host: Callable[[], str | None]) -> bool:
    """True if any pattern matches the peer address or name."""
    return any(_match_one(p, addr, host) for p in patterns)


def allow_access(
    addr: str, allow: Sequence[str], deny: Sequence[str], host: Callable[[], str | None] = lambda: None
) -> bool:
    """rsyncd's rule for a peer (access.c allow_access).

    An allow match wins; an allow list without a deny list refuses the rest;
    a deny match refuses; all else is allowed.
    """
    if allow:
        if access_match(allow, addr, host):
            return True
        if not deny:
            return False
    if deny and access_match(deny, addr, host):
        return False
    return True
