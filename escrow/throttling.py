"""Rate limits (DRF throttling on the default cache, i.e. Redis shared by all workers)."""
from __future__ import annotations

import threading
import weakref

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.throttling import SimpleRateThrottle

from .authentication import is_wallet

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


class SignInThrottle(RedisSlidingWindowThrottle):
    """The anonymous sign-in endpoints, per client IP: settings.SIWE_THROTTLE_RATE."""

    scope = "sign_in"

    def get_rate(self):
        return settings.SIWE_THROTTLE_RATE

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
