"""Sans-IO rsync protocol code: bytes in, values out; no OS, no sockets, no clocks."""
