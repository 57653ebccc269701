"""Statistics and comparison of results."""
