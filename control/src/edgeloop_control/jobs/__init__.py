"""Jobs that span the stores: train a model from the feature store into the registry
and tracking.
"""
