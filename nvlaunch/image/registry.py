"""A registry client for the distribution HTTP API v2, stdlib only (http.client).

Plain http for 127.0.0.1, ::1 and localhost (where a test or a local mirror listens),
https everywhere else.  Anonymous pulls, with the bearer-token flow of the distribution
spec: a 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` is answered
by asking the realm for a token (anonymously) and sending it.  Redirects (blob storage)
are followed, without the token when the host changes.  Every manifest fetched by
digest, every index entry and every blob is checked against its digest and size by the
caller (the cache); a manifest fetched by tag against Docker-Content-Digest when sent.
"""
from __future__ import annotations

import os

from nvlaunch.core.errors import quote
from nvlaunch.image.errors import ImageError
from nvlaunch.image.reference import Reference
from nvlaunch.image.transports import (DOCKER_LIST, DOCKER_MANIFEST, MAX_JSON, OCI_INDEX, OCI_MANIFEST,
                                       Source, sha256_digest)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
LOCAL = ("127.0.0.1", "localhost", "::1", "[::1]")
ENV_TIMEOUT = "NVLAUNCH_PULL_TIMEOUT"       # seconds without progress before a pull gives up
DEFAULT_TIMEOUT = 60
MAX_REDIRECTS = 5


def _split_host(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ImageError(f"{quote(hostport)}: not a valid port")
    return host, int(port) if port else None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """A WWW-Authenticate value -> (scheme lowercased, its parameters)."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            j = i + 1
            value = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                value.append(rest[j])
                j += 1
            params[key] = "".join(value)
            i = j + 1
        else:
            j = rest.find(",", i)
            j = n if j < 0 else j
            params[key] = rest[i:j].strip()
            i = j
    return scheme.lower(), params


class Registry(Source):
    def __init__(self, ref: Reference):
        self.ref, self.shown = ref, ref.name
        host = "registry-1.docker.io" if ref.host == "docker.io" else ref.host
        self.host = host
        name, _ = _split_host(host)
        self.scheme = "http" if name in LOCAL else "https"
        self.token: str | None = None
        raw = os.environ.get(ENV_TIMEOUT, "")
        self.timeout = int(raw) if raw.isascii() and raw.isdigit() and 0 < int(raw) < 86400 \
            else DEFAULT_TIMEOUT

    # ---- HTTP -------------------------------------------------------------------------

    def _connect(self, scheme: str, hostport: str) -> Any:
        import http.client
        host, port = _split_host(hostport)
        if scheme == "https":
            import ssl
            return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _get(self, url: str, accept: str | None = None, auth: bool = True) -> Any:
        """GET `url` (an absolute http(s) URL); the open response on 200.  Follows
        redirects, answers one bearer challenge; ImageError for anything else."""
        from urllib.parse import urljoin, urlsplit
        retried = False
        host0 = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 2):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ImageError(f"{self.shown}: {quote(url)}: not an http(s) URL")
            headers = {"User-Agent": "nvlaunch", "Accept": accept or "*/*"}
            if auth and self.token and parts.netloc == host0:
                headers["Authorization"] = f"Bearer {self.token}"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn = self._connect(parts.scheme, parts.netloc)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except OSError as err:
                conn.close()
                raise ImageError(f"{self.shown}: {parts.scheme}://{parts.netloc}: "
                                 f"{getattr(err, 'strerror', None) or err}") from None
            except Exception as err:  # noqa: BLE001 - http.client's own errors
                conn.close()
                raise ImageError(f"{self.shown}: {parts.scheme}://{parts.netloc}: {err}") from None
            status = resp.status
            if status == 200:
                resp.conn_ref = conn        # closed with the response
                return resp
            location = resp.getheader("Location")
            challenge = resp.getheader("WWW-Authenticate") or ""
            body = resp.read(4096)
            conn.close()
            if status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            if status == 401 and auth and not retried:
                self._authenticate(challenge)
                retried = True
                continue
            raise ImageError(f"{self.shown}: {self._explain(status, body)}")
        raise ImageError(f"{self.shown}: too many redirects")

    def _explain(self, status: int, body: bytes) -> str:
        from nvlaunch.image.transports import load_json
        detail = ""
        try:
            doc = load_json(body, "")
            errs = doc.get("errors") if isinstance(doc, dict) else None
            if isinstance(errs, list) and errs and isinstance(errs[0], dict):
                detail = f": {errs[0].get('code', '')} {errs[0].get('message', '')}".rstrip()
        except ImageError:
            pass
        what = {401: "unauthorized (this registry needs a login; nvlaunch pulls anonymously)",
                403: "access denied", 404: "not found (no such image or tag)",
                429: "too many requests"}.get(status, f"HTTP {status}")
        return f"{what}{detail}"

    def _authenticate(self, header: str) -> None:
        from urllib.parse import urlencode
        scheme, params = _challenge(header)
        if scheme != "bearer" or not params.get("realm"):
            raise ImageError(f"{self.shown}: unauthorized: the registry asks for "
                             f"{quote(scheme or 'nothing')} authentication (only anonymous bearer "
                             "tokens are supported)")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.ref.repo}:pull")
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        resp = self._get(url, "application/json", auth=False)
        try:
            data = resp.read(MAX_JSON)
        finally:
            resp.close()
            resp.conn_ref.close()
        from nvlaunch.image.transports import load_json
        doc = load_json(data, f"{self.shown}: the token from {realm}")
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise ImageError(f"{self.shown}: {realm} gave no token")
        self.token = token

    def _url(self, kind: str, ref: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.ref.repo}/{kind}/{ref}"

    # ---- the Source -------------------------------------------------------------------

    def manifest(self) -> tuple[bytes, str]:
        want = self.ref.digest or self.ref.tag
        resp = self._get(self._url("manifests", want), ACCEPT)
        try:
            data = resp.read(MAX_JSON + 1)
            sent = resp.getheader("Docker-Content-Digest")
        finally:
            resp.close()
            resp.conn_ref.close()
        if len(data) > MAX_JSON:
            raise ImageError(f"{self.shown}: the manifest is larger than {MAX_JSON >> 20} MiB")
        digest = sha256_digest(data)
        if self.ref.digest and digest != self.ref.digest:
            raise ImageError(f"{self.shown}: the registry's manifest has digest {digest}, "
                             f"not {self.ref.digest}")
        if sent and sent.startswith("sha256:") and sent != digest:
            raise ImageError(f"{self.shown}: the manifest does not match its Docker-Content-Digest")
        return self.resolve_index(data, digest)

    def blob(self, desc: dict[str, Any]) -> Any:
        if desc.get("urls"):
            raise ImageError(f"{self.shown}: {desc['digest']}: a foreign layer (urls): not supported")
        kind = "manifests" if desc.get("mediaType") in (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX,
                                                        DOCKER_LIST) else "blobs"
        return _Stream(self._get(self._url(kind, desc["digest"]), ACCEPT if kind == "manifests" else None))


class _Stream:
    """A response as a context manager that closes its connection too."""

    def __init__(self, resp: Any):
        self.resp = resp

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.resp.read(n if n >= 0 else None)
        return data

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.resp.close()
        self.resp.conn_ref.close()
