"""A local SMTP server for the benchmarks: accepts every message and only counts it.

Run as `python -m bench.smtp_sink PORT`; it serves until terminated. It keeps no
messages, so its memory stays flat however many arrive.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiosmtpd.controller import Controller


class CountingHandler:
    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received += 1
        return "250 Message accepted"


def main(port: int) -> None:
    handler = CountingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    stopped = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        loop.run_until_complete(stopped.wait())
    finally:
        controller.stop()
        print(f"smtp sink: {handler.received} message(s) received", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
