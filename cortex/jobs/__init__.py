"""Durable async runs: the run model, the store, the worker and webhook delivery (no HTTP here)."""
