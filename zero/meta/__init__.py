"""Metadata and keys in the remotes: sealed keys, continuous backup, restore."""
