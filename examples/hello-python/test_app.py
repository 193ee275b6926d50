"""Tests the example service through a real HTTP server on a free port."""

import json
import threading
import unittest
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import app


class ServiceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = ThreadingHTTPServer(("127.0.0.1", 0), app.Handler)
        cls.base = f"http://127.0.0.1:{cls.server.server_address[1]}"
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()

    def get(self, path):
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as res:
                return res.status, res.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def test_health(self):
        self.assertEqual(self.get("/healthz"), (200, "ok"))

    def test_greeting_names_the_release(self):
        status, body = self.get("/")
        self.assertEqual(status, 200)
        self.assertIn("release", json.loads(body))
        self.assertEqual(app.greeting({"SLIPWAY_RELEASE": "v3"})["release"], "v3")

    def test_unknown_path(self):
        self.assertEqual(self.get("/nope")[0], 404)


if __name__ == "__main__":
    unittest.main()
