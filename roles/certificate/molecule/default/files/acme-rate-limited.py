"""A stand-in ACME CA for the scenario's rate-limit case: its directory and nonces work like any CA's, and it answers
every signed request as Let's Encrypt does once a rate limit is reached (HTTP 429, type rateLimited, Retry-After).

Usage: acme-rate-limited.py PORT CERT KEY (HTTPS on 127.0.0.1:PORT with that certificate and key)."""

import json
import secrets
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
BASE = f"https://127.0.0.1:{PORT}"
DIRECTORY = {
    "newNonce": f"{BASE}/nonce",
    "newAccount": f"{BASE}/account",
    "newOrder": f"{BASE}/order",
    "revokeCert": f"{BASE}/revoke",
    "keyChange": f"{BASE}/key-change",
    "meta": {"termsOfService": f"{BASE}/terms"},
}
PROBLEM = {
    "type": "urn:ietf:params:acme:error:rateLimited",
    "detail": "too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2099-01-01 00:00:00 UTC",
    "status": 429,
}


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Replay-Nonce", secrets.token_urlsafe(16))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._send(200)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/dir":
            self._send(200, json.dumps(DIRECTORY).encode())
        else:
            self._send(204 if self.path == "/nonce" else 404)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(429, json.dumps(PROBLEM).encode(), "application/problem+json", Retry_After="1")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
