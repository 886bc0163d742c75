"""``hosts allow`` / ``hosts deny`` matching, as rsyncd's access.c does it.

Patterns (rsync access.c access_match, lower-cased, split on spaces, commas
and tabs): an address (``127.0.0.1``, ``::1``), a network (``10.0.0.0/8``,
``192.168.1.0/255.255.255.0``), or a host-name wildcard (``*.example.com``,
``*``, ``localhost``). A name pattern matches the peer's name: the
reverse-resolved one (``UNKNOWN`` if that fails), or ``UNDETERMINED`` with
``reverse lookup = no``. Then, with ``forward lookup`` (the default), a plain
host name is resolved and matches if one of its addresses is the peer's; a
deny-list name that does not resolve counts as a match (fails closed, as
rsync 3.5.0 does). A forward match names the peer after the pattern when its
name was undetermined (``access denied to m from localhost (127.0.0.1)``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

UNDETERMINED = "UNDETERMINED"  # rsync clientserver.c undetermined_hostname
UNKNOWN = "UNKNOWN"  # rsync clientname.c default_name

_NOT_SIMPLE_NAME = set(":/*?[")


@dataclass
class PeerName:
    """The peer's name as access checks see it; resolved once, on first use.

    ``resolve`` gives the reverse-resolved name or None; ``reverse_lookup``
    False makes the name ``UNDETERMINED`` without asking.
    """

    resolve: Callable[[], str | None]
    reverse_lookup: bool = True
    _name: str | None = None

    def get(self) -> str:
        """The name: resolved, ``UNKNOWN`` or ``UNDETERMINED``."""
        if self._name is None:
            if not self.reverse_lookup:
                self._name = UNDETERMINED
            else:
                try:
                    self._name = self.resolve() or UNKNOWN
                except OSError:
                    self._name = UNKNOWN
        return self._name

    def set(self, name: str) -> None:
        """Replace an undetermined name by a forward-matched pattern (access.c match_hostname)."""
        self._name = name


def _forward_addresses(name: str) -> list[str] | None:
    """IPv4 addresses of ``name`` (gethostbyname, as rsync), or None if it does not resolve."""
    try:
        return socket.gethostbyname_ex(name)[2]
    except OSError:
        return None


def match_hostname(
    peer: PeerName, addr: str, tok: str, deny: bool, forward_dns: bool,
    resolve: Callable[[str], list[str] | None] = _forward_addresses,
) -> bool:
    """One name token against the peer (rsync access.c match_hostname)."""
    host = peer.get()
    if fnmatch.fnmatchcase(host.lower(), tok):
        return True
    if not forward_dns:
        return False
    if not tok.strip(".0123456789") or _NOT_SIMPLE_NAME & set(tok):
        return False  # an address or a wildcard, not a plain host name
    addresses = resolve(tok)
    if addresses is None:
        return deny
    if addr in addresses:
        if host == UNDETERMINED:
            peer.set(tok)
        return True
    return False


def match_address(addr: str, tok: str) -> bool:
    """One address or network token against the peer address (rsync access.c match_address)."""
    try:
        peer = ipaddress.ip_address(addr.split("%")[0])
    except ValueError:
        return False
    if peer.version == 6 and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    try:
        if "/" in tok:
            net_part, mask = tok.split("/", 1)
            if "." in mask:
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
                tok = f"{net_part}/{prefix}"
            return peer in ipaddress.ip_network(tok, strict=False)
        return peer == ipaddress.ip_address(tok)
    except ValueError:
        return False


def access_match(patterns: Sequence[str], addr: str, peer: PeerName, deny: bool = False,
                 forward_dns: bool = True) -> bool:
    """True if any pattern matches the peer's name or address (rsync access.c access_match)."""
    for pattern in patterns:
        for tok in pattern.lower().replace(",", " ").split():
            if match_hostname(peer, addr, tok, deny, forward_dns) or match_address(addr, tok):
                return True
    return False


def allow_access(addr: str, allow: Sequence[str], deny: Sequence[str], peer: PeerName | None = None,
                 forward_dns: bool = True) -> bool:
    """rsyncd's rule for a peer (access.c allow_access).

    An allow match wins; an allow list without a deny list refuses the rest;
    a deny match refuses; all else is allowed. ``peer`` defaults to an
    undetermined name.
    """
    peer = peer or PeerName(lambda: None, reverse_lookup=False)
    if allow:
        if access_match(allow, addr, peer, False, forward_dns):
            return True
        if not deny:
            return False
    if deny and access_match(deny, addr, peer, True, forward_dns):
        return False
    return True
