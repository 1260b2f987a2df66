"""The state every Lodestar process of a deployment shares: session transcripts, holds (one request per
session, a key's concurrency slots), per-key rate windows and usage totals. One interface (store/base.py),
two backends: SQLite (one host, any number of processes) and PostgreSQL (any number of hosts)."""
