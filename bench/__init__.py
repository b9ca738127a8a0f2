"""`make bench`: tether's compose and upgrade against plain ostree, written to bench/results.md."""
