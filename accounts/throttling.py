"""Sign-in throttling, shared by POST /api/auth/token/ and /admin/login/."""

from __future__ import annotations

from django.conf import settings
from django_ratelimit.core import is_ratelimited


def login_throttled(request, *, username: str) -> bool:
    """Count one sign-in attempt; True when its IP or its username is over the rate.

    Both counters advance on every attempt, so spreading guesses over many
    usernames from one IP, or over many IPs for one user, is limited too. The
    API and the admin share the counters: alternating between them gains nothing.
    """
    rate = settings.LLMSITE_LOGIN_RATE
    username = str(username)[:150].lower()
    by_ip = is_ratelimited(request, group="login-ip", key="ip", rate=rate, increment=True)
    by_user = is_ratelimited(
        request,
        group="login-user",
        key=lambda group, req: username or "-",
        rate=rate,
        increment=True,
    )
    return by_ip or by_user
