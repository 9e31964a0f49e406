"""The utility floor: what every other part of protossl may import.

Nothing here imports protossl outside ``protossl.core``; see docs/architecture.md for the
floors above it and the import rules (tested in tests/test_architecture.py).
"""
