"""The cross-dataset study: union training, train-on-A-test-on-B and pre-training, on one target set."""
