"""Rate limits (DRF throttling on the default cache, i.e. Redis shared by all workers), and the
client address every per-address decision uses (these limits, the console's sign-in lockout,
the /metrics allow-list).

The client address: REMOTE_ADDR, or with API_TRUSTED_PROXIES = N proxies in front, the address
the outermost of them saw (the N-th entry of X-Forwarded-For from the right; entries before it
are the client's own claims). Per-address limits count an IPv6 client by its /64: one subscriber
gets a whole /64 and can change address within it at will.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import weakref

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.throttling import SimpleRateThrottle

from .authentication import is_wallet

log = logging.getLogger(__name__)

_proxy_warning_lock = threading.Lock()
_proxy_warning_given = False


def client_address(request) -> str:
    """The address of the client that sent `request` (a Django or DRF request), as far as the
    trusted proxies (settings.API_TRUSTED_PROXIES) let us know it."""
    remote = request.META.get("REMOTE_ADDR", "")
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if forwarded is None:
        return remote
    proxies = settings.API_TRUSTED_PROXIES
    if proxies == 0:
        _warn_untrusted_proxy(remote)
        return remote
    hops = [hop.strip() for hop in forwarded.split(",")]
    return hops[-min(proxies, len(hops))] or remote


def rate_limit_address(request) -> str:
    """client_address() as per-address limits count it: an IPv6 address stands for its /64 (given
    as the network's first address, so it is still an address: django-axes stores it as one)."""
    address = client_address(request)
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 4:
        return str(parsed)
    if parsed.ipv4_mapped is not None:  # ::ffff:a.b.c.d is an IPv4 client
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False).network_address)


def _warn_untrusted_proxy(remote: str) -> None:
    """Requests carry X-Forwarded-For but no proxy is trusted: if a proxy really is in front, every
    client has its address and shares one budget of every per-address limit. Said once per process."""
    global _proxy_warning_given
    if _proxy_warning_given:
        return
    with _proxy_warning_lock:
        if _proxy_warning_given:
            return
        _proxy_warning_given = True
    log.warning(
        "requests arrive with an X-Forwarded-For header (first from %s) but API_TRUSTED_PROXIES is 0: if a "
        "proxy is in front of this server, every client counts as the proxy's address and shares one sign-in "
        "and rate-limit budget. Set API_TRUSTED_PROXIES to the number of proxies in front (docs/configuration.md).",
        remote,
    )

# DRF's sliding-window check (SimpleRateThrottle.allow_request) done inside Redis, so it costs one
# round trip instead of a GET and a SET, and two workers can no longer both read the same history
# and both let a request through (the GET/SET pair is not atomic). Same data layout as DRF's
# history: request times, newest first, in a list under the same key, expiring after the window.
#   KEYS[1] the history; ARGV[1] now (seconds, float), ARGV[2] window (seconds), ARGV[3] requests allowed.
#   Returns nil when the request is allowed (and recorded), else the whole history (for wait()).
_SLIDING_WINDOW_LUA = """
local key = KEYS[1]
if redis.call('TYPE', key).ok ~= 'list' then
  redis.call('DEL', key)  -- a history DRF itself stored (a pickled list): start a new one
end
local horizon = tonumber(ARGV[1]) - tonumber(ARGV[2])
while true do
  local oldest = redis.call('LINDEX', key, -1)
  if (not oldest) or tonumber(oldest) > horizon then break end
  redis.call('RPOP', key)
end
if redis.call('LLEN', key) >= tonumber(ARGV[3]) then
  return redis.call('LRANGE', key, 0, -1)
end
redis.call('LPUSH', key, ARGV[1])
redis.call('EXPIRE', key, ARGV[2])
return false
"""

# One registered script (and redis client) per cache backend instance. Django's RedisCache builds a
# new redis.Redis object on every operation, which costs more CPU than the round trip itself.
_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_scripts_lock = threading.Lock()


def _sliding_window_script(backend: RedisCache):
    client = backend._cache  # django.core.cache.backends.redis.RedisCacheClient: owns the connection pools
    script = _scripts.get(client)
    if script is None:
        with _scripts_lock:
            script = _scripts.get(client)
            if script is None:
                script = _scripts[client] = client.get_client(write=True).register_script(_SLIDING_WINDOW_LUA)
    return script


class RedisSlidingWindowThrottle(SimpleRateThrottle):
    """SimpleRateThrottle whose check-and-record is one atomic Redis script (see _SLIDING_WINDOW_LUA).

    Same semantics as DRF's: at most num_requests in any window of `duration` seconds per cache
    key, refused requests are not recorded, and wait() (DRF's, unchanged) gives Retry-After from
    the history the script returns. With a cache that is not Redis it falls back to DRF's own code.
    """

    def allow_request(self, request, view):
        backend = caches[DEFAULT_CACHE_ALIAS]
        if self.rate is None or not isinstance(backend, RedisCache):
            return super().allow_request(request, view)
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        refused_history = _sliding_window_script(backend)(
            keys=[backend.make_and_validate_key(self.key)], args=[repr(self.now), self.duration, self.num_requests]
        )
        if refused_history is None:
            self.history = None  # recorded in Redis; only wait() (after a refusal) reads it
            return True
        self.history = [float(t) for t in refused_history]
        return self.throttle_failure()

    def get_ident(self, request) -> str:
        return rate_limit_address(request)


class _PerWalletThrottle(RedisSlidingWindowThrottle):
    """Counted per signed-in wallet (staff sessions by user id, anything else by client IP)."""

    def get_cache_key(self, request, view):
        user = request.user
        if is_wallet(user):
            ident = "wallet:" + user.address.lower()
        elif user is not None and user.is_authenticated:
            ident = f"user:{user.pk}"
        else:
            ident = "ip:" + self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class WalletAuthorizationThrottle(_PerWalletThrottle):
    """authorize-payment and request-cancellation: settings.AUTHORIZATION_THROTTLE_RATE per wallet.
    Each call signs something and spends a nonce."""

    scope = "authorization"

    def get_rate(self):
        return settings.AUTHORIZATION_THROTTLE_RATE


class WalletWriteThrottle(_PerWalletThrottle):
    """Creating bookings and reporting transactions: settings.WALLET_WRITE_THROTTLE_RATE per
    wallet. Each booking is a row reconciliation reads on chain every run; each report fetches
    a receipt from the RPC node the scanner also depends on."""

    scope = "wallet_writes"

    def get_rate(self):
        return settings.WALLET_WRITE_THROTTLE_RATE


class TransactionLookupThrottle(_PerWalletThrottle):
    """GET /api/transactions/{hash}/: settings.TRANSACTION_LOOKUP_THROTTLE_RATE per wallet (staff
    per user). A lookup the database cannot answer asks the RPC node the scanner depends on."""

    scope = "transaction_lookups"

    def get_rate(self):
        return settings.TRANSACTION_LOOKUP_THROTTLE_RATE


class SignInThrottle(RedisSlidingWindowThrottle):
    """The anonymous sign-in endpoints, per client IP: settings.SIWE_THROTTLE_RATE."""

    scope = "sign_in"

    def get_rate(self):
        return settings.SIWE_THROTTLE_RATE

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class PublicThrottle(RedisSlidingWindowThrottle):
    """Every caller of a public page (the OpenAPI schema and its docs), per client address:
    settings.PUBLIC_THROTTLE_RATE. A bearer token or a session does not buy a separate budget."""

    scope = "public"

    def get_rate(self):
        return settings.PUBLIC_THROTTLE_RATE

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
