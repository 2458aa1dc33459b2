"""Server probes on a dedicated connection: SQL constants, pure row parsers, fetch functions."""
