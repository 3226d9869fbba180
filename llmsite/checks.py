"""Django's security checks, for the middleware subclasses in llmsite.middleware.

Django finds its security, CSRF and clickjacking middleware by dotted path, so
with our subclasses (the same middleware, hooks on the event loop) it would
report them missing (security.W001-W003) and skip every check that depends on
them (HSTS, SSL redirect, nosniff, X-Frame-Options, secure CSRF cookie...).
Here they (and the session middleware) are found by class instead, and the checks that depend on
them run as Django's own code, with Django's ids and messages.
"""

from __future__ import annotations

from unittest import mock

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


def _gated_checks() -> list:
    return [
        base.check_sts,
        base.check_sts_include_subdomains,
        base.check_sts_preload,
        base.check_content_type_nosniff,
        base.check_ssl_redirect,
        base.check_xframe_deny,
        base.check_referrer_policy,
        base.check_cross_origin_opener_policy,
        csrf.check_csrf_cookie_secure,
        sessions.check_session_cookie_secure,
        sessions.check_session_cookie_httponly,
    ]


@checks.register(checks.Tags.security, deploy=True)
def middleware_checks(app_configs, **kwargs) -> list[checks.CheckMessage]:
    security, xframe, csrf_ = (
        _installed(SecurityMiddleware),
        _installed(XFrameOptionsMiddleware),
        _installed(CsrfViewMiddleware),
    )
    session = _installed(SessionMiddleware)
    messages: list[checks.CheckMessage] = []
    for present, warning in ((security, base.W001), (xframe, base.W002), (csrf_, csrf.W003)):
        if not present:
            messages.append(checks.Warning(warning.msg, id=f"llmsite.{warning.id}"))
    with (
        mock.patch.object(base, "_security_middleware", lambda: security),
        mock.patch.object(base, "_xframe_middleware", lambda: xframe),
        mock.patch.object(csrf, "_csrf_middleware", lambda: csrf_),
        mock.patch.object(sessions, "_session_middleware", lambda: session),
    ):
        for check in _gated_checks():
            messages.extend(check(app_configs))
    return messages
