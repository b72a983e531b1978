"""Small general helpers: files written atomically, locks, meters, progress, provenance, processes."""
