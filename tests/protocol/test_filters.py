"""Filter rules: parsing, wire list codec, matching, delete protection, per-dir merges.

Matching expectations were checked against rsync 3.5.0 itself (``--debug=FILTER``,
``--delete`` dry runs) when the table was written; the tests do not start rsync.
"""

from __future__ import annotations

import io
import itertools
from functools import cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backupd.errors import ExitCode, ProtocolError, RsyncError, Unsupported
from backupd.protocol.filters import (
    CVS_DEFAULT_PATTERNS,
    MAX_MERGE_FILE_SIZE,
    FilterList,
    FilterRule,
    cvs_rules,
    decode_filter_list,
    encode_filter_list,
    encode_rule,
    parse_merge_file,
    parse_rule,
    parse_rules,
    rule_matches,
    rules_from_client,
)
from backupd.protocol.wildmatch import _glob_tokens
from backupd.protocol.wildmatch import compile_glob as _compile_glob

# ------------------------------------------------------------------ captured lists

# captures/daemon-pull-filter-rules.c2s, offsets 0x80-0xd5 (the whole MSG_DATA frame
# at 0x7c): client `--exclude='*.o' -f 'H hide' -f 'S show' -f ':- .ignore'
# -f '- /abs' -f '-! notme' -f 'exclude,x user.foo'` (P/R rules are not sent in a pull).
PULL_HEX = (
    "05000000" "2d202a2e6f"
    "07000000" "2d732068696465"
    "07000000" "2b732073686f77"
    "0a000000" "3a2d202e69676e6f7265"
    "06000000" "2d202f616273"
    "08000000" "2d21206e6f746d65"
    "0b000000" "2d7820757365722e666f6f"
    "00000000"
)
PULL_RULES = [b"- *.o", b"-s hide", b"+s show", b":- .ignore", b"- /abs", b"-! notme",
              b"-x user.foo"]

# captures/daemon-push-filter-rules-delete.c2s, offsets 0x7f-0xa3: `--exclude='*.txt'
# -f 'P keep' -f 'H hide' -f 'S show' -f 'R risk' --delete` (H/S are not sent in a push).
PUSH_HEX = ("07000000" "2d202a2e747874" "07000000" "2d72206b656570"
            "07000000" "2b72207269736b" "00000000")
PUSH_RULES = [b"- *.txt", b"-r keep", b"+r risk"]

# captures/daemon-push-cvs-exclude-delete.c2s, offsets 0x80-0x238: `-C --delete` push:
# ":C .cvsignore" and then rsync's default CVS patterns as "-p" rules.
CVS_HEX = (
    "0d0000003a43202e63767369676e6f7265060000002d7020524353070000002d702053434353060000002d"
    "70204356530a0000002d70204356532e61646d090000002d70205243534c4f470b0000002d70206376736c"
    "6f672e2a070000002d702074616773070000002d7020544147530e0000002d70202e6d616b652e73746174"
    "650f0000002d70202e6e73655f646570696e666f050000002d70202a7e050000002d7020232a060000002d"
    "70202e232a050000002d70202c2a060000002d70205f242a050000002d70202a24080000002d70202a2e6f"
    "6c64080000002d70202a2e62616b080000002d70202a2e42414b090000002d70202a2e6f72696708000000"
    "2d70202a2e72656a090000002d70202e64656c2d2a060000002d70202a2e61080000002d70202a2e6f6c62"
    "060000002d70202a2e6f080000002d70202a2e6f626a070000002d70202a2e736f080000002d70202a2e65"
    "7865060000002d70202a2e5a080000002d70202a2e656c63070000002d70202a2e6c6e070000002d702063"
    "6f7265080000002d70202e73766e2f080000002d70202e6769742f070000002d70202e68672f0800000"
    "02d70202e627a722f00000000"
)

WIRE_VECTORS = [(PULL_HEX, PULL_RULES), (PUSH_HEX, PUSH_RULES), ("00000000", [])]


def reader(data: bytes, step: int | None = None):
    """read(n) over ``data``; ``step`` hands out at most that many bytes per call."""
    buf = io.BytesIO(data)

    def read(n: int) -> bytes:
        if step is None:
            return buf.read(n)
        out = b""
        while len(out) < n:
            chunk = buf.read(min(step, n - len(out)))
            if not chunk:
                break
            out += chunk
        return out

    return read, buf


@pytest.mark.parametrize("step", [1, 3, None])
@pytest.mark.parametrize(("wire_hex", "rules"), WIRE_VECTORS)
def test_captured_list_decodes_and_encodes_back(wire_hex, rules, step):
    wire = bytes.fromhex(wire_hex)
    read, buf = reader(wire + b"\x07\x08trailing", step)
    assert decode_filter_list(read) == rules
    assert buf.read() == b"\x07\x08trailing"          # nothing past the terminator read
    assert encode_filter_list(rules) == wire


def test_captured_cvs_list_is_cvs_rules():
    texts = decode_filter_list(reader(bytes.fromhex(CVS_HEX))[0])
    assert texts[0] == b":C .cvsignore"
    assert texts[1:] == [b"-p " + p for p in CVS_DEFAULT_PATTERNS]
    assert [parse_rule(t) for t in texts[1:]] == cvs_rules()
    assert [encode_rule(r) for r in cvs_rules()] == texts[1:]


def test_captured_pull_rules_leave_only_the_root():
    # the capture's server file list holds only "." : "-! notme" excludes every other name
    texts = decode_filter_list(reader(bytes.fromhex(PULL_HEX))[0])
    fl = FilterList(rules_from_client(texts, sender=True, cvs_exclude=True))
    root = fl.enter_dir(b"", FakeTree({}))
    for name, is_dir in [(b"empty", False), (b"hello.txt", False), (b"link", False),
                         (b"sub", True)]:
        assert root.excluded(name, is_dir, "sender"), name
    assert root.matches(b"hide", False, side="sender") == parse_rule(b"-s hide")
    assert root.matches(b"show", False, side="sender") == parse_rule(b"+s show")
    assert root.matches(b"notme", False, side="sender") is None
    assert root.matches(b"x/notme.o", False, side="sender") == parse_rule(b"- *.o")


def test_captured_push_rules_protect_on_the_receiver():
    texts = decode_filter_list(reader(bytes.fromhex(PUSH_HEX))[0])
    fl = FilterList(rules_from_client(texts, sender=False))
    assert fl.protected_from_delete(b"sub/inner.txt", False, perishable_ok=False)
    assert fl.protected_from_delete(b"keep", False, perishable_ok=False)
    assert not fl.protected_from_delete(b"risk", False, perishable_ok=False)
    assert not fl.protected_from_delete(b"hello", False, perishable_ok=False)


def test_pull_with_cvs_exclude_appends_the_cvs_rules():
    rules = rules_from_client([b"+ core"], sender=True, cvs_exclude=True)
    assert [encode_rule(r) for r in rules] == [b"+ core", b":C .cvsignore", b"-C"]
    fl = FilterList(rules).enter_dir(b"", FakeTree({b".cvsignore": b"*.c"}))
    assert not fl.excluded(b"core", False, "sender")
    assert fl.excluded(b"x.o", False, "sender") and fl.excluded(b"x.c", False, "sender")
    texts = decode_filter_list(reader(bytes.fromhex(CVS_HEX))[0])   # a push: client sent them
    assert rules_from_client(texts, sender=False, cvs_exclude=True) == [
        parse_rule(t) for t in texts]


@pytest.mark.parametrize(("text", "short"), [
    (b"H hide", b"-s hide"), (b"S show", b"+s show"), (b"P keep", b"-r keep"),
    (b"R risk", b"+r risk"), (b"exclude,x user.foo", b"-x user.foo"),
    (b"protect PAT", b"-r PAT"), (b"risk PAT", b"+r PAT"), (b"hide PAT", b"-s PAT"),
    (b"show PAT", b"+s PAT"), (b"include foo/", b"+ foo/"), (b"exclude *.o", b"- *.o"),
    (b"dir-merge .rsync-filter", b": .rsync-filter"), (b"dir-merge,n- .x", b":n- .x"),
    (b"merge FILE", b". FILE"), (b"clear", b"!"), (b":C", b":C .cvsignore"),
    (b"-_*.o", b"- *.o"), (b"P_keep*", b"-r keep*"), (b"-,p x", b"-p x"),
    (b":sC", b":Cs .cvsignore"), (b"+/! a", b"+/! a"), (b"dir-merge,e+ .inc", b":+e .inc"),
])
def test_long_and_letter_forms_normalise_like_the_client(text, short):
    # what rsync's get_rule_prefix() puts on the wire (captures show H/S/P/R this way)
    assert encode_rule(parse_rule(text)) == short
    assert parse_rule(short) == parse_rule(text)


# ------------------------------------------------------------------ parsing


def R(kind, pattern=b"", **flags) -> FilterRule:
    return FilterRule(kind, pattern, **flags)


PARSE_TABLE = [
    (b"- *.o", R("exclude", b"*.o")),
    (b"+ foo/", R("include", b"foo", dir_only=True)),
    (b"-s hide", R("exclude", b"hide", sender_side=True)),
    (b"+s show", R("include", b"show", sender_side=True)),
    (b"-r keep", R("exclude", b"keep", receiver_side=True)),
    (b"+r risk", R("include", b"risk", receiver_side=True)),
    (b"H hide", R("exclude", b"hide", sender_side=True)),
    (b"R risk", R("include", b"risk", receiver_side=True)),
    (b"-sr both", R("exclude", b"both", sender_side=True, receiver_side=True)),
    (b":- .ignore", R("dir_merge", b".ignore", merge_default_exclude=True)),
    (b":+ .inc", R("dir_merge", b".inc", merge_default_include=True)),
    (b"- /abs", R("exclude", b"/abs")),
    (b"-! notme", R("exclude", b"notme", negate=True)),
    (b"-x user.foo", R("exclude", b"user.foo", xattr=True)),
    (b"-p .git/", R("exclude", b".git", perishable=True, dir_only=True)),
    (b"-p *~", R("exclude", b"*~", perishable=True)),
    (b":C .cvsignore", R("dir_merge", b".cvsignore", cvs=True, no_inherit=True, word_split=True,
                         merge_default_exclude=True)),
    (b":C", R("dir_merge", b".cvsignore", cvs=True, no_inherit=True, word_split=True,
              merge_default_exclude=True)),
    (b"-C", R("exclude", cvs=True)),
    (b"exclude,x PAT", R("exclude", b"PAT", xattr=True)),
    (b"protect PAT", R("exclude", b"PAT", receiver_side=True)),
    (b"dir-merge .rsync-filter", R("dir_merge", b".rsync-filter")),
    (b"dir-merge,e /.rsync-filter", R("dir_merge", b"/.rsync-filter", exclude_self=True)),
    (b":nw .f", R("dir_merge", b".f", no_inherit=True, word_split=True)),
    (b"merge FILE", R("merge", b"FILE")),
    (b". /etc/x/", R("merge", b"/etc/x/")),               # merge names keep their '/'
    (b"!", R("clear")),
    (b"-/ /etc/passwd", R("exclude", b"/etc/passwd", absolute=True)),
    (b"- a b", R("exclude", b"a b")),                     # one space separates; rest is pattern
    (b"-  lead", R("exclude", b" lead")),
    (b"- /", R("exclude", b"/")),                         # a lone '/' is kept
    (b"- //", R("exclude", b"/", dir_only=True)),
    (b"- x\tY", R("exclude", b"x\tY")),
]


@pytest.mark.parametrize(("text", "rule"), PARSE_TABLE)
def test_parse_rule(text, rule):
    assert parse_rule(text) == rule
    assert parse_rule(encode_rule(rule)) == rule


BAD_RULES = [
    b"x foo",            # unknown prefix
    b"p foo",            # 'p' is not short for protect
    b"excludes foo",     # long word must end in space, '_' or ','
    b"-", b"- ", b"+_",  # missing pattern
    b"merge", b":",      # merge needs a name (only C defaults to .cvsignore)
    b"-a foo",           # unknown modifier
    b"-e foo", b"-n foo", b"-w foo", b"-+ foo",   # merge-only modifiers
    b":! .x",            # negation is not a merge default
    b"Hs foo", b"Pr foo",  # H/S/P/R already give the side
    b":+- .x", b":-C .x",  # two defaults
    b"! x",              # clear takes nothing
    b"exclude\tfoo",     # after a long word a tab is read as a modifier
    b"- " + b"x" * 4096,  # pattern over MAXPATHLEN - 1
    b"- " + b"x" * 5118,  # rule text over 5119
    b"- a\0b",           # NUL
    b"",
]


@pytest.mark.parametrize("text", BAD_RULES)
def test_malformed_rule_is_refused(text):
    with pytest.raises(ProtocolError):
        parse_rule(text)


def test_syntax_errors_carry_rsyncs_exit_code():
    with pytest.raises(ProtocolError) as info:
        parse_rule(b"x foo")
    assert info.value.exit_code == ExitCode.SYNTAX


def test_rsyncd_exclude_is_space_separated_patterns():
    rules = parse_rules(b"a  b\tc", "exclude")
    assert [(r.kind, r.pattern) for r in rules] == [("exclude", b"a"), ("exclude", b"b"),
                                                   ("exclude", b"c")]
    # old-style "+ " / "- " prefixes and "!" as in rsyncd's XFLG_OLD_PREFIXES
    assert [(r.kind, r.pattern) for r in parse_rules(b"- x + y !x", "exclude")] == [
        ("exclude", b"x"), ("include", b"y"), ("exclude", b"!x")]
    assert [r.kind for r in parse_rules(b"a ! b", "include")] == ["include", "clear", "include"]


def test_rsyncd_dir_exclude_becomes_triple_star_and_slash_means_module_root():
    secret, deep, top = parse_rules(b"secret/ a/b /top", "exclude")
    assert secret == R("exclude", b"secret/***")
    assert deep == R("exclude", b"a/b", absolute=True)
    assert top == R("exclude", b"/top", absolute=True)
    assert parse_rules(b"inc/", "include") == [R("include", b"inc", dir_only=True)]
    fl = FilterList(parse_rules(b"secret/ /top", "exclude"), abs_root=b"sub")
    assert fl.excluded(b"x/secret/deep/file", False, None)
    assert not fl.excluded(b"top", False, None)           # /top is the module's, not sub's
    assert FilterList(parse_rules(b"/sub/top", "exclude"), abs_root=b"sub").excluded(
        b"top", False, None)


def test_rsyncd_filter_parameter_splits_rules_at_whitespace():
    rules = parse_rules(b"- /foo  - /bar +_x P keep", "filter")
    assert [encode_rule(r) for r in rules] == [b"-/ /foo", b"-/ /bar", b"+ x", b"-r keep"]


# ------------------------------------------------------------------ matching table

# (rule, path, is_dir, matches): every row checked against rsync 3.5.0 --debug=FILTER
MATCH_TABLE = [
    # no '/': the last component
    (b"- *.o", b"a.o", False, True), (b"- *.o", b"sub/deep/a.o", False, True),
    (b"- *.o", b"a.o/x", False, False), (b"- *.o", b"a.c", False, False),
    (b"- foo", b"foo", True, True), (b"- foo", b"x/foo", False, True),
    (b"- foo", b"xfoo", False, False), (b"- foo", b"foo/x", False, False),
    # trailing '/': directories only
    (b"- foo/", b"foo", True, True), (b"- foo/", b"foo", False, False),
    (b"- foo/", b"x/foo", True, True), (b"-p .git/", b"src/.git", True, True),
    (b"-p .git/", b"src/.git", False, False),
    # leading '/': anchored at the transfer root
    (b"- /abs", b"abs", False, True), (b"- /abs", b"sub/abs", False, False),
    (b"- /a/b", b"a/b", False, True), (b"- /a/b", b"x/a/b", False, False),
    (b"- /a/*", b"a/b", False, True), (b"- /a/*", b"a/b/c", False, False),
    # inner '/': the trailing components
    (b"- a/b", b"a/b", False, True), (b"- a/b", b"x/a/b", False, True),
    (b"- a/b", b"xa/b", False, False), (b"- a/b", b"a/b/c", False, False),
    (b"- foo/*/bar", b"foo/x/bar", False, True), (b"- foo/*/bar", b"y/foo/x/bar", False, True),
    (b"- foo/*/bar", b"foo/x/y/bar", False, False), (b"- */bar", b"foo/bar", False, True),
    (b"- */bar", b"bar", False, False),
    # '**' crosses '/'
    (b"- **/bar", b"bar", False, True), (b"- **/bar", b"x/y/bar", False, True),
    (b"- **/bar", b"xbar", False, False), (b"- **bar", b"x/ybar", False, True),
    (b"- /foo/**/bar", b"foo/x/bar", False, True), (b"- /foo/**/bar", b"foo/x/y/bar", False, True),
    (b"- /foo/**/bar", b"foo/bar", False, False), (b"- foo/**", b"foo/bar", False, True),
    (b"- foo/**", b"x/foo/bar/baz", False, True), (b"- foo/**", b"foo", True, False),
    (b"- sub/**/x.c", b"a/sub/deep/x.c", False, True), (b"- a**b", b"a/x/b", False, True),
    # 'dir/***': the directory and everything below
    (b"- dir/***", b"dir", True, True), (b"- dir/***", b"dir", False, False),
    (b"- dir/***", b"dir/f", False, True), (b"- dir/***", b"x/dir/sub/f", False, True),
    (b"- /dir/***", b"x/dir", True, False),
    # '?' and classes
    (b"- a?b", b"axb", False, True), (b"- a?b", b"a/b", False, False),
    (b"- ?", b"x", False, True), (b"- ?", b"xy", False, False),
    (b"- *.[oc]", b"m.c", False, True), (b"- *.[oc]", b"m.h", False, False),
    (b"- [!a]", b"b", False, True), (b"- [!a]", b"a", False, False),
    (b"- [^a]", b"b", False, True), (b"- [a-c]x", b"bx", False, True),
    (b"- [a-c]x", b"dx", False, False), (b"- []ab]", b"]", False, True),
    (b"- [[:digit:]]", b"7", False, True), (b"- [[:digit:]]", b"x", False, False),
    (b"- [[:alpha:][:digit:]]", b"x", False, True),
    (b"- [[:bogus:]]", b"b", False, False),             # bad class: never matches
    (b"- [a", b"a", False, False),                       # unclosed class: never matches
    (b"- [--0]", b"-", False, True), (b"- [a-]", b"-", False, True),
    (b"- [!]]", b"x", False, True), (b"- [!]]", b"]", False, False),
    (b"- [-a]", b"b", False, False), (b"- [-a]", b"-", False, True),
    (b"- [!-a]", b"b", False, True), (b"- [a-c-e]", b"d", False, False),
    (b"- [a-c-e]", b"-", False, True), (b"- [\\]]", b"]", False, True),
    (b"- [[:alpha:]-z]", b"-", False, True), (b"- [[:alpha:]-z]", b"5", False, False),
    # backslash escapes, active only in wildcard patterns
    (b"- a\\*b", b"a*b", False, True), (b"- a\\*b", b"axb", False, False),
    (b"- \\[ab]", b"[ab]", False, True), (b"- a\\b", b"a\\b", False, True),
    (b"- a\\b*", b"ab", False, True), (b"- a\\", b"a\\", False, True),
    (b"- a\\*\\", b"a*\\", False, False),               # wildcard ending in '\': never
    # negation
    (b"-! */", b"f", False, True), (b"-! */", b"d", True, False),
    (b"-! *.c", b"x.c", False, False), (b"-! *.c", b"x.h", False, True),
    # spaces and underscores
    (b"- a b", b"a b", False, True), (b"-_a_b", b"a_b", False, True),
    # several gaps (the NFA path)
    (b"- **a*/**a*/*", b"xa/ya/z", False, True), (b"- **a*/**a*/*", b"xa/yb/z", False, False),
    (b"- a*/**/*b", b"ab/x/cb", False, True), (b"- a*/**/*b", b"q/ab/x/cb", False, True),
]


@pytest.mark.parametrize(("text", "path", "is_dir", "expected"), MATCH_TABLE)
def test_rule_matches(text, path, is_dir, expected):
    rule = parse_rule(text)
    assert rule_matches(rule, path, is_dir) is expected
    for side in ("sender", "receiver"):
        got = FilterList([rule]).matches(path, is_dir, side=side)
        assert got == (rule if expected else None)


# (rule, side, path, is_dir, expected first match kind or None): side-specific rules
SIDE_TABLE = [
    (b"-s hide", "sender", b"hide", False, "exclude"),
    (b"-s hide", "receiver", b"hide", False, None),
    (b"+s show", "sender", b"show", False, "include"),
    (b"+s show", "receiver", b"show", False, None),
    (b"-r keep", "receiver", b"keep", False, "exclude"),
    (b"-r keep", "sender", b"keep", False, None),
    (b"+r risk", "receiver", b"risk", False, "include"),
    (b"+r risk", "sender", b"risk", False, None),
    (b"-sr both", "sender", b"both", False, "exclude"),
    (b"-sr both", "receiver", b"both", False, "exclude"),
    (b"- plain", "sender", b"plain", False, "exclude"),
    (b"- plain", "receiver", b"plain", False, "exclude"),
    (b"-x user.foo", "sender", b"user.foo", False, None),   # xattr rules never match names
    (b"-x user.foo", "receiver", b"user.foo", False, None),
    (b"-s hide", None, b"hide", False, "exclude"),          # None: every rule applies
    (b"-r keep", None, b"keep", False, "exclude"),
]


@pytest.mark.parametrize(("text", "side", "path", "is_dir", "kind"), SIDE_TABLE)
def test_sides(text, side, path, is_dir, kind):
    rule = FilterList([parse_rule(text)]).matches(path, is_dir, side=side)
    assert (rule.kind if rule else None) == kind


def test_first_match_wins_and_no_match_is_included():
    fl = FilterList([parse_rule(t) for t in (b"+ */", b"+ *.c", b"- *")])
    assert not fl.excluded(b"src", True, "sender")
    assert not fl.excluded(b"src/x.c", False, "sender")
    assert fl.excluded(b"src/x.h", False, "sender")
    assert FilterList([]).matches(b"anything", False, side="sender") is None
    assert FilterList([parse_rule(b"- *")]).matches(b"", True, side="sender") is None


def test_clear_drops_earlier_rules():
    fl = FilterList([parse_rule(t) for t in (b"- a", b"!", b"- b")])
    assert fl.rules == (parse_rule(b"- b"),)


def test_dash_c_expands_to_the_cvs_defaults_in_place():
    fl = FilterList([parse_rule(b"+ keep.o"), parse_rule(b"-C"), parse_rule(b"+ *")])
    assert fl.rules[1:-1] == tuple(cvs_rules())
    assert fl.excluded(b"x/core", False, "sender")
    assert fl.excluded(b".git", True, "sender") and not fl.excluded(b".git", False, "sender")
    assert not fl.excluded(b"keep.o", False, "sender")
    assert all(r.perishable for r in cvs_rules())


def test_delete_excluded_makes_plain_rules_sender_only():
    rules = [parse_rule(t) for t in (b"- *.tmp", b"-r *.keep", b"-s *.hid")]
    fl = FilterList(rules, delete_excluded=True)
    assert fl.excluded(b"a.tmp", False, "sender") and not fl.excluded(b"a.tmp", False, "receiver")
    assert fl.excluded(b"a.keep", False, "receiver")
    assert not fl.protected_from_delete(b"a.tmp", False, perishable_ok=False)


def test_absolute_modifier_matches_from_the_module_root():
    rule = parse_rule(b"-/ /sub/x")
    assert FilterList([rule], abs_root=b"sub").excluded(b"x", False, "sender")
    assert not FilterList([rule]).excluded(b"x", False, "sender")
    assert FilterList([parse_rule(b"-/ sub/x")], abs_root=b"sub").excluded(b"x", False, "sender")


# ------------------------------------------------------------------ --delete protection

# (rules, path, is_dir, perishable_ok, protected): checked against rsync 3.5.0 --delete runs
DELETE_TABLE = [
    ([b"- *.o"], b"a.o", False, False, True),
    ([b"- *.o"], b"d/a.o", False, True, True),          # plain rules also keep a doomed dir
    ([b"-p *.o"], b"a.o", False, False, True),
    ([b"-p *.o"], b"d/a.o", False, True, False),        # perishable: ignored in a doomed dir
    ([b"-r keep", b"- *"], b"keep", False, False, True),
    ([b"+r risk", b"- *"], b"risk", False, False, False),  # risk re-allows
    ([b"+r d/keep", b"-r keep"], b"d/keep", False, True, False),
    ([b"+r d/keep", b"-r keep"], b"keep", False, False, True),
    ([b"-s *.o"], b"a.o", False, False, False),         # hide does not protect
    ([b"- d/"], b"d", True, False, True),
    ([b"- d/"], b"d", False, False, False),
    ([b"-C"], b"core", False, False, True),
    ([b"-C"], b"e/core", False, True, False),
    ([b"-x user.x"], b"user.x", False, False, False),
]


@pytest.mark.parametrize(("texts", "path", "is_dir", "perishable_ok", "expected"), DELETE_TABLE)
def test_protected_from_delete(texts, path, is_dir, perishable_ok, expected):
    fl = FilterList([parse_rule(t) for t in texts])
    assert fl.protected_from_delete(path, is_dir, perishable_ok=perishable_ok) is expected


# ------------------------------------------------------------------ per-directory merges


class FakeTree:
    """Merge files by module-relative path; records what was read."""

    def __init__(self, files: dict[bytes, bytes]) -> None:
        self.files = files
        self.reads: list[bytes] = []

    def __call__(self, path: bytes) -> bytes | None:
        self.reads.append(path)
        return self.files.get(path)


def walk(fl: FilterList, tree: FakeTree, *dirs: bytes) -> FilterList:
    """Enter the transfer root, then each directory in turn (each the previous's child)."""
    fl = fl.enter_dir(b"", tree)
    for d in dirs:
        fl = fl.enter_dir(d, tree)
    return fl


def test_dir_merge_inherits_and_subdir_rules_come_first():
    tree = FakeTree({b".rules": b"+ keep.o\n- *.o\n- /top\n",
                     b"d/.rules": b"+ *.o\n- x.c\n# comment\n; comment\n\n- /deep\n"})
    root = walk(FilterList([parse_rule(b": .rules")]), tree)
    assert root.excluded(b"a.o", False, "sender") and root.excluded(b"top", False, "sender")
    assert not root.excluded(b"keep.o", False, "sender")
    d = root.enter_dir(b"d", tree)
    assert not d.excluded(b"d/a.o", False, "sender")       # d's "+ *.o" comes first
    assert d.excluded(b"d/x.c", False, "sender")
    assert d.excluded(b"d/deep", False, "sender")          # anchored at d/
    assert not d.excluded(b"d/top", False, "sender")       # root's /top is only the root's
    e = d.enter_dir(b"d/e", tree)
    assert e.excluded(b"d/e/x.c", False, "sender")         # inherited from d
    assert not e.excluded(b"d/e/deep", False, "sender")
    assert tree.reads == [b".rules", b"d/.rules", b"d/e/.rules"]
    assert not FilterList([parse_rule(b": .rules")]).excluded(b"a.o", False, "sender")


def test_dir_merge_no_inherit_clear_and_exclude_self():
    tree = FakeTree({b".r": b"- a\n", b"s/.r": b"- b\n", b"s/t/.r": b"!\n- c\n"})
    n = walk(FilterList([parse_rule(b":n .r")]), tree, b"s")
    assert n.excluded(b"s/b", False, "sender") and not n.excluded(b"s/a", False, "sender")
    inherit = walk(FilterList([parse_rule(b": .r")]), tree, b"s")
    assert inherit.excluded(b"s/a", False, "sender")
    cleared = inherit.enter_dir(b"s/t", tree)
    assert [r.pattern for r in cleared.rules] == [b"c"]    # '!' in a file clears inherited
    e = walk(FilterList([parse_rule(b":e .r")]), tree)
    assert e.excluded(b".r", False, "sender") and e.excluded(b"x/.r", False, "receiver")


def test_dir_merge_modifiers_shape_the_files_rules():
    tree = FakeTree({b".x": b"- a\n+ b\n", b".w": b"one two\nthree", b".s": b"- z\n"})
    minus = walk(FilterList([parse_rule(b":- .x")]), tree)
    assert [r.pattern for r in minus.rules] == [b"- a", b"+ b"]   # no prefixes: whole lines
    assert all(r.kind == "exclude" for r in minus.rules)
    plus = walk(FilterList([parse_rule(b":w+ .w")]), tree)
    assert [(r.kind, r.pattern) for r in plus.rules] == [
        ("include", b"one"), ("include", b"two"), ("include", b"three")]
    sender = walk(FilterList([parse_rule(b":s .s")]), tree)
    assert sender.excluded(b"z", False, "sender") and not sender.excluded(b"z", False, "receiver")
    tree.files[b".s"] = b"-r z\n"                          # side in a side-specific file
    with pytest.raises(ProtocolError):
        walk(FilterList([parse_rule(b":s .s")]), tree)


def test_cvs_merge_reads_words_clears_on_bang_and_does_not_inherit():
    tree = FakeTree({b"c/.cvsignore": b"*.c foo\n!\nbar", b"c/d/.cvsignore": b"qux"})
    c = walk(FilterList([parse_rule(b":C"), parse_rule(b"-C")]), tree, b"c")
    assert c.excluded(b"c/bar", False, "sender")
    assert not c.excluded(b"c/x.c", False, "sender")       # cleared by "!"
    assert c.excluded(b"c/core", False, "sender")          # the -C defaults
    d = c.enter_dir(b"c/d", tree)
    assert d.excluded(b"c/d/qux", False, "sender") and not d.excluded(b"c/d/bar", False, "sender")


def test_nested_dir_merge_rule_is_read_in_its_own_dir_and_below():
    tree = FakeTree({b"w/.rules": b": .more\n", b"w/.more": b"- m1\n", b"w/s/.more": b"- m2\n"})
    w = walk(FilterList([parse_rule(b": .rules")]), tree, b"w")
    assert w.excluded(b"w/m1", False, "sender")
    s = w.enter_dir(b"w/s", tree)
    assert s.excluded(b"w/s/m1", False, "sender") and s.excluded(b"w/s/m2", False, "sender")
    other = walk(FilterList([parse_rule(b": .rules")]), tree, b"v")
    assert not other.excluded(b"v/m1", False, "sender")


def test_a_merge_file_naming_itself_is_read_once():
    tree = FakeTree({b".r": b": .r\n- x\n"})
    fl = walk(FilterList([parse_rule(b": .r")]), tree)
    assert [r.pattern for r in fl.rules] == [b"x"] and tree.reads == [b".r"]


def test_slash_name_scans_parent_dirs_once():
    # rsync -F sends ": /.rsync-filter": read it in every dir from the module root down
    tree = FakeTree({b".rsync-filter": b"- rootex\n", b"p/.rsync-filter": b"- pex\n- /q/r/qex\n",
                     b"p/q/.rsync-filter": b"- qex2\n"})
    fl = FilterList([parse_rule(b": /.rsync-filter")], abs_root=b"p/q")
    root = fl.enter_dir(b"", tree)
    assert tree.reads == [b".rsync-filter", b"p/.rsync-filter", b"p/q/.rsync-filter"]
    for name in (b"rootex", b"pex", b"qex2"):
        assert root.excluded(name, False, "sender"), name
    assert root.excluded(b"r/qex", False, "sender")        # anchored at p/
    assert not root.excluded(b"qex", False, "sender")
    r = root.enter_dir(b"r", tree)
    assert r.excluded(b"r/pex", False, "sender") and tree.reads[-1] == b"p/q/r/.rsync-filter"
    assert FilterList([parse_rule(b": ../.rsync-filter")], abs_root=b"p/q").enter_dir(
        b"", tree).excluded(b"pex", False, "sender")


def test_merge_rule_reads_now_and_needs_a_reader():
    tree = FakeTree({b"rules/common": b"- *.bak\n. more\n", b"rules/more": b"- *.tmp\n"})
    fl = FilterList([parse_rule(b". /rules/common")], read_merge_file=tree)
    assert [r.pattern for r in fl.rules] == [b"*.bak", b"*.tmp"]
    with pytest.raises(Unsupported):
        FilterList([parse_rule(b". x")])
    with pytest.raises(RsyncError) as info:
        FilterList([parse_rule(b". missing")], read_merge_file=tree)
    assert info.value.exit_code == ExitCode.FILEIO
    loop = FakeTree({b"a": b". a\n"})
    with pytest.raises(RsyncError):
        FilterList([parse_rule(b". a")], read_merge_file=loop)


def test_merge_file_bounds_and_errors_hide_the_text():
    big = FakeTree({b".r": b"- x\n" * (MAX_MERGE_FILE_SIZE // 4 + 1)})
    with pytest.raises(RsyncError):
        walk(FilterList([parse_rule(b": .r")]), big)
    secret = FakeTree({b".r": b"- ok\nroot:$6$secret-hash:19000\n"})
    with pytest.raises(ProtocolError) as info:
        walk(FilterList([parse_rule(b": .r")]), secret)
    assert "secret" not in str(info.value) and "line 2" in str(info.value)
    long_line = parse_merge_file(b"- " + b"x" * 6000 + b"\n- y\n", parse_rule(b": .r"))
    assert [r.pattern for r in long_line] == [b"y"]         # over-long lines dropped
    with pytest.raises(ProtocolError):
        FilterList([parse_rule(b": ..")])


def test_enter_dir_without_merges_is_the_same_list():
    fl = FilterList([parse_rule(b"- x")])
    assert fl.enter_dir(b"any", FakeTree({})) is fl


# ------------------------------------------------------------------ hypothesis

rule_text = st.builds(
    lambda kind, mods, pat: kind + mods + b" " + pat,
    st.sampled_from([b"-", b"+", b"H", b"S", b"P", b"R"]),
    st.sampled_from([b"", b"!", b"/", b"p", b"x", b"!p", b"/x"]),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b),
)


@settings(max_examples=150)
@given(st.lists(st.binary(min_size=1, max_size=300).filter(lambda b: b"\0" not in b),
                max_size=20))
def test_filter_list_round_trip(rules):
    read, _ = reader(encode_filter_list(rules))
    assert decode_filter_list(read) == rules


@settings(max_examples=200)
@given(st.binary(max_size=80))
@example(bytes.fromhex("ffffffff"))                   # negative length
@example(bytes.fromhex("00140000") + b"x")            # 5120: one over the bound
@example(bytes.fromhex("0200000041") + b"\0")         # NUL in the text
@example(bytes.fromhex("0500000041"))                 # cut short
def test_junk_is_decoded_exactly_or_refused(junk):
    read, buf = reader(junk)
    try:
        rules = decode_filter_list(read)
    except ProtocolError:
        return
    assert junk.startswith(encode_filter_list(rules))
    assert buf.tell() == len(encode_filter_list(rules))


def test_rule_count_is_bounded():
    read, _ = reader(encode_filter_list([b"- x"] * 11))
    with pytest.raises(ProtocolError):
        decode_filter_list(read, max_rules=10)


@settings(max_examples=200)
@given(rule_text)
def test_parsed_rule_encodes_back_to_the_same_rule(text):
    try:
        rule = parse_rule(text)
    except ProtocolError:
        return
    assert parse_rule(encode_rule(rule)) == rule


@settings(max_examples=200)
@given(st.binary(max_size=30))
def test_any_rule_text_parses_or_is_refused(text):
    try:
        rule = parse_rule(text)
    except ProtocolError:
        return
    assert parse_rule(encode_rule(rule)) == rule


# Engines: the regex (atomic groups) and the NFA must agree with a plain
# backtracking matcher over the same tokens.


def reference_match(pattern: bytes, text: bytes, any_slash: bool) -> bool:
    tokens = _glob_tokens(pattern)
    if tokens is None:
        return False

    @cache
    def m(i: int, j: int) -> bool:
        if i == len(tokens):
            return j == len(text)
        tok = tokens[i]
        if tok in ("*", "**"):
            return any(m(i + 1, k) for k in range(j, len(text) + 1)
                       if tok == "**" or b"/" not in text[j:k])
        return j < len(text) and text[j] in tok and m(i + 1, j + 1)

    starts = [0] + ([k + 1 for k, c in enumerate(text) if c == 0x2F] if any_slash else [])
    return any(m(0, s) for s in starts)


glob_piece = st.sampled_from([b"a", b"b", b"/", b"*", b"**", b"?", b"[ab]", b"[!a]", b"\\*"])


@settings(max_examples=200)
@given(st.lists(glob_piece, max_size=8).map(b"".join),
       st.lists(st.sampled_from([b"a", b"b", b"/", b"*"]), max_size=10).map(b"".join),
       st.booleans())
@example(b"**a*/**a*/*", b"ba/ba/a", False)
@example(b"**a*b", b"ab/ab", True)
def test_regex_and_nfa_agree_with_reference(pattern, text, any_slash):
    want = reference_match(pattern, text, any_slash)
    assert _compile_glob(pattern, any_slash)(text) is want
    assert _compile_glob(pattern, any_slash, force_nfa=True)(text) is want


def test_engines_agree_on_every_short_pattern():
    texts = [b"ab/ab", b"a/b", b"ab", b"ba/ab/b", b"aab/b/ab", b"a/ab", b"", b"/"]
    pieces = [b"a", b"b", b"/", b"*", b"**"]
    for n in range(1, 5):
        for combo in itertools.product(pieces, repeat=n):
            pattern = b"".join(combo)
            for any_slash in (False, True):
                fast = _compile_glob(pattern, any_slash)
                nfa = _compile_glob(pattern, any_slash, force_nfa=True)
                for text in texts:
                    want = reference_match(pattern, text, any_slash)
                    assert (fast(text), nfa(text)) == (want, want), (pattern, text, any_slash)


def test_long_name_with_a_backtracking_gap_goes_to_the_nfa():
    glob = _compile_glob(b"x**a*b*c", False)
    assert glob(b"x" + b"a" * 4000) is False
    assert glob(b"x" + b"a" * 4000 + b"bc") is True
