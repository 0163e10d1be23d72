"""`toolroute serve`'s limits and access rules, with no HTTP library imported (the CLI reads the defaults).

Every limit is finite by default: a client that stalls, hoards connections or floods the queue
costs a bounded amount and gets a status, never a held thread or an unbounded wait.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, SecretStr

DEFAULT_MAX_BODY_BYTES = 1 << 20
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
ANY = "*"


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0, description="larger bodies get 413")
    read_timeout_s: float = Field(
        10.0, gt=0, description="a request's head, and then its body, must each arrive within this (408)"
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle kept-alive connection is closed")
    max_connections: int = Field(64, ge=1, description="open connections served; requests beyond get 503")
    max_queue: int = Field(
        16, ge=0, description="requests waiting for a busy router context; one more gets 503 at once"
    )
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for a router context (then 503)")
    retry_after_s: int = Field(1, ge=0, description="the Retry-After sent with a 503")
    shutdown_timeout_s: float = Field(10.0, ge=0, description="in-flight requests get this long to finish")
    allowed_hosts: tuple[str, ...] = Field(
        (), description="Host names accepted besides loopback ones (NAME or NAME:PORT; '*' any)"
    )
    allowed_origins: tuple[str, ...] = Field(
        (), description="browser origins accepted (scheme://host[:port]; '*' any); others get 403"
    )
    api_key: SecretStr | None = Field(None, description="when set, requests need `Authorization: Bearer KEY`")

    def host_allowed(self, host_header: str | None, bound_host: str, port: int) -> bool:
        """Whether a request's Host header names this server (DNS rebinding sends another name)."""
        if ANY in self.allowed_hosts:
            return True
        if not host_header:
            return False
        return host_header.strip().lower() in self.host_values(bound_host, port)

    def host_values(self, bound_host: str, port: int) -> frozenset[str]:
        """The Host header values accepted: each allowed name alone and with the server's port."""
        names = [*LOOPBACK_NAMES, *self.allowed_hosts]
        if not _is_wildcard(bound_host):
            names.append(bound_host)  # an address the client dialled directly names no other site
        values: set[str] = set()
        for name in names:
            host, explicit_port = _split_host(name)
            values.add(host)
            values.add(f"{host}:{explicit_port if explicit_port is not None else port}")
        return frozenset(values)

    def origin_allowed(self, origin: str) -> bool:
        return ANY in self.allowed_origins or origin.strip().lower().rstrip("/") in {
            o.lower().rstrip("/") for o in self.allowed_origins
        }


def _split_host(name: str) -> tuple[str, str | None]:
    """('host', 'port' or None), lower-cased, IPv6 addresses bracketed as in a Host header."""
    name = name.strip().lower()
    if name.startswith("["):
        host, _, rest = name.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") else None
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        host, sep, port = name.rpartition(":")
        return (host, port) if sep and port.isdigit() else (name, None)
    return (f"[{address}]" if address.version == 6 else str(address)), None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
