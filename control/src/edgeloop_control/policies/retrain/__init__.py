"""Retraining: when drift passes the threshold, train on fresh data and register a challenger.

``policy.py`` (the tick: episode, back-off, A/B hand-off) uses ``trigger.py`` (is a
variant drifting, on which devices, the episode's scope), ``dataset.py`` (recent labelled
samples plus reference rows), ``run.py`` (train and register), ``store.py`` (the persisted
state per model) and ``config.py`` (``[retrain]`` in edgeloop.toml). Nothing is imported
here: the config can be read without pulling in pandas.
"""
