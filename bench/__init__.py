"""The benchmark suite: ``python -m bench`` (full) or ``python -m bench --smoke`` (tiny sizes).

It makes its own PostgreSQL database and Redis namespace, starts the real ``notifier api``,
``notifier worker`` and ``notifier scheduler`` processes, measures the stack's own ceilings
(``bench/ceilings/``) in the same run, drives load from separate processes (``bench/load.py``),
prints a table and writes ``bench/results/<UTC timestamp>.json``.
"""
