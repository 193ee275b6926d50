"""A tiny HTTP service for trying Slipway: standard library only, port from $PORT.

GET /healthz answers 200 "ok" (the health check); GET / answers a greeting that names the
release it runs (SLIPWAY_RELEASE, set by the platform) so a rollout can be watched from outside.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def greeting(environ=os.environ):
    """The body of GET /: who answers, from which release."""
    return {
        "message": environ.get("GREETING", "hello from slipway"),
        "release": environ.get("SLIPWAY_RELEASE", "dev"),
    }


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body, content_type="application/json"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (the stdlib's naming)
        if self.path == "/healthz":
            self._send(200, "ok", "text/plain")
        elif self.path == "/":
            self._send(200, json.dumps(greeting()))
        else:
            self._send(404, json.dumps({"error": f"no route {self.path}"}))

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main():
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"listening on :{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
