"""Runs: the one lifecycle every run goes through, the store that caches them, the kinds of run (tasks), and
the tuned-tau searches built on them."""
