"""The fleet: who runs what (desired state and its one owner), and the device
messages the daemon ingests.
"""
