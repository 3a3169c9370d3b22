"""zero-worker: upload, evict, fault-in, collect."""
