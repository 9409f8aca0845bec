"""precompute stage."""
