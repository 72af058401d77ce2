"""A small HTTP file server on 127.0.0.1 for download tests: serves bytes the test puts in it.

Supports ``Range: bytes=N-`` (206 with Content-Range, 416 past the end), can cut a response off after a
given number of bytes while announcing the full length (an interrupted transfer), and logs every request
with the number of body bytes it sent, so a test can prove that a resumed download fetched less.
"""
from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    sent: int = 0


@dataclass
class LoopbackFiles:
    """What the server serves (``files[path] = bytes``) and what it did (``log``)."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes to send before dropping, once
    log: list[Request] = field(default_factory=list)
    url: str = ""

    def requests_for(self, path: str) -> list[Request]:
        return [r for r in self.log if r.path == path]


def _handler(state: LoopbackFiles):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            header = self.headers.get("Range")
            if path not in state.files:
                state.log.append(Request(path, header, 404))
                self.send_error(404)
                return
            data = state.files[path]
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", header or "")
            if match:
                start = int(match.group(1))
                if start >= len(data):
                    state.log.append(Request(path, header, 416))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            body = data[start:]
            record = Request(path, header, 206 if match else 200)
            state.log.append(record)
            self.send_response(record.status)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            limit = state.cut_after.pop(path, None)
            if limit is not None:  # announce everything, send a part, then drop the connection
                # counted before writing: the client may have read it all before this thread resumes
                record.sent = limit
                self.wfile.write(body[:limit])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            record.sent = len(body)  # before writing, for the same reason
            self.wfile.write(body)

        def do_HEAD(self):
            path = self.path.split("?")[0]
            self.send_response(200 if path in state.files else 404)
            self.send_header("Content-Length", str(len(state.files.get(path, b""))))
            self.end_headers()

    return Handler


class LoopbackServer:
    """``with LoopbackServer() as files: files.files['/a/b.bin'] = b'...'; requests.get(files.url + '/a/b.bin')``"""

    def __enter__(self) -> LoopbackFiles:
        self.state = LoopbackFiles()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.state.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self.state

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
