"""The core: settings, ledger and migrations, spool, files at rest, outbox, job states,
errors, logs, keys and pseudonyms, the model and result contract.

It imports nothing of the node above it (tests/test_layers.py).
"""
