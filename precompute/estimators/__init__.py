"""Dense-semantics estimators."""
