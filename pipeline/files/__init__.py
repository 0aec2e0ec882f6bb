"""Files the pipeline reads and writes: local or object-store paths, what it owns, folder locks, where image references may point."""
