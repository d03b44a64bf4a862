"""Support for a training run (train_test.py and the benchmarks that time what it runs)."""
