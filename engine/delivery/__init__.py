"""Delivering one request: the curl transport, the retry policy, the outage pause and the pacer."""
