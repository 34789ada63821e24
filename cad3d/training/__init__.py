"""Training: one engine, one checkpoint manager; models plug in as tasks (see task.py)."""
