"""Retraining: when drift passes the threshold, train on fresh data and register a challenger."""
