"""Sweeps on launch queues: a W&B sweep config becomes a `sweep` flow run whose trials are launch jobs.

`config.py` reads the sweep config, `search.py` picks each trial's parameters (grid; random and
bayes through optuna), `metrics.py` reads a finished trial's metric from its W&B run files, and
`flow.py` is the sweep flow that ties them to a queue.
"""
