"""Apache Beam data jobs: raw text -> vocab, pretraining and classification records.

Imports `configs`, never `model`.
"""
