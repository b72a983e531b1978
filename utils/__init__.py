"""Small general helpers: files written atomically, locks, meters, progress, random state, processes."""
