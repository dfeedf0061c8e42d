"""Public logged-bandit datasets, loaded into the arrays the evaluation layer takes.

Each loader reads files (this package does I/O; the core never does) and returns
typed, read-only arrays.  :mod:`paramloop.datasets.obd` loads the Open Bandit
Dataset sample.
"""
