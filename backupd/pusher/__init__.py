"""The pusher (sersync mode): watch local directories, push changes with the stock rsync client.

``watch.py`` (inotify -> PathEvent), ``source_state.py`` (INITIAL_SYNC ->
REALTIME -> RESCAN, pure), ``coalesce.py`` (a window -> Batch, pure),
``queue.py`` (durable SQLite queue per target), ``targets.py`` (rsync argv,
exit classes), ``lease.py`` (PostgreSQL leader lease and journal),
``worker.py`` (one target), ``daemon.py`` (the wiring), ``status.py``,
``metrics.py``. Design: docs/design.md §2.
"""
