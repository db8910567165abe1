"""Command line: the only layer that prints (through ``ui``) or exits."""
