"""The --delete decision as a pure plan (roles/delete_plan.py): no filesystem, no rsync.

Order and counting are rsync's (generator.c delete_in_dir, delete.c
delete_item / delete_dir_contents); the differential scenarios hold the
same rules against stock rsyncd, these pin them on data alone.
"""

from __future__ import annotations

import stat

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from backupd.protocol.filters import FilterList, parse_rule, parse_rules
from backupd.protocol.flist import sort_key
from backupd.roles.delete_plan import (
    MISSING_ARG,
    NOT_IN_FILE_LIST,
    DeleteRules,
    Listed,
    Note,
    ReadDir,
    Removal,
    contents_in_order,
    extraneous_entries,
    iter_deletions,
    kind_of,
    plan_deletions,
    plan_missing,
)

F, D, L = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777
NO_RULES = DeleteRules()


def f(name: bytes, mode: int = F) -> Listed:
    return Listed(name, mode)


def d(name: bytes, *children: Listed) -> Listed:
    return Listed(name, D, tuple(children))


def client_rules(*texts: bytes) -> DeleteRules:
    return DeleteRules(filters=FilterList([parse_rule(t) for t in texts]))


def deleted(plan) -> list[bytes]:
    """MSG_DELETED names in order, directories with rsync's trailing NUL marker as '/'."""
    return [rel + (b"/" if is_dir else b"") for r in plan.removals for rel, is_dir in r.reported]


def notes(plan) -> list[bytes]:
    return [s.rel for s in plan.steps if isinstance(s, Note)]


# ---------------------------------------------------------------- order and reasons
def test_entries_go_in_reverse_file_list_order_and_kept_names_stay():
    listing = [f(b"a"), f(b"b.txt"), f(b"b"), Listed(b"ln", L), f(b"keep"), d(b"keepdir")]
    plan = plan_deletions(b".", b".", listing, {b"keep", b"keepdir"}, NO_RULES, None)
    want = sorted([b"a", b"b.txt", b"b", b"ln"], key=lambda n: sort_key(n, False), reverse=True)
    assert deleted(plan) == want
    assert [r.kind for r in plan.removals] == ["symlink" if n == b"ln" else "file" for n in want]
    assert {r.reason for r in plan.removals} == {NOT_IN_FILE_LIST}
    assert plan.skipped == 0 and notes(plan) == []


def test_a_kept_name_stays_whatever_its_type():
    """flist_find_ignore_dirness: a file the list has as a directory is not deleted here."""
    plan = plan_deletions(b".", b".", [d(b"x", f(b"y"))], {b"x"}, NO_RULES, None)
    assert plan.steps == ()


def test_names_are_relative_to_the_transfer_root_and_paths_to_the_module():
    plan = plan_deletions(b"sub", b"dest/sub", [f(b"old")], set(), NO_RULES, None)
    (removal,) = plan.removals
    assert (removal.rel, removal.path) == (b"sub/old", b"dest/sub/old")


def test_an_extraneous_directory_goes_whole_with_its_contents_reported_first():
    tree = d(b"x", f(b"a"), d(b"s", f(b"b")), f(b"c"))
    plan = plan_deletions(b".", b".", [tree], set(), NO_RULES, None)
    (removal,) = plan.steps
    assert removal.path == b"x" and removal.kind == "dir"
    assert deleted(plan) == [b"x/s/b", b"x/s/", b"x/c", b"x/a", b"x/"]  # files before subdirs in rsync order
    assert removal.spent == 5 and plan.spent == 5


def test_history_folder_is_never_deleted():
    rules = DeleteRules(is_history=lambda path: path == b"history-backup" or path.startswith(b"history-backup/"))
    plan = plan_deletions(b".", b".", [d(b"history-backup", f(b"x")), f(b"old")], set(), rules, None)
    assert deleted(plan) == [b"old"]


# ---------------------------------------------------------------- rules
def test_exclude_protects_a_top_entry_and_one_inside_a_deleted_directory():
    rules = client_rules(b"- *.log")
    tree = d(b"x", f(b"a"), f(b"keep.log"))
    plan = plan_deletions(b".", b".", [f(b"top.log"), tree, f(b"z")], set(), rules, None)
    assert deleted(plan) == [b"x/a", b"z"]  # x sorts after the files: reverse order takes it first
    assert notes(plan) == [b"x"]  # x keeps keep.log: rsync's "cannot delete non-empty directory: x"
    assert Note(b"x").text == b"cannot delete non-empty directory: x\n"


def test_perishable_rule_protects_at_the_top_but_not_inside_a_deleted_directory():
    rules = client_rules(b"-p *.o")
    plan = plan_deletions(b".", b".", [f(b"top.o"), d(b"x", f(b"in.o"))], set(), rules, None)
    assert deleted(plan) == [b"x/in.o", b"x/"]


def test_protect_rule_keeps_an_entry():
    rules = client_rules(b"P keep*")
    plan = plan_deletions(b".", b".", [f(b"keep1"), f(b"gone")], set(), rules, None)
    assert deleted(plan) == [b"gone"]


def test_module_exclude_rules_apply_to_module_paths():
    rules = DeleteRules(module_filters=FilterList(parse_rules(b"/dest/secret", "exclude")))
    plan = plan_deletions(b".", b"dest", [f(b"secret"), f(b"other")], set(), rules, None)
    assert deleted(plan) == [b"other"]


# ---------------------------------------------------------------- --max-delete
def test_max_delete_stops_after_the_budget_and_counts_the_rest_skipped():
    plan = plan_deletions(b".", b".", [f(b"a"), f(b"b"), f(b"c")], set(), NO_RULES, 2)
    assert deleted(plan) == [b"c", b"b"] and plan.skipped == 1


def test_max_delete_zero_deletes_nothing():
    plan = plan_deletions(b".", b".", [f(b"a"), d(b"x", f(b"y"))], set(), NO_RULES, 0)
    assert deleted(plan) == []
    assert plan.skipped == 2 and notes(plan) == [b"x"]  # y skipped, x not empty; a skipped


def test_a_directory_that_does_not_fit_is_emptied_item_by_item():
    tree = d(b"x", f(b"a"), f(b"b"), f(b"c"))
    plan = plan_deletions(b".", b".", [tree], set(), NO_RULES, 2)
    assert deleted(plan) == [b"x/c", b"x/b"]
    assert plan.skipped == 1 and notes(plan) == [b"x"]
    assert all(not r.contents for r in plan.removals) and all(r.nested for r in plan.removals)


def test_a_nested_directory_left_non_empty_is_noted_twice():
    """delete_dir_contents says so, then delete_item's rmdir meets ENOTEMPTY."""
    rules = client_rules(b"- keep")
    tree = d(b"x", d(b"s", f(b"keep"), f(b"gone")))
    plan = plan_deletions(b".", b".", [tree], set(), rules, None)
    assert deleted(plan) == [b"x/s/gone"]
    assert notes(plan) == [b"x/s", b"x/s", b"x"]


# ---------------------------------------------------------------- --delete-missing-args, make room
def test_missing_arg_non_empty_directory_needs_force():
    tree = d(b"x", f(b"a"))
    plan = plan_missing(b"x", b"x", tree, NO_RULES, None, force=False)
    assert plan.steps == (Note(b"x"),)
    plan = plan_missing(b"x", b"x", tree, NO_RULES, None, force=True)
    assert deleted(plan) == [b"x/a", b"x/"] and plan.removals[0].reason == MISSING_ARG


def test_missing_arg_file_and_empty_directory_go_without_force():
    assert deleted(plan_missing(b"f", b"f", f(b"f"), NO_RULES, None, force=False)) == [b"f"]
    assert deleted(plan_missing(b"e", b"e", d(b"e"), NO_RULES, None, force=False)) == [b"e/"]


def test_make_room_contents_ignore_rules_and_list_deepest_first():
    tree = d(b"", f(b"a"), d(b"s", f(b"b")))
    assert contents_in_order(b"x", tree) == [(b"x/s/b", False), (b"x/s", True), (b"x/a", False)]


def test_an_unreadable_directory_stays_with_a_note_and_keeps_its_parent():
    plan = plan_deletions(b".", b".", [Listed(b"u", D, unreadable=True), f(b"z")], set(), NO_RULES, None)
    assert plan.steps[0] == Note(b"u") and deleted(plan) == [b"z"]
    tree = d(b"x", f(b"a"), Listed(b"u", D, unreadable=True))
    plan = plan_deletions(b".", b".", [tree], set(), NO_RULES, None)
    assert deleted(plan) == [b"x/a"] and notes(plan) == [b"x/u", b"x"]
    assert plan_missing(b"u", b"u", Listed(b"u", D, unreadable=True), NO_RULES, None, force=True).steps == (Note(b"u"),)


def test_a_directory_to_remove_without_its_listing_is_refused():
    with pytest.raises(ValueError, match="listing was not read"):
        plan_deletions(b".", b".", [Listed(b"x", D)], set(), NO_RULES, None)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [(F, "file"), (D, "dir"), (L, "symlink"), (stat.S_IFCHR, "device"), (stat.S_IFBLK, "device"),
     (stat.S_IFIFO, "special"), (stat.S_IFSOCK, "special")],
)
def test_kind_of_each_type(mode, kind):
    assert kind_of(mode) == kind


# ---------------------------------------------------------------- properties
NAMES = st.sampled_from([b"a", b"b", b"a.x", b"b-c", b"z", b"A"])


def _trees(depth: int):
    files = st.builds(Listed, NAMES, st.sampled_from([F, L]))
    if depth == 0:
        return files
    dirs = st.builds(lambda name, kids: d(name, *kids), NAMES, _listings(depth - 1))
    return st.one_of(files, dirs)


def _listings(depth: int):
    return st.lists(_trees(depth), max_size=4, unique_by=lambda item: item.name).map(tuple)


def _subtree(rel: bytes, item: Listed) -> list[bytes]:
    out = [rel]
    for child in item.children or ():
        out += _subtree(rel + b"/" + child.name, child)
    return out


def _replay(listing, plan) -> None:
    """Apply the plan to the model: no entry twice, a directory only once it is empty or whole."""
    present = {}
    for item in listing:
        for rel in _subtree(item.name, item):
            present[rel] = True
    for removal in plan.removals:
        assert removal.rel in present, f"{removal.rel!r} removed twice or never there"
        inside = [p for p in present if p.startswith(removal.rel + b"/")]
        assert sorted(inside) == sorted(rel for rel, _ in removal.contents)
        for rel in [*inside, removal.rel]:
            del present[rel]


@given(_listings(3), st.sets(NAMES, max_size=3))
@example((d(b"a", d(b"b", Listed(b"z", F))),), set())
def test_unlimited_plan_removes_exactly_what_the_list_lacks(listing, keep):
    plan = plan_deletions(b".", b".", listing, keep, NO_RULES, None)
    _replay(listing, plan)
    gone = [rel for item in listing if item.name not in keep for rel in _subtree(item.name, item)]
    assert sorted(deleted(plan)) == sorted(rel + (b"/" if _is_dir(listing, rel) else b"") for rel in gone)
    assert plan.skipped == 0 and notes(plan) == []
    top = [r.rel for r in plan.removals]
    assert top == sorted(top, key=lambda n: sort_key(n, _is_dir(listing, n)), reverse=True)


@given(_listings(3), st.integers(min_value=0, max_value=12))
def test_budget_is_spent_exactly_up_to_the_limit(listing, budget):
    """rsync leaves exactly min(N, everything) deletions done; every removal keeps the tree consistent."""
    plan = plan_deletions(b".", b".", listing, set(), NO_RULES, budget)
    _replay(listing, plan)
    total = sum(len(_subtree(item.name, item)) for item in listing)
    assert plan.spent == min(budget, total)
    assert (plan.skipped > 0) == (total > budget)


@given(_listings(3))
def test_protected_names_survive_with_their_parents(listing):
    rules = client_rules(b"- a.x")
    plan = plan_deletions(b".", b".", listing, set(), rules, None)
    _replay(listing, plan)
    for rel in deleted(plan):
        assert not rel.rstrip(b"/").endswith(b"a.x")
        assert not any(p.rsplit(b"/", 1)[-1] == b"a.x" for p in _below(listing, rel.rstrip(b"/")))


def _find(listing, rel: bytes) -> Listed | None:
    head, _, rest = rel.partition(b"/")
    for item in listing:
        if item.name == head:
            return item if not rest else _find(item.children or (), rest)
    return None


def _is_dir(listing, rel: bytes) -> bool:
    item = _find(listing, rel)
    return item is not None and item.is_dir


def _below(listing, rel: bytes) -> list[bytes]:
    item = _find(listing, rel)
    return [] if item is None else _subtree(rel, item)[1:]


def test_removal_reported_is_contents_then_itself():
    r = Removal(b"x", b"x", "dir", NOT_IN_FILE_LIST, ((b"x/a", False),))
    assert r.reported == ((b"x/a", False), (b"x", True)) and r.spent == 2


# ---------------------------------------------------------------- a lazy plan reads each dir when it gets there
def _unread(item: Listed) -> Listed:
    return Listed(item.name, item.mode)


def _drive(listing, rules, budget):
    """Run the lazy plan of ``listing`` answering each ReadDir from the model: steps, events in order, skipped."""
    steps, events, answer = [], [], None
    lazy = iter_deletions([(r, p, _unread(i)) for r, p, i in extraneous_entries(b".", b".", listing, set(), rules)],
                          NOT_IN_FILE_LIST, rules, budget, whole=False)
    while True:
        try:
            step = lazy.send(answer)
        except StopIteration as stop:
            return steps, events, stop.value
        answer = None
        if isinstance(step, ReadDir):
            events.append(("read", step.rel))
            answer = tuple(_unread(c) for c in _find(listing, step.rel).children)
        else:
            events.append(("step", step.rel))
            steps.append(step)


def test_a_lazy_plan_asks_for_each_directory_after_the_steps_before_it():
    listing = [d(b"a", f(b"x")), d(b"b", d(b"c", f(b"y")), f(b"z"))]
    steps, events, skipped = _drive(listing, NO_RULES, None)
    assert events == [("read", b"b"), ("read", b"b/c"), ("step", b"b/c/y"), ("step", b"b/c"),  # files sort first
                      ("step", b"b/z"), ("step", b"b"), ("read", b"a"), ("step", b"a/x"), ("step", b"a")]
    assert skipped == 0 and all(not s.contents for s in steps if isinstance(s, Removal))  # item by item


@given(_listings(3), st.integers(min_value=0, max_value=12) | st.none())
@example((d(b"a", f(b"a.x"), d(b"q")),), None)
def test_item_by_item_deletes_what_the_whole_plan_does_in_the_same_order(listing, budget):
    rules = client_rules(b"- a.x")
    whole = plan_deletions(b".", b".", listing, set(), rules, budget)
    steps, _, skipped = _drive(listing, rules, budget)
    lazy_deleted = [s.rel + (b"/" if s.is_dir else b"") for s in steps if isinstance(s, Removal)]
    assert lazy_deleted == deleted(whole)
    assert [s.rel for s in steps if isinstance(s, Note)] == notes(whole) and skipped == whole.skipped
