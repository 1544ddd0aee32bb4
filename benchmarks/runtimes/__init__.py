"""Runtime comparison: the same REST handlers on granian RSGI, granian ASGI and robyn.

Run it with `python -m benchmarks.runtimes` (see __main__.py).
"""
