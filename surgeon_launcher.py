"""The ``surgeon`` console script: signal handling first, then the CLI (which imports torch, for seconds).

A Ctrl-C or SIGTERM while the CLI is still importing must not print a traceback. Nothing has been read or
written at that point, so the handler installed here says so in one line and exits with 128 + the signal number.
The CLI replaces it, once imported, with the handler that cleans up (:mod:`surgeon.cli.failures`).
"""

from __future__ import annotations

import os
import signal


def _interrupted_while_starting(signum: int, frame: object) -> None:
    os.write(2, f"error: interrupted ({signal.Signals(signum).name}) while starting; nothing was written\n".encode())
    os._exit(128 + signum)


def main() -> int | None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted_while_starting)
    from surgeon.cli.app import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
