"""A small fake Hugging Face Hub: a real HTTP server on loopback for huggingface_hub's client.

It speaks the endpoints huggingface_hub (2.x) calls to push and download files, with the plain LFS
transfer (tests set HF_HUB_DISABLE_XET: the Xet protocol is only exercised against the real Hub):

    GET  /api/whoami-v2                                      who the bearer token belongs to
    POST /api/validate-yaml                                  README.md front matter check
    POST /api/repos/create                                   409 (with "url") when it exists
    GET  /api/{models|spaces}/{repo}[/revision/{rev}]        repo info with siblings
    POST /api/{models|spaces}/{repo}/preupload/{rev}         upload mode (lfs or regular) + remote oid
    POST [/spaces]/{repo}.git/info/lfs/objects/batch         LFS batch API, "basic" transfer
    PUT  /lfs-upload/{oid}                                   the bytes (sha256 and size verified)
    POST /api/{models|spaces}/{repo}/commit/{rev}            NDJSON: header, file, lfsFile, deletedFile
    GET|HEAD [/spaces]/{repo}/resolve/{rev}/{path}           ETag, X-Repo-Commit, X-Linked-* headers

and the Hub's side of a Space's "Sign in with Hugging Face" (OAuth 2 / OpenID Connect, authorization code):

    GET  /.well-known/openid-configuration                   where the endpoints below are
    GET  /oauth/authorize                                    the signed-in user (their bearer token stands in
                                                             for the Hub's browser cookie) approves: 302 to
                                                             redirect_uri with a code
    POST /oauth/token                                        code -> a new access token for that user and an
                                                             RS256-signed id_token
    GET  /oauth/jwks                                         the key that signs id_tokens

Users: a token maps to (user, role); "write" tokens may write under their own namespace only,
"read" tokens never write (403), unknown tokens get 401. Repos live in memory (FakeHub.repos) and
every request is logged whole (method, path, headers, body) so tests can inspect what arrived.
Access tokens issued by a sign-in are added to the users (FakeHub.signed_in lists them).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml

REPO = r"(?P<repo>[\w.-]+/[\w.-]+?)"
LFS_SUFFIXES = (".onnx", ".safetensors", ".bin", ".pt", ".pth", ".npz", ".png", ".jpg", ".zip")


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Repo:
    repo_type: str  # "model" or "space"
    repo_id: str
    private: bool
    sdk: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths committed as LFS pointers
    commits: list[dict] = field(default_factory=list)  # {"oid", "summary", "paths"}, oldest first

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def oid(self, path: str) -> str:
        """What the Hub calls a file's oid/etag: sha256 for LFS files, the git blob sha1 otherwise."""
        data = self.files[path]
        if path in self.lfs:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """Start with `with FakeHub({token: (user, role)}) as hub:`; point the client at `hub.url`."""

    def __init__(self, tokens: dict[str, tuple[str, str]]):
        self.tokens = tokens
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes, once PUT
        self.pending: dict[str, int] = {}  # sha256 -> size announced in a batch request
        self.requests: list[Request] = []
        self.codes: dict[str, dict] = {}  # authorization code -> the sign-in it stands for
        self.signed_in: list[str] = []  # access tokens issued by sign-ins, oldest first
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.hub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # -- auth -----------------------------------------------------------------------------------

    def user(self, headers) -> tuple[str, str] | None:
        auth = headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def readable(self, headers, repo_type: str, repo_id: str) -> Repo:
        who = self.user(headers)
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or repo.private and (who is None or who[0] != repo_id.split("/")[0]):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def writable(self, headers, repo_type: str, repo_id: str) -> Repo:
        repo = self.readable(headers, repo_type, repo_id)
        self.check_write(headers, repo_id.split("/")[0])
        return repo

    def check_write(self, headers, namespace: str) -> str:
        who = self.user(headers)
        if who is None:
            raise HubError(401, "You must be authenticated to write")
        user, role = who
        if role != "write" or namespace != user:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")
        return user

    # -- endpoints ------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers, body: bytes, query: str = "") -> tuple[int, dict, bytes]:
        routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", r"/api/repos/create", self.create_repo),
            ("GET", rf"/api/(?P<kind>model|space)s/{REPO}(?:/revision/(?P<rev>[^/]+))?", self.repo_info),
            ("POST", rf"/api/(?P<kind>model|space)s/{REPO}/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", rf"/api/(?P<kind>model|space)s/{REPO}/commit/(?P<rev>[^/]+)", self.commit),
            ("POST", rf"/(?P<kind>spaces/)?{REPO}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_put),
            ("GET|HEAD", rf"/(?P<kind>spaces/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
            ("GET", r"/\.well-known/openid-configuration", self.openid_configuration),
            ("GET", r"/oauth/authorize", self.oauth_authorize),
            ("POST", r"/oauth/token", self.oauth_token),
            ("GET", r"/oauth/jwks", self.oauth_jwks),
        ]
        for methods, pattern, endpoint in routes:
            match = re.fullmatch(pattern, path)
            if match and method in methods.split("|"):
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                with self.lock:
                    return endpoint(headers=headers, body=body, method=method, query=query, **args)
        raise HubError(404, f"No route for {method} {path}")

    def whoami(self, headers, **_):
        who = self.user(headers)
        if who is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        user, role = who
        auth = {"type": "access_token", "accessToken": {"displayName": f"{role} token", "role": role}}
        return _json({"type": "user", "name": user, "fullname": user, "orgs": [], "auth": auth})

    def validate_yaml(self, body, **_):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return _json({"errors": [{"message": f"invalid YAML: {exc}"}]}, 400)
        if not isinstance(meta, dict):
            return _json({"errors": [{"message": "metadata must be a mapping"}]}, 400)
        return _json({"errors": [], "warnings": []})

    def create_repo(self, headers, body, **_):
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or (self.user(headers) or ("", ""))[0]
        self.check_write(headers, namespace)
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.url}/{'spaces/' if repo_type == 'space' else ''}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return _json({"error": "You already created this repo", "url": url}, 409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private, payload.get("sdk"))
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, headers, kind, repo, rev="main", **_):
        r = self.readable(headers, kind, repo)
        _check_revision(rev)
        siblings = [{"rfilename": p} for p in sorted(r.files)]
        return _json({"id": repo, "author": repo.split("/")[0], "sha": r.sha, "private": r.private, "sdk": r.sdk,
                      "siblings": siblings})

    def preupload(self, headers, body, kind, repo, rev, **_):
        r = self.writable(headers, kind, repo)
        _check_revision(rev)
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000 or b"\0" in sample
            oid = r.oid(f["path"]) if f["path"] in r.files else None
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        return _json({"files": files, "commitOid": r.sha})

    def lfs_batch(self, headers, body, repo, kind=None, **_):
        self.writable(headers, "space" if kind else "model", repo)
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:  # already stored: no upload action, the client skips it
                self.pending[obj["oid"]] = obj["size"]
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}", "expires_in": 3600}}
            objects.append(entry)
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, body, oid, **_):
        # Like a pre-signed storage URL: no Authorization expected; the content must match the batch request.
        if oid not in self.pending:
            raise HubError(403, "Upload URL not issued")
        if len(body) != self.pending[oid] or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "Content does not match its announced size and sha256")
        self.lfs_objects[oid] = body
        del self.pending[oid]
        return 200, {"ETag": f'"{oid[:32]}"'}, b""

    def commit(self, headers, body, kind, repo, rev, **_):
        r = self.writable(headers, kind, repo)
        _check_revision(rev)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        files, lfs = dict(r.files), set(r.lfs)
        for line in lines[1:]:
            value = line["value"]
            path = value["path"]
            if line["key"] == "file":
                files[path] = base64.b64decode(value["content"])
                lfs.discard(path)
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} for {path} was never uploaded")
                files[path] = self.lfs_objects[value["oid"]]
                lfs.add(path)
            elif line["key"] == "deletedFile":
                if path not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
                lfs.discard(path)
            else:
                raise HubError(400, f"Unsupported commit operation {line['key']}")
        summary = lines[0]["value"]["summary"]
        oid = hashlib.sha1(f"{r.sha}\n{summary}\n{len(r.commits)}".encode()).hexdigest()
        r.files, r.lfs = files, lfs
        r.commits.append({"oid": oid, "summary": summary, "paths": sorted(p["value"]["path"] for p in lines[1:])})
        prefix = "spaces/" if kind == "space" else ""
        return _json({"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{prefix}{repo}/commit/{oid}",
                      "pullRequestUrl": None})

    def resolve(self, headers, method, repo, rev, file, kind=None, **_):
        r = self.readable(headers, "space" if kind else "model", repo)
        _check_revision(rev)
        if file not in r.files:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data, etag = r.files[file], r.oid(file)
        out = {"ETag": f'"{etag}"', "X-Repo-Commit": r.sha, "Content-Type": "application/octet-stream"}
        if file in r.lfs:
            out.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        return 200, out, data

    # -- sign-in (OAuth) ------------------------------------------------------------------------

    def openid_configuration(self, **_):
        # What a Space's OPENID_PROVIDER_URL serves; authlib reads it before the first redirect.
        return _json({"issuer": self.url, "authorization_endpoint": f"{self.url}/oauth/authorize",
                      "token_endpoint": f"{self.url}/oauth/token", "jwks_uri": f"{self.url}/oauth/jwks",
                      "response_types_supported": ["code"], "id_token_signing_alg_values_supported": ["RS256"],
                      "scopes_supported": ["openid", "profile", "write-repos", "manage-repos"]})

    def oauth_authorize(self, headers, query, **_):
        who = self.user(headers)
        if who is None:
            raise HubError(401, "Sign in to the Hub first")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        code = secrets.token_hex(16)
        self.codes[code] = {"user": who[0], "client_id": params["client_id"], "nonce": params.get("nonce"),
                            "scope": params.get("scope", "")}
        redirect = params["redirect_uri"]
        location = f"{redirect}{'&' if '?' in redirect else '?'}{urlencode({'code': code, 'state': params['state']})}"
        return 302, {"Location": location}, b""

    def oauth_token(self, body, **_):
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        grant = self.codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or grant is None:
            return _json({"error": "invalid_grant"}, 400)
        access = "hf_oauth_" + secrets.token_hex(16)
        self.tokens[access] = (grant["user"], "write")  # the scopes asked for: write-repos, manage-repos
        self.signed_in.append(access)
        now = int(time.time())
        claims = {"iss": self.url, "sub": f"user-{grant['user']}", "aud": grant["client_id"], "iat": now,
                  "exp": now + 3600, "name": grant["user"], "preferred_username": grant["user"],
                  "profile": f"{self.url}/{grant['user']}", "picture": f"{self.url}/avatars/{grant['user']}.png"}
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        from joserfc import jwt  # authlib's JOSE library: it comes with gradio[oauth]

        id_token = jwt.encode({"alg": "RS256", "kid": self._signing_key.kid}, claims, self._signing_key)
        return _json({"access_token": access, "token_type": "bearer", "expires_in": 3600, "scope": grant["scope"],
                      "id_token": id_token})

    def oauth_jwks(self, **_):
        from joserfc.jwk import KeySet

        return _json(KeySet([self._signing_key]).as_dict(private=False))

    @functools.cached_property
    def _signing_key(self):
        from joserfc.jwk import RSAKey

        return RSAKey.generate_key(2048, parameters={"kid": "fake-hub", "use": "sig", "alg": "RS256"})


def _check_revision(rev: str) -> None:
    if rev != "main":
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def _json(obj, status: int = 200) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, *args) -> None:  # quiet: the hub keeps its own log
        pass

    def _serve(self) -> None:
        hub: FakeHub = self.server.hub
        body = self._read_body()
        path = urlsplit(self.path).path
        hub.requests.append(Request(self.command, self.path, list(self.headers.items()), body))
        try:
            status, headers, payload = hub.handle(self.command, path, self.headers, body, urlsplit(self.path).query)
        except HubError as exc:
            status, headers, payload = _json({"error": exc.message}, exc.status)
            headers["X-Error-Message"] = exc.message
            if exc.code:
                headers["X-Error-Code"] = exc.code
            repo = next((r for (_, rid), r in hub.repos.items() if f"/{rid}/" in path), None)
            if repo is not None:
                headers["X-Repo-Commit"] = repo.sha
        except Exception as exc:  # noqa: BLE001 - a bug here: answer 400 at once (a 5xx would make the client retry for ~20 s)
            status, headers, payload = _json({"error": f"FakeHub could not handle the request: {exc!r}"}, 400)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        # huggingface_hub sends a Content-Length with every body, LFS uploads included.
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve
