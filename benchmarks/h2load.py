"""h2load (nghttp2's compiled HTTP/2 client) as a gRPC load generator: 8 connections x 4 streams,
1 thread, one length-prefixed protobuf message as every request's body.

h2load does not read gRPC trailers: a call that ends in an error status counts as a success, so
every caller checks its call with a real gRPC client before it measures it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Any


def installed() -> bool:
    return shutil.which("h2load") is not None


def run(target: str, method: str, message: bytes, seconds: float, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """Drive `method` ("package.Service/Method") at `target` ("host:port") for `seconds`."""
    with tempfile.NamedTemporaryFile("wb", suffix=".bin", delete=False) as handle:
        handle.write(b"\0" + len(message).to_bytes(4, "big") + message)
    try:
        command = [
            "h2load", "-D", str(max(1, int(seconds))), "-c", "8", "-m", "4", "-t", "1", "-d", handle.name,
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            *(part for header in headers for part in ("-H", header)),
            f"http://{target}/{method}",
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(handle.name)
    rate = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    failed = re.search(r"(\d+) failed, (\d+) errored", out)
    timing = re.search(r"time for request:\s+([\d.]+)(us|ms)\s+([\d.]+)(us|ms)\s+([\d.]+)(us|ms)", out)
    if rate is None or done is None or failed is None:
        raise RuntimeError(f"unexpected h2load output:\n{out}")

    def ms(value: str, unit: str) -> float:
        return round(float(value) / (1000 if unit == "us" else 1), 3)

    return {
        "calls_per_s": float(rate.group(2)),
        "seconds": float(rate.group(1)),
        "succeeded": int(done.group(2)),
        "errors": int(failed.group(1)) + int(failed.group(2)),
        "mean_ms": ms(timing.group(5), timing.group(6)) if timing else None,
        "max_ms": ms(timing.group(3), timing.group(4)) if timing else None,
    }
