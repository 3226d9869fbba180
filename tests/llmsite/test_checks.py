"""The deploy security checks Django skips for our middleware subclasses run here."""

from __future__ import annotations

from llmsite.checks import middleware_checks

SECURE = {
    "SECURE_HSTS_SECONDS": 31536000,
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
    "SECURE_HSTS_PRELOAD": True,
    "SECURE_CONTENT_TYPE_NOSNIFF": True,
    "SECURE_SSL_REDIRECT": True,
    "SECURE_REFERRER_POLICY": "same-origin",
    "SECURE_CROSS_ORIGIN_OPENER_POLICY": "same-origin",
    "X_FRAME_OPTIONS": "DENY",
    "CSRF_USE_SESSIONS": False,
    "CSRF_COOKIE_SECURE": True,
    "SESSION_COOKIE_SECURE": True,
    "SESSION_COOKIE_HTTPONLY": True,
}


def ids(settings, **changes) -> set[str]:
    for name, value in {**SECURE, **changes}.items():
        setattr(settings, name, value)
    return {message.id for message in middleware_checks(None)}


def test_secure_settings_pass(settings):
    assert ids(settings) == set()


def test_insecure_settings_are_reported_with_djangos_ids(settings):
    found = ids(
        settings,
        SECURE_HSTS_SECONDS=0,
        SECURE_SSL_REDIRECT=False,
        SECURE_CONTENT_TYPE_NOSNIFF=False,
        X_FRAME_OPTIONS="SAMEORIGIN",
        CSRF_COOKIE_SECURE=False,
        SESSION_COOKIE_SECURE=False,
        SESSION_COOKIE_HTTPONLY=False,
        SECURE_REFERRER_POLICY=None,
    )
    assert found == {
        "security.W004",
        "security.W006",
        "security.W008",
        "security.W019",
        "security.W016",
        "security.W011",
        "security.W014",
        "security.W022",
    }


def test_hsts_without_subdomains_or_preload_is_reported(settings):
    found = ids(settings, SECURE_HSTS_INCLUDE_SUBDOMAINS=False, SECURE_HSTS_PRELOAD=False)
    assert found == {"security.W005", "security.W021"}


def test_bad_policies_are_errors(settings):
    found = ids(
        settings, SECURE_REFERRER_POLICY="nonsense", SECURE_CROSS_ORIGIN_OPENER_POLICY="nonsense"
    )
    assert found == {"security.E023", "security.E024"}


def test_missing_middleware_is_reported_under_our_ids(settings):
    settings.MIDDLEWARE = ["llmsite.middleware.request_context"]
    assert {m.id for m in middleware_checks(None)} == {
        "llmsite.security.W001",
        "llmsite.security.W002",
        "llmsite.security.W003",
    }


def test_csrf_in_sessions_needs_no_secure_csrf_cookie(settings):
    assert ids(settings, CSRF_USE_SESSIONS=True, CSRF_COOKIE_SECURE=False) == set()
