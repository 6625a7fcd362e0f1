"""A small client of the registry HTTP API v2: read and put manifests, with basic or token auth."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message

import docker.auth

from pytorch_cuda.core.errors import UserError
from pytorch_cuda.publish.retry import (
    AUTH,
    FATAL,
    TRANSIENT,
    RegistryError,
    classify_status,
)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_MANIFESTS = (DOCKER_MANIFEST, OCI_MANIFEST)
ACCEPT = ", ".join([*IMAGE_MANIFESTS, "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.index.v1+json"])
ENV_USER = "PTC_REGISTRY_USER"
ENV_PASSWORD = "PTC_REGISTRY_PASSWORD"
ENV_SOURCE = f"{ENV_USER}/{ENV_PASSWORD}"
TIMEOUT = 60
_TARGET_RE = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:(?P<port>\d{1,5}))?"
                        r"(/(?P<ns>[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*))?$")
_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Target:
    """Where images go: a registry host (and port) and a namespace under it."""

    hostname: str
    port: int | None
    namespace: str

    @property
    def host(self) -> str:
        """host[:port], as the engine and `docker login` name the registry."""
        return self.hostname + (f":{self.port}" if self.port else "")

    @property
    def base_url(self) -> str:
        """The API root: plain HTTP on loopback only (as the engine allows), HTTPS elsewhere."""
        loopback = self.hostname in ("localhost", "[::1]") or self.hostname.startswith("127.")
        return f"{'http' if loopback else 'https'}://{self.host}/v2"

    def repository(self, name: str) -> str:
        """The repository path in the registry, e.g. team/pytorch-cuda."""
        return f"{self.namespace}/{name}" if self.namespace else name

    def ref(self, name: str, tag: str) -> str:
        """The engine's reference, e.g. host:5000/team/pytorch-cuda:tag."""
        return f"{self.host}/{self.repository(name)}:{tag}"


def parse_target(text: str) -> Target:
    """`HOST[:PORT][/NAMESPACE]` from --registry, or a UserError saying what is wrong."""
    match = _TARGET_RE.match(text.strip().rstrip("/"))
    hostname = match["host"] if match else ""
    if not match or not ("." in hostname or match["port"] or hostname == "localhost"
                         or hostname.startswith("[")):
        raise UserError(f"--registry {text!r} is not HOST[:PORT]/NAMESPACE (a registry host with a "
                        "dot or a port, then a lower-case namespace)")
    return Target(hostname, int(match["port"]) if match["port"] else None, match["ns"] or "")


@dataclass(frozen=True)
class Credentials:
    """A user name and secret, and where they came from (for messages; never the secret)."""

    username: str
    password: str
    source: str

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, source={self.source!r})"


def find_credentials(host: str) -> Credentials | None:
    """PTC_REGISTRY_USER/PTC_REGISTRY_PASSWORD, else the engine's client config (docker login)."""
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user or password:
        if not (user and password):
            raise UserError(f"set both {ENV_USER} and {ENV_PASSWORD}, or neither")
        return Credentials(user, password, ENV_SOURCE)
    entry = docker.auth.load_config().resolve_authconfig(host) or {}
    user = entry.get("username") or entry.get("Username")
    password = entry.get("password") or entry.get("Password")
    return Credentials(user, password, "the Docker client config") if user and password else None


@dataclass(frozen=True)
class Manifest:
    """One manifest as the registry stores it: exact bytes, their media type and digest."""

    digest: str
    media_type: str
    body: bytes

    @property
    def config_digest(self) -> str | None:
        """The image config digest (the engine's image ID); None for an index/list."""
        if self.media_type not in IMAGE_MANIFESTS:
            return None
        return json.loads(self.body).get("config", {}).get("digest")


def digest_of(body: bytes) -> str:
    """The content digest of bytes, as registries name manifests."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


class RegistryClient:
    """Manifest reads and writes on one registry; auth challenges are answered per scope."""

    def __init__(self, target: Target, credentials: Credentials | None) -> None:
        self.target = target
        self.credentials = credentials
        self._auth: dict[str, str] = {}

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest of a tag or digest, or None when the registry has none."""
        status, headers, body = self._call("GET", f"/{repository}/manifests/{reference}",
                                           f"repository:{repository}:pull", {"Accept": ACCEPT},
                                           ok=(200, 404))
        if status == 404:
            return None
        digest = digest_of(body)
        claimed = headers.get("Docker-Content-Digest")
        if claimed and claimed != digest:
            raise RegistryError(f"{repository}:{reference} came back as {digest}, "
                                f"but the registry calls it {claimed}", FATAL)
        media_type = (headers.get("Content-Type") or "").split(";")[0].strip()
        return Manifest(digest, media_type or json.loads(body).get("mediaType", ""), body)

    def put_manifest(self, repository: str, tag: str, manifest: Manifest) -> str:
        """Store the exact manifest bytes under `tag`; return the digest the registry reports."""
        _, headers, _ = self._call(
            "PUT", f"/{repository}/manifests/{tag}", f"repository:{repository}:pull,push",
            {"Content-Type": manifest.media_type}, manifest.body, ok=(201,))
        return headers.get("Docker-Content-Digest") or manifest.digest

    def _call(self, method: str, path: str, scope: str, headers: dict[str, str],
              data: bytes | None = None, ok: tuple[int, ...] = (200,)) -> tuple[int, Message, bytes]:
        """One request; a 401 is answered once with credentials, then counts as an auth failure."""
        url = self.target.base_url + path
        status, reply, body = self._send(method, url, headers, data, self._auth.get(scope))
        if status == 401:
            self._auth[scope] = self._answer(reply.get("WWW-Authenticate", ""), scope)
            status, reply, body = self._send(method, url, headers, data, self._auth[scope])
        if status in ok:
            return status, reply, body
        raise RegistryError(self._describe(method, path, status, body), classify_status(status))

    def _send(self, method: str, url: str, headers: dict[str, str], data: bytes | None,
              authorization: str | None) -> tuple[int, Message, bytes]:
        request = urllib.request.Request(url, data=data, method=method, headers={
            **headers, **({"Authorization": authorization} if authorization else {})})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc if isinstance(exc, ssl.SSLError) else getattr(exc, "reason", exc)
            kind = FATAL if isinstance(reason, ssl.SSLError | socket.gaierror) else TRANSIENT
            raise RegistryError(f"{self.target.host} does not answer ({reason})", kind) from None

    def _answer(self, challenge: str, scope: str) -> str:
        """The Authorization header answering a Basic or Bearer challenge."""
        creds = self.credentials
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if not creds:
                raise RegistryError(self._no_credentials(), AUTH)
            token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            return f"Basic {token}"
        if scheme != "bearer":
            raise RegistryError(f"{self.target.host} asks for unsupported authentication "
                                f"{challenge.split(' ', 1)[0]!r}", AUTH)
        params = dict(_CHALLENGE_RE.findall(challenge))
        query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": scope})
        headers = {}
        if creds:
            pair = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
        status, _, body = self._send("GET", f"{params.get('realm', '')}?{query}", headers, None, None)
        if status != 200:
            raise RegistryError(self._rejected(f"token service answered {status}")
                                if creds else self._no_credentials(), classify_status(status))
        reply = json.loads(body)
        return f"Bearer {reply.get('token') or reply.get('access_token')}"

    def _describe(self, method: str, path: str, status: int, body: bytes) -> str:
        try:
            errors = json.loads(body).get("errors") or []
            detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}" for e in errors)
        except (ValueError, AttributeError):
            detail = ""
        if status in (401, 403):
            what = f"{status} {detail}".strip()
            return self._rejected(what) if self.credentials else self._no_credentials()
        return f"{method} {self.target.host}/v2{path} answered {status} {detail}".strip()

    def _rejected(self, detail: str) -> str:
        return (f"{self.target.host} rejected the credentials from {self.credentials.source} "
                f"({detail}); check them (not retried)")

    def _no_credentials(self) -> str:
        return (f"{self.target.host} requires credentials: run 'docker login {self.target.host}' "
                f"or set {ENV_USER} and {ENV_PASSWORD}")
