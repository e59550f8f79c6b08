"""What the router puts in its mDNS announcement and how a node ranks the routers that answer.

Pure functions and records, no sockets: everything here is unit-tested without zeroconf.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from attrs import frozen

from herd_kernel import __version__

DEFAULT_SERVICE_TYPE = "_herd._tcp.local."
# bumped when the meaning of the TXT keys or of /fleet/hello changes incompatibly
TXT_API = "1"
# "bind everywhere" spellings: announce the machine's addresses rather than the bind address
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
# a DNS label is at most 63 bytes; keep room for the "-2" zeroconf appends on a name conflict
_MAX_INSTANCE_BYTES = 58


def service_txt(secured: bool) -> dict[str, str]:
    """The TXT record. ``secured`` says only *whether* a fleet secret is set: nothing derived
    from the secret goes out, since anyone on the LAN can read (and replay) an announcement."""
    return {"path": "/", "version": __version__, "secured": "1" if secured else "0", "api": TXT_API}


def normalize_service_type(text: str) -> str:
    text = text.strip() or DEFAULT_SERVICE_TYPE
    return text if text.endswith(".") else text + "."


def instance_name(configured: str, hostname: str | None = None) -> str:
    """The DNS-SD instance name: the configured one, else "Herd router on <host name>"."""
    name = configured.strip() or f"Herd router on {hostname or socket.gethostname()}"
    name = name.replace(".", " ")  # a dot would split the instance label in two
    raw = name.encode()
    if len(raw) > _MAX_INSTANCE_BYTES:
        name = raw[:_MAX_INSTANCE_BYTES].decode(errors="ignore").rstrip()
    return name


def server_label(hostname: str, suffix: str) -> str:
    """A host name of our own (``<host>-herd-<suffix>.local.``) for the SRV/A records.

    Not the machine's ``<host>.local.``: Avahi or mDNSResponder already own that name and would
    see our narrower address set as a conflict; and two namespaces or containers sharing one host
    name must not merge their addresses under one name.
    """
    label = re.sub(r"[^a-z0-9-]+", "-", hostname.split(".")[0].lower()).strip("-")[:40] or "herd"
    return f"{label}-herd-{suffix}.local."


def split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.port is not None:
        return parts.hostname or "", parts.port
    return parts.hostname or "", 443 if parts.scheme == "https" else 80


def parse_interfaces(text: str) -> list[str]:
    """FLEET_MDNS_INTERFACES: comma-separated IPv4 addresses; empty means every interface."""
    out: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"FLEET_MDNS_INTERFACES: {item!r} is not an IP address") from None
        if address.version != 4:
            raise ValueError(f"FLEET_MDNS_INTERFACES: {item!r} is IPv6; Herd's mDNS is IPv4 only")
        if item not in out:
            out.append(item)
    return out


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address if isinstance(address, ipaddress.IPv4Address) else None


def announced_addresses(
    bind: str, local_ipv4: Iterable[str], interfaces: Sequence[str] = ()
) -> list[str]:
    """The IPv4 addresses to put in the A records for a router listening on ``bind``.

    ``bind`` is an address (a host name is resolved before this is called). A wildcard bind is
    reachable on every address of the machine: announce the non-loopback ones (only the
    restricted interfaces' when FLEET_MDNS_INTERFACES is set), since a loopback address means
    "yourself" to whoever reads it. A machine with nothing but loopback (a fresh network
    namespace) announces 127.0.0.1, which is all it can be reached on. A loopback bind is
    reachable only through loopback, so 127.0.0.1 is announced with it (``localhost`` may
    resolve to another 127/8 address). An IPv6 bind announces nothing: IPv4 only.
    """
    if bind in WILDCARD_BINDS:
        pool = list(interfaces) if interfaces else list(local_ipv4)
        found = [ip for ip in pool if (a := _ipv4(ip)) is not None and not a.is_loopback]
        if interfaces and not found:
            found = [ip for ip in pool if _ipv4(ip) is not None]
        return _unique(found or ["127.0.0.1"])
    address = _ipv4(bind)
    if address is None:
        return []
    return _unique([bind, "127.0.0.1"] if address.is_loopback else [bind])


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def address_order(address: str) -> tuple[int, int]:
    """Try a router's LAN addresses before a loopback one, then in numeric order: stable, so
    the same announcement always yields the same URL."""
    parsed = _ipv4(address)
    if parsed is None:
        return (2, 0)
    return (1 if parsed.is_loopback else 0, int(parsed))


def candidate_urls(addresses: Iterable[str], port: int, txt: Mapping[str, str]) -> list[str]:
    """Router base URLs from one resolved service: IPv4 only, TXT ``path`` honoured if sane."""
    path = txt.get("path") or "/"
    if not path.startswith("/") or any(ch in path for ch in "?#@\\ ") or "//" in path:
        path = "/"
    path = path.rstrip("/")
    ipv4 = sorted({a for a in addresses if _ipv4(a) is not None}, key=address_order)
    if not 0 < port < 65536:
        return []
    return [f"http://{a}:{port}{path}" for a in ipv4]


def decode_txt(properties: Mapping[bytes | str, bytes | str | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in properties.items():
        k = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes):
            v = value.decode(errors="replace")
        else:
            v = "" if value is None else str(value)
        out[k.lower()] = v
    return out


@frozen(kw_only=True)
class Candidate:
    """A router that answered ``GET /fleet/hello`` as Herd at ``url``."""

    url: str
    service: str  # the DNS-SD instance that announced it
    router_id: str
    version: str
    claims_secured: bool  # TXT ``secured`` (else /fleet/hello's ``secured``): a claim, not proof
    proved: bool  # answered this node's nonce with the fleet secret's HMAC

    def describe(self) -> dict[str, object]:
        return {"url": self.url, "service": self.service, "router_id": self.router_id,
                "secured": self.claims_secured, "proved": self.proved}


def rank(
    candidates: Iterable[Candidate], has_secret: bool, handed_out: Mapping[str, int] | None = None
) -> list[Candidate]:
    """Best first, deterministically.

    1. a router that proved it knows this node's secret (only possible when the node has one);
    2. a URL handed to the agent fewer times: the agent asks again only when it refused the last
       answer (``_trust`` failed), so the next call must offer another router if there is one;
    3. a router whose claimed ``secured`` matches whether this node has a secret (a node without
       a secret cannot report to a secured router, and should not drift to an open one when it
       has one);
    4. the lowest router id, then the lowest URL: every node on the LAN picks the same router.
    """
    handed_out = handed_out or {}
    return sorted(
        candidates,
        key=lambda c: (
            not c.proved,
            handed_out.get(c.url, 0),
            c.claims_secured != has_secret,
            c.router_id,
            c.url,
        ),
    )
