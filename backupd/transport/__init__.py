"""Transports: each hands one byte stream to one session."""
