"""``server.workers``: N processes serving one check port, to use more than one core.

Each worker is a forked copy of the whole sidecar: its own event loop, token cache, IdP session
(mTLS keep-alive pool) and metrics. They bind the same check port with ``SO_REUSEPORT`` (the
kernel spreads connections over them). Worker *i* serves its admin port on
``server.admin_port + i``: Prometheus scrapes each (and sums), probes target ``admin_port``.
This keeps every figure exact without a shared-memory metrics mode.

Trade-off: caches are not shared, so a new token costs up to N IdP calls (one per worker that
sees it), and single-flight holds per worker only.

The parent only supervises: SIGTERM/SIGINT are passed on to the workers (each drains as a single
process does), and so is SIGHUP (each worker reloads its configuration); when one worker dies, the
others are stopped and the parent exits non-zero so that the service manager restarts the whole set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable

from sidecar.config import Config

log = logging.getLogger(__name__)


def worker_config(config: Config, index: int) -> Config:
    """The configuration of worker ``index``: its own admin port."""
    s = config.server
    admin = s.admin_port + index if s.admin_port else 0
    return dataclasses.replace(config, server=dataclasses.replace(s, admin_port=admin))


def run_workers(config: Config, serve: Callable[[int, Config], None]) -> int:
    """Fork ``server.workers`` processes running ``serve(index, worker_config)``; return the exit status."""
    children: dict[int, int] = {}
    for index in range(config.server.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its server handles it (reload)
                serve(index, worker_config(config, index))
            except BaseException:
                code = 1
                logging.getLogger(__name__).exception("worker failed", extra={"worker": index})
            finally:
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
    log.info("workers started", extra={"workers": config.server.workers, "pids": sorted(children)})

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            _kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    status = 0
    while children:
        pid, wait_status = os.wait()
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 and status == 0:
            log.error("worker exited", extra={"worker": index, "exit_code": code})
            status = 1
            for other in children:  # fail as a whole: the service manager restarts the set
                _kill(other, signal.SIGTERM)
    return status


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
