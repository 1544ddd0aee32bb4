"""What vulture (`make lint`) cannot see used in service/ and native/; read by vulture, never run.

Each name is used from outside the scanned code: by a framework that calls it by its name, by a
server that loads it from a string, by a signature it must accept, or by the tests and benchmarks
(fakes and test hooks that are part of the design). Anything else vulture reports is dead: delete it.
"""

from typing import Any

_: Any = None

_ = (
    # gRPC calls servicer methods by the RPC's name.
    _.CreateOrder,
    _.GetOrder,
    _.ListOrders,
    _.UpdateOrder,
    _.DeleteOrder,
    _.WatchOrders,
    _.Watch,
    # http.server's BaseHTTPRequestHandler / ThreadingHTTPServer API (observability/admin.py).
    _.server_version,
    _.log_message,
    _.do_GET,
    _.daemon_threads,
    # granian loads the RSGI app from the string "service.entrypoints.http:app".
    _.app,
    # Parameters a signature must accept: __exit__, psqlpy's LISTEN callback.
    _.exc_type,
    _.tb,
    _.channel,
    _.process_id,
    # Used by the tests and benchmarks only, on purpose: the in-memory fake store, the list of
    # settings the delivery tests check, the coalescing counter, robyn's body reader.
    _.MemoryOrderStore,
    _.ENV_VARIABLES,
    _.batches,
    _.limit_read_body,
)
