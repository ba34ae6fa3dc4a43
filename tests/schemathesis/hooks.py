"""Schemathesis hooks of credentials.toml: every request comes from its own client address.

The server of that pass trusts 127.0.0.1 as a reverse proxy, so it takes the client's
address from X-Forwarded-For; each request names a new one (10.0.0.1, 10.0.0.2, ...), and
the per-address limiter of failed authentications never sees ten failures from one.
"""

import itertools

import schemathesis

_addresses = itertools.count(1)


@schemathesis.hook
def before_call(context, case, kwargs):
    n = next(_addresses)
    case.headers = {**(case.headers or {}), "X-Forwarded-For": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"}
