from __future__ import annotations

from django.db import InterfaceError, OperationalError

from llmsite.errors import exception_handler, to_api_error


def test_database_down_is_a_retryable_503():
    for exc in (OperationalError("connection refused"), InterfaceError("connection closed")):
        err = to_api_error(exc)
        assert err is not None
        assert err.status == 503
        assert err.code == "service_unavailable"
        assert err.headers["Retry-After"] == "1"
        assert "connection" not in err.message


def test_database_down_renders_in_the_error_shape():
    response = exception_handler(OperationalError("server closed the connection"), {"view": None})
    assert response.status_code == 503
    assert set(response.data["error"]) == {"message", "type", "param", "code"}
