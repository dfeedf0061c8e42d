"""A TCP proxy that injects store outages: put it between paramloop and PostgreSQL.

``FaultyLink(("127.0.0.1", 5432))`` listens on a free loopback port and forwards
every connection to the target.  ``freeze()`` stops moving bytes in both
directions (a server that hangs: SIGSTOP, a full disk, a network partition that
drops packets); ``cut()`` closes every connection and refuses new ones (a
server that is stopped or restarting); ``restore()`` ends either.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

State = Literal["up", "frozen", "cut"]


class FaultyLink:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.state: State = "up"
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faulty-link", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._set("frozen")

    def cut(self) -> None:
        self._set("cut")

    def restore(self) -> None:
        self._set("up")

    def close(self) -> None:
        self._set("cut")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _set(self, state: State) -> None:
        done = threading.Event()

        def apply() -> None:
            self.state = state
            if state == "up":
                self._flowing.set()
            else:
                self._flowing.clear()
            if state == "cut":
                for writer in list(self._writers):
                    writer.transport.abort()
                self._writers.clear()
            done.set()

        self._loop.call_soon_threadsafe(apply)
        done.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing.set()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()  # frozen: the bytes wait here, unanswered
                if self.state == "cut":
                    return
                writer.write(data)
                await writer.drain()
