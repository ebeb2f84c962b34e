"""The benchmark's harness: what runs and times kernels, one module a method.

A method under measurement (ours under the supervisor, bare CRIU, bare DMTCP) is a `Runs`
generator: it sets up a kernel holding the state, yields its result dict (with an empty "runs"
list), then does one checkpoint + restore per next() and yields that run's figures; close() tears
it down. `turns.side_by_side` drives several of them in turns. The other references (dill, dd, the
relay) are plain functions returning their result dict. Nothing here prints tables: `report.py`
does that from the results JSON.
"""
