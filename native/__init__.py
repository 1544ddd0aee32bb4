"""Compiled hot paths with pure-Python twins.

Nothing has been moved here yet: profiling under load decides what belongs here.
`ORDERS_NATIVE=0` forces the pure-Python twins once compiled modules exist.
"""

import os

ENABLED: bool = os.environ.get("ORDERS_NATIVE", "1") != "0"
ACTIVE: str = "pure-python"
