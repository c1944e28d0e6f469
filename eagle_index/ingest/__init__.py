"""Ingestion: embedding steps shared by `ingest` and the daemon, the folder watcher, the worker."""
