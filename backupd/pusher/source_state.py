"""The state machine of one source: INITIAL_SYNC -> REALTIME -> (overflow/error) -> RESCAN -> REALTIME. Pure.

- ``INITIAL_SYNC``: a full sync to every target is owed before the event
  stream alone can be trusted (start with ``full_sync.at_start``, or a first
  start that never finished one).
- ``REALTIME``: the watcher's events are complete; batches carry the changes.
- ``RESCAN``: events were lost (inotify queue overflow, watch limit, a lost
  watch): a full sync to every target is owed again.

The state is persisted (``state_store.py``) so a restart in INITIAL_SYNC or
RESCAN finishes what it owed. ``generation`` grows with every loss of events:
a full sync that *started* before the latest loss does not end a RESCAN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class SourceState(StrEnum):
    """Where a source stands; the value is what is persisted and shown."""

    INITIAL_SYNC = "INITIAL_SYNC"
    REALTIME = "REALTIME"
    RESCAN = "RESCAN"


class Loss(StrEnum):
    """Why events were lost (the reason logged and shown in status)."""

    OVERFLOW = "inotify queue overflow"
    WATCH_LIMIT = "inotify watch limit reached"
    WATCH_LOST = "a watch was lost"
    REMOTE = "another node lost events"


@dataclass(frozen=True)
class SourceMachine:
    """One source's state and the generation of its last event loss."""

    state: SourceState
    generation: int = 0
    reason: str = ""

    @property
    def owes_full_sync(self) -> bool:
        """True while a full sync to every target is owed (not REALTIME)."""
        return self.state is not SourceState.REALTIME


UNCLEAN_STOP = "unclean stop: changes made while the pusher was down were not seen"


def on_start(persisted: SourceState | None, full_sync_at_start: bool, unclean: bool = False) -> SourceMachine:
    """The machine at start, from the persisted state and the ``at_start`` setting.

    An unfinished INITIAL_SYNC or RESCAN is resumed whatever ``at_start`` says.
    ``unclean``: the previous run did not stop cleanly (killed, crashed): a
    source it watched starts in RESCAN, since its last events and whatever
    changed while it was down were never seen.
    """
    if persisted is SourceState.RESCAN:
        return SourceMachine(SourceState.RESCAN, reason="resumed after restart")
    if unclean and persisted is SourceState.REALTIME:
        return SourceMachine(SourceState.RESCAN, reason=UNCLEAN_STOP)
    if persisted is SourceState.INITIAL_SYNC or full_sync_at_start:
        return SourceMachine(SourceState.INITIAL_SYNC, reason="start")
    return SourceMachine(SourceState.REALTIME)


def on_loss(machine: SourceMachine, loss: Loss) -> SourceMachine:
    """Events were lost: RESCAN, one generation later."""
    return SourceMachine(SourceState.RESCAN, machine.generation + 1, loss.value)


def on_full_sync_done(machine: SourceMachine, started_generation: int) -> SourceMachine:
    """Every target finished a full sync that started at ``started_generation``.

    REALTIME unless events were lost after that full sync started.
    """
    if started_generation < machine.generation:
        return machine
    return replace(machine, state=SourceState.REALTIME, reason="")
