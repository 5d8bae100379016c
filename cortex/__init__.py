"""Cortex: serve Cerebrium Cortex apps (main.py + cerebrium.toml) on your own machine."""

__version__ = "0.1.0"
