"""Django's deploy security checks, for the middleware subclasses in llmsite.middleware.

Django finds its security, CSRF, session and clickjacking middleware by dotted
path, so with our subclasses (the same middleware, hooks on the event loop) it
reports them missing (security.W001-W003, silenced in settings) and skips every
check that depends on them: HSTS, SSL redirect, nosniff, X-Frame-Options, the
secure CSRF and session cookies. Here the middleware is found by class, and
those checks' conditions are read from settings as Django's own read them,
answered with Django's own messages (ids and texts).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.core import checks
from django.core.checks.security import base, csrf, sessions
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.module_loading import import_string

# Django's presence warnings, answered below by class.
SILENCED = ["security.W001", "security.W002", "security.W003"]


def _installed(cls: type) -> bool:
    found = (import_string(path) for path in settings.MIDDLEWARE)
    return any(isinstance(m, type) and issubclass(m, cls) for m in found)


def _security_checks() -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    hsts = settings.SECURE_HSTS_SECONDS
    if not hsts:
        messages.append(base.W004)
    elif settings.SECURE_HSTS_INCLUDE_SUBDOMAINS is not True:
        messages.append(base.W005)
    if hsts and settings.SECURE_HSTS_PRELOAD is not True:
        messages.append(base.W021)
    if settings.SECURE_CONTENT_TYPE_NOSNIFF is not True:
        messages.append(base.W006)
    if settings.SECURE_SSL_REDIRECT is not True:
        messages.append(base.W008)
    policy = settings.SECURE_REFERRER_POLICY
    if policy is None:
        messages.append(base.W022)
    else:
        values = {v.strip() for v in policy.split(",")} if isinstance(policy, str) else set(policy)
        if not values <= base.REFERRER_POLICY_VALUES:
            messages.append(base.E023)
    opener = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
    if opener is not None and opener not in base.CROSS_ORIGIN_OPENER_POLICY_VALUES:
        messages.append(base.E024)
    return messages


def _session_checks() -> list[checks.CheckMessage]:
    # Django's own checks still see the sessions app, and say so (W010, W013).
    messages: list[checks.CheckMessage] = []
    if settings.SESSION_COOKIE_SECURE is not True:
        messages.append(sessions.W011)
    if settings.SESSION_COOKIE_HTTPONLY is not True:
        messages.append(sessions.W014)
    return messages


@checks.register(checks.Tags.security, deploy=True)
def middleware_checks(app_configs, **kwargs) -> list[checks.CheckMessage]:
    security, xframe, csrf_, session = (
        _installed(cls)
        for cls in (
            SecurityMiddleware,
            XFrameOptionsMiddleware,
            CsrfViewMiddleware,
            SessionMiddleware,
        )
    )
    messages: list[checks.CheckMessage] = []
    for present, warning in ((security, base.W001), (xframe, base.W002), (csrf_, csrf.W003)):
        if not present:
            messages.append(checks.Warning(warning.msg, id=f"llmsite.{warning.id}"))
    if security:
        messages += _security_checks()
    if xframe and settings.X_FRAME_OPTIONS != "DENY":
        messages.append(base.W019)
    if csrf_ and not settings.CSRF_USE_SESSIONS and settings.CSRF_COOKIE_SECURE is not True:
        messages.append(csrf.W016)
    if session:
        messages += _session_checks()
    return messages
