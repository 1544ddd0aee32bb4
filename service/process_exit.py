"""Ending a process that used psqlpy without finalizing the interpreter.

psqlpy's tokio threads outlive the event loop and may still hand a dropped Python object back
(PyGILState_Ensure/Release) while the main thread finalizes; CPython then aborts the process
("PyGILState_Release: thread state must be current when releasing", SIGABRT), about one
`orders-service migrate` in 150 here. So what finalization would do for the process is done
while the interpreter is whole (atexit handlers, logging handlers, stdio buffers), and the
process ends with os._exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def run_then_exit(main: Callable[[], int]) -> NoReturn:
    """Run `main` and exit with its code, as `raise SystemExit(main())` would, without finalizing."""
    try:
        code = main()
    except SystemExit as stop:
        code = exit_code(stop.code)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # what the interpreter would print before exiting 1
        traceback.print_exc()
        code = 1
    exit_now(code)


def exit_now(code: int) -> NoReturn:
    """Run the atexit handlers, close the logging handlers, flush stdio and end the process."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe takes nothing more
            stream.flush()
    os._exit(code)


def exit_code(code: object) -> int:
    """SystemExit's argument as the interpreter reads it: None is 0, an int is itself, anything
    else is printed to stderr and means 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
