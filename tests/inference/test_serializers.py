"""Request serializers reuse their bound fields per thread (StrictSerializer.fields):
each validation must still see only its own request, its own context, and a
nested serializer of its own."""

from __future__ import annotations

import threading

import pytest
from rest_framework.exceptions import ValidationError

from inference.serializers import ChatCompletionRequestSerializer, CompletionRequestSerializer
from llmsite.errors import InvalidRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def _valid(serializer_class, body: dict, **kwargs) -> dict:
    serializer = serializer_class(data=body, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def test_a_later_request_is_validated_on_its_own_after_one_that_failed():
    with pytest.raises(ValidationError) as caught:
        _valid(ChatCompletionRequestSerializer, {**CHAT, "max_tokens": -1})
    assert "max_tokens" in caught.value.detail
    with pytest.raises(InvalidRequest) as unknown:
        _valid(ChatCompletionRequestSerializer, {**CHAT, "frobnicate": 1})
    assert unknown.value.param == "frobnicate"
    data = _valid(ChatCompletionRequestSerializer, {**CHAT, "temperature": 0.5})
    assert data["max_tokens"] == 4 and data["temperature"] == 0.5
    assert data["messages"][0]["content"] == "Hi"
    # Nothing of the earlier request's values stays behind.
    assert _valid(ChatCompletionRequestSerializer, CHAT)["temperature"] != 0.5


def test_each_serializer_binds_the_shared_fields_to_itself_and_its_context():
    first = CompletionRequestSerializer(data={"model": "m", "prompt": "a"}, context={"n": 1})
    assert first.is_valid()
    second = CompletionRequestSerializer(data={"model": "m", "prompt": "b"}, context={"n": 2})
    assert second.is_valid()
    assert second.fields is first.fields  # shared within the thread
    assert all(field.root is second for field in second.fields.values())
    assert second.fields["prompt"].context == {"n": 2}
    assert first.validated_data["prompt"] == ["a"] and second.validated_data["prompt"] == ["b"]


def test_each_thread_validates_with_fields_of_its_own():
    seen: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def validate(i: int) -> None:
        try:
            barrier.wait()
            for n in range(200):
                serializer = ChatCompletionRequestSerializer(data={**CHAT, "max_tokens": i + n})
                assert serializer.is_valid(), serializer.errors
                assert serializer.validated_data["max_tokens"] == i + n
            seen[i] = serializer.fields
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=validate, args=(i,)) for i in (1, 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen[1] is not seen[1000]
