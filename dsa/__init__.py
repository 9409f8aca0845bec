"""DSA-reID, the method: parts table, DSAP warp, networks, losses.

``dsa`` imports nothing from the rest of the repository.
"""
