"""Domain events of the app, named in the past tense.

Receivers get ``sender`` and the keyword arguments documented beside each signal.
"""
