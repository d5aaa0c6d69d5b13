"""Completion: when a study has fully arrived (the rule, and the stage that applies it)."""
