"""The servers the benchmark compares; one module each, each runnable with ``python -m``."""
