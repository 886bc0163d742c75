"""resolve_alt_dir: an --X-dest argument -> a module-relative dir, never outside the module.

The names rsyncd prints for such dirs (its warnings) are compared with stock
rsyncd in tests/differential (link-dest-missing*, link-dest-escape*).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from backupd.roles.alt_dest import resolve_alt_dir

COMP = st.sampled_from([b"..", b".", b"", b"a", b"b c", b"snap"])
ARG = st.lists(COMP, max_size=8).map(b"/".join)
CURR = st.lists(st.sampled_from([b"x", b"y", b"daily"]), min_size=0, max_size=3).map(lambda c: b"/".join(c) or b".")


@given(ARG, CURR, st.booleans(), st.booleans())
@example(b"../../../../etc", b"s2", False, False)
@example(b"/../../s1/", b"s2", True, False)
def test_resolved_dir_never_leaves_the_module(arg, curr, absolute, chroot):
    arg = b"/" + arg if absolute else arg
    path, shown = resolve_alt_dir(arg, curr, b"/srv/mod", use_chroot=chroot)
    comps = path.split(b"/")
    assert path == b"." or all(c not in (b"", b".", b"..") for c in comps)
    if absolute:  # the module root, whatever the destination
        assert path == resolve_alt_dir(arg, b".", b"/srv/mod", use_chroot=chroot)[0]
    assert isinstance(shown, str) and shown


@given(st.integers(0, 5), CURR, st.booleans())
def test_leading_dotdots_climb_at_most_to_the_module_root(ups, curr, chroot):
    arg = b"../" * ups + b"snap"
    path, _ = resolve_alt_dir(arg, curr, b"/srv/mod", use_chroot=chroot)
    base = [] if curr == b"." else curr.split(b"/")
    kept = base[: max(0, len(base) - ups)]
    assert path == b"/".join([*kept, b"snap"])


def test_plain_relative_dir_is_beside_the_destination():
    assert resolve_alt_dir(b"../s1", b"daily/s2", b"/srv/mod", use_chroot=False) == (b"daily/s1", "../s1")
    assert resolve_alt_dir(b"s1/", b".", b"/srv/mod", use_chroot=False)[0] == b"s1"


def test_receiver_takes_the_basis_the_sender_echoes_and_refuses_other_indexes():
    from types import SimpleNamespace

    import pytest

    from backupd.errors import ProtocolError
    from backupd.roles.receiver import FNAMECMP_FNAME, Receiver

    state = SimpleNamespace(dest=[b"s3", b"s3/sub/c.txt"], curr_dir=b"s3", alt_dirs=[b"s2", b"s1"],
                            basis_paths={0: (0x83, b"s3/other")})
    recv = SimpleNamespace(state=state)
    assert Receiver._basis_path(recv, 1, FNAMECMP_FNAME) == b"s3/sub/c.txt"
    assert Receiver._basis_path(recv, 1, 0) == b"s2/sub/c.txt"
    assert Receiver._basis_path(recv, 1, 1) == b"s1/sub/c.txt"
    for bad in (2, 0x7F, 0x81, 0x83):
        with pytest.raises(ProtocolError, match="invalid basis_dir index"):
            Receiver._basis_path(recv, 1, bad)
    # a partial-dir or fuzzy basis only as the generator chose it (the path is its own, not the echo)
    assert Receiver._basis_path(recv, 0, 0x83) == b"s3/other"
    for bad in (0x81, 0x84):
        with pytest.raises(ProtocolError, match="invalid basis_dir index"):
            Receiver._basis_path(recv, 0, bad)
