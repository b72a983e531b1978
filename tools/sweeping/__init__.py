"""tools/sweep.py's parts: the columns of a sweep, the job each runs, its folder, the clusters, the status."""
