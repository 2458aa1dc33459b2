"""Prometheus view of the monitor: a collector that reads one snapshot per scrape."""
