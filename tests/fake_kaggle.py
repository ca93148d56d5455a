"""A fake Kaggle API server for tests: the real kaggle client talks to it and it records everything.

It speaks the wire protocol kaggle 2.2.4 / kagglesdk 0.1.37 use (see ../shared/notes/kaggle-client.md):
`POST .../v1/competitions.CompetitionApiService/<Method>` with JSON bodies and Basic auth, a raw
`PUT` of the file to the createUrl it hands out, and `DownloadDataFiles` answered by a 302 to a zip.
It also works as the HTTP proxy of a subprocess (absolute-form request lines are parsed with
urlsplit), which is how the high-level KaggleApi is pointed at it with KAGGLE_API_ENVIRONMENT=LOCALHOST.

Knobs: `fail(method, status, message)`, `limits`, `upload_mode` ("ok"; "drop": read half the
body, then close the socket without answering; "reject": answer 403 like an expired signed URL),
`polls_until_scored`, `public_score`, `files`.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SERVICE = "competitions.CompetitionApiService"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def rpc(self) -> str | None:
        """The API method name for RPC calls (StartSubmissionUpload, ...), else None."""
        prefix = f"/v1/{SERVICE}/"
        return self.path.split(prefix, 1)[1] if prefix in self.path else None


@dataclass
class FakeKaggle:
    username: str = "fake-user"
    key: str = "0123456789abcdef-secret-key"
    files: dict[str, bytes] = field(default_factory=dict)  # competition slug -> zip bytes
    limits: dict[str, Any] = field(
        default_factory=lambda: {"numToday": 0, "numTotal": 0, "numAllowedNow": 5, "limitedByTotal": False}
    )
    upload_mode: str = "ok"
    polls_until_scored: int = 1  # ListSubmissions calls that still show a new submission PENDING
    public_score: str = "0.93750"
    requests: list[Recorded] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)  # token -> bytes received
    submissions: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # ---- lifecycle ----
    def __enter__(self) -> "FakeKaggle":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- knobs and views ----
    def fail(self, rpc: str, status: int, message: str) -> None:
        """Answer every call of `rpc` with a Kaggle-style JSON error."""
        self.errors[rpc] = (status, message)

    def calls(self, rpc: str) -> list[Recorded]:
        return [r for r in self.requests if r.rpc == rpc]

    def puts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PUT"]

    def received_sha256(self) -> list[str]:
        return [hashlib.sha256(b).hexdigest() for b in self.uploads.values()]

    def everything_received(self) -> bytes:
        """All request lines, headers and bodies, to check nothing secret was sent in the clear."""
        return b"\n".join(
            f"{r.method} {r.path}\n{json.dumps(r.headers)}".encode() + b"\n" + r.body for r in self.requests
        )

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment for a subprocess whose KaggleApi should reach this server (and nothing else)."""
        home.mkdir(parents=True, exist_ok=True)
        return {
            "HOME": str(home),
            "KAGGLE_CONFIG_DIR": str(home / ".kaggle"),
            "KAGGLE_USERNAME": self.username,
            "KAGGLE_KEY": self.key,
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "HTTP_PROXY": self.url,
            "http_proxy": self.url,
            "NO_PROXY": "",
            "no_proxy": "",
        }

    def serve_in_process(self, monkeypatch, home: Path) -> None:
        """Make the real kaggle client in this process talk to this server, with its credentials."""
        isolate_kaggle(monkeypatch, home, self.username, self.key)
        from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

        monkeypatch.setitem(_env_to_endpoint, KaggleEnv.PROD, self.url)

    # ---- behaviour ----
    def authorized(self, headers) -> bool:
        token = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return headers.get("Authorization") == f"Basic {token}"

    def handle_rpc(self, rpc: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, extra headers) for one API call."""
        if rpc in self.errors:
            status, message = self.errors[rpc]
            return status, {"code": status, "message": message}, {}
        with self._lock:
            if rpc == "GetSubmissionLimits":
                return 200, dict(self.limits), {}
            if rpc == "StartSubmissionUpload":
                token = f"blob-{len(self.calls('StartSubmissionUpload'))}"
                return 200, {"token": token, "createUrl": f"{self.url}/upload/{token}"}, {}
            if rpc == "CreateSubmission":
                token = body.get("blobFileTokens")
                if token not in self.uploads:
                    return 400, {"code": 400, "message": f"no completed upload for token {token!r}"}, {}
                ref = 40_000 + len(self.submissions)
                self.submissions.insert(0, {
                    "ref": ref,
                    "date": dt.datetime(2024, 5, 1, 12, 0, len(self.submissions)).isoformat() + ".000Z",
                    "fileName": f"upload-{token}.csv",
                    "description": body.get("submissionDescription", ""),
                    "status": "PENDING",
                    "pollsLeft": self.polls_until_scored,
                })
                self.limits["numToday"] += 1
                self.limits["numTotal"] += 1
                self.limits["numAllowedNow"] = max(0, self.limits["numAllowedNow"] - 1)
                return 200, {"message": "Successfully submitted to the competition", "ref": ref}, {}
            if rpc == "ListSubmissions":
                listed = []
                for sub in self.submissions:
                    if sub["status"] == "PENDING":
                        if sub["pollsLeft"] <= 0:
                            sub["status"], sub["publicScore"] = "COMPLETE", self.public_score
                        sub["pollsLeft"] -= 1
                    listed.append({k: v for k, v in sub.items() if k != "pollsLeft"})
                return 200, {"submissions": listed}, {}
            if rpc == "DownloadDataFiles":
                slug = body.get("competitionName")
                if slug not in self.files:
                    return 404, {"code": 404, "message": f"Competition {slug} not found"}, {}
                return 302, {}, {"Location": f"{self.url}/files/{slug}.zip"}
        return 404, {"code": 404, "message": f"unknown method {rpc}"}, {}


def isolate_kaggle(monkeypatch, home: Path, username: str | None = None, key: str | None = None) -> None:
    """No real credentials, config or proxies leak in from the machine running the tests."""
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT", "KAGGLE_USERNAME", "KAGGLE_KEY", "HTTP_PROXY",
                "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    if username:
        monkeypatch.setenv("KAGGLE_USERNAME", username)
    if key:
        monkeypatch.setenv("KAGGLE_KEY", key)


def _handler_for(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _record(self, body: bytes) -> Recorded:
            rec = Recorded(self.command, urlsplit(self.path).path, dict(self.headers.items()), body)
            fake.requests.append(rec)
            return rec

        def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] = {}) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] = {}) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json", headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            rec = self._record(self._body())
            if rec.rpc is None:
                return self._send_json(404, {"code": 404, "message": "not found"})
            if not fake.authorized(self.headers):
                return self._send_json(401, {"code": 401, "message": "Unauthenticated"})
            status, obj, headers = fake.handle_rpc(rec.rpc, rec.json or {})
            self._send_json(status, obj, headers)

        def do_PUT(self) -> None:
            path = urlsplit(self.path).path
            token = path.rsplit("/", 1)[-1]
            length = int(self.headers.get("Content-Length") or 0)
            if fake.upload_mode == "drop":
                partial = self.rfile.read(length // 2)
                self._record(partial)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            body = self.rfile.read(length)
            self._record(body)
            if fake.upload_mode == "reject":
                return self._send(403, b"<Error><Code>AccessDenied</Code></Error>", "application/xml")
            if not path.startswith("/upload/"):
                return self._send_json(404, {"code": 404, "message": "not found"})
            fake.uploads[token] = body
            self._send_json(200, {})

        def do_GET(self) -> None:
            self._record(b"")
            path = urlsplit(self.path).path
            name = path.rsplit("/", 1)[-1]
            slug = name[:-4] if name.endswith(".zip") else None
            if not path.startswith("/files/") or slug not in fake.files:
                return self._send_json(404, {"code": 404, "message": "not found"})
            self._send(200, fake.files[slug], "application/zip")

    return Handler
