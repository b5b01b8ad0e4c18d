"""The QA load kit: ``make loadtest`` / ``python -m testbed.load`` (see testbed/load/cli.py)."""
