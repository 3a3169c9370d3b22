"""Where chunk objects live beyond the cache: one module per kind of remote, the pool, the codec."""
