"""Test suite of backupd; shared helpers in tests/helpers.py, fixtures in conftest.py."""
