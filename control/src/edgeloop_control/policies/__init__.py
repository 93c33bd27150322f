"""Policies: the loops that decide what devices run (retraining, A/B experiments,
staged rollouts).
"""
