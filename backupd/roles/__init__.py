"""Synchronous role logic: protocol objects + a stream + storage."""
