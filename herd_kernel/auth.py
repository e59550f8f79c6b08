"""The fleet secret: HMAC-signed heartbeats (so a stranger on the LAN cannot register a node or
forge one's state) and a challenge the router answers so a node can tell a real router from an
impostor that merely announces itself.

Signature header: ``X-Herd-Signature: t=<unix seconds>,n=<nonce>,s=<hex HMAC-SHA256>`` over
``"<t>\\n<n>\\n<METHOD>\\n<path>\\n" + body``. A signature is valid for ``MAX_SKEW`` seconds and
only once (the nonce is remembered), so a captured heartbeat cannot be replayed; and never when
it was made before the router started (the nonces are in memory: a restart forgets them).

The same signature, made with a node's own key instead of the fleet secret, proves that a
heartbeat comes from the admitted node it names (``herd_kernel.admission``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict

import aiohttp

HEADER = "X-Herd-Signature"
MAX_SKEW = 60.0
NODE_KEY_HEADER = "X-Herd-Node-Key"  # the node's key itself: sent only until it is pinned
NODE_SIGNATURE_HEADER = "X-Herd-Node-Signature"  # sign() with the node's key, every heartbeat


def fingerprint(key: str) -> str:
    """A short, comparable form of a node key (the agent logs it; ``herd nodes`` shows it)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return "-".join(digest[i : i + 4] for i in range(0, 16, 4))


def is_loopback(host: str) -> bool:
    """Whether a URL's host names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _mac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path: str, body: bytes, now: float | None = None) -> str:
    stamp = int(time.time() if now is None else now)
    nonce = secrets.token_hex(12)
    message = f"{stamp}\n{nonce}\n{method.upper()}\n{path}\n".encode() + body
    return f"t={stamp},n={nonce},s={_mac(secret, message)}"


def json_headers(secret: str, method: str, path: str, body: bytes) -> dict[str, str]:
    """Headers for a JSON request between router and node: signed when a secret is set."""
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[HEADER] = sign(secret, method, path, body)
    return headers


class NonceCache:
    """Nonces seen within the skew window; bounded, oldest dropped first."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, nonce: str, now: float) -> bool:
        """False when the nonce was already used (a replay)."""
        while self._seen and next(iter(self._seen.values())) < now - 2 * MAX_SKEW:
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        if len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return True


def verify(
    secret: str,
    header: str | None,
    method: str,
    path: str,
    body: bytes,
    nonces: NonceCache,
    now: float | None = None,
    *,
    not_before: float | None = None,
    what: str = "fleet secret",
) -> str | None:
    """None when the signature is good; otherwise the reason it is not (safe to show).
    ``not_before``: the router's start; an older signature is a replay from before it."""
    if not header:
        return "missing signature: this router requires the fleet secret (FLEET_NODE_SECRET)"
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        stamp, nonce, mac = int(fields["t"]), fields["n"], fields["s"]
    except (KeyError, ValueError):
        return "malformed signature"
    now = time.time() if now is None else now
    if abs(now - stamp) > MAX_SKEW:
        return "signature expired (check the clocks of router and node)"
    if not_before is not None and stamp < int(not_before):
        return "signature made before this router started (a replay)"
    message = f"{stamp}\n{nonce}\n{method.upper()}\n{path}\n".encode() + body
    if not hmac.compare_digest(_mac(secret, message), mac):
        return f"bad signature: wrong {what}"
    if not nonces.add(nonce, now):
        return "signature already used (replay)"
    return None


def router_proof(secret: str, nonce: str) -> str:
    return _mac(secret, b"herd-router\n" + nonce.encode())


async def check_router(http: aiohttp.ClientSession, url: str, secret: str, timeout: float = 3.0) -> bool:
    """Does the router at ``url`` know ``secret``? (It answers a fresh challenge with an HMAC.)"""
    nonce = secrets.token_hex(16)
    try:
        async with http.get(
            f"{url.rstrip('/')}/fleet/hello",
            params={"nonce": nonce},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    proof = body.get("proof") if isinstance(body, dict) else None
    return isinstance(proof, str) and hmac.compare_digest(proof, router_proof(secret, nonce))
