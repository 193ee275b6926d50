# A tiny HTTP server on sockets alone (the base image's python3-minimal has no http.server):
# GET /env answers its environment as KEY=VALUE lines; GET /connect/HOST:PORT says whether it
# can open a TCP connection there. CRASH=1 makes it exit with code 3 at once.
import os, signal, socket, sys

def term(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, term)
if os.environ.get("CRASH") == "1":
    print("crashing", flush=True)
    sys.exit(3)
port = int(os.environ.get("PORT", "8080"))
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(16)
print("listening on %d" % port, flush=True)
print("ready", file=sys.stderr, flush=True)
while True:
    conn, _ = srv.accept()
    try:
        request = conn.recv(4096).decode("latin-1")
        path = request.split(" ")[1] if " " in request else "/"
        if path.startswith("/connect/"):
            host, target_port = path[len("/connect/"):].rsplit(":", 1)
            probe = socket.socket()
            probe.settimeout(2)
            try:
                probe.connect((host, int(target_port)))
                body = "connected"
            except Exception as e:
                body = "failed: %s" % e
            probe.close()
        else:
            body = "".join("%s=%s\n" % kv for kv in sorted(os.environ.items()))
        data = body.encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n"
                     % len(data) + data)
        print("served " + path, flush=True)
    finally:
        conn.close()
