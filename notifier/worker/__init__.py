"""Dramatiq: the broker (configured once, first), the actors, and periodic work."""
