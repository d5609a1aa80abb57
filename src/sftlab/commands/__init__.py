"""Subcommand modules of the `sftlab` CLI; each defines `register(registry)` (see sftlab.cli)."""
