"""The built-in kinds of run, one module each (``runs.registry`` loads them on its first lookup)."""
