"""Dramatiq: the broker (``broker``), the actors (``actors``, ``schedules``), and the process that
declares them on the broker (``app``)."""
