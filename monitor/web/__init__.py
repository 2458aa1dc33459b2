"""Readers of monitor snapshots over HTTP: the dashboard, its HTMX partials and the JSON API."""
