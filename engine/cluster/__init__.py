"""Worker nodes: the same chunks sent from many machines through Celery over Redis, the ledger in PostgreSQL."""
