"""The operators' web dashboard: runs, a run live, its failures, actions and Prometheus metrics."""
