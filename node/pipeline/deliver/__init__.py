"""Delivery: one sender per outbox kind, and the deliver and report stages."""
