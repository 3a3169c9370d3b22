"""zero-fuse: the POSIX filesystem over the local cache."""
