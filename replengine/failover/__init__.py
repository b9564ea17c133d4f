"""Choosing who is most up to date and what each node lacks (pure planning)."""
