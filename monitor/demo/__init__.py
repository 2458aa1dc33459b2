"""The sample app the monitor watches: CRUD routes written the way the guide teaches, plus leak scenarios.

It never imports monitor internals: leaks must be observed through the pool, not self-reported.
"""
