"""Pure pipeline stages; the orchestrator does the I/O and the state changes."""
