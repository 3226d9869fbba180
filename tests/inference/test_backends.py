"""Each backend against the one protocol: typed events, embeddings, tokenize."""

from __future__ import annotations

import pytest

from inference.backends import (
    Backend,
    Finish,
    GenerateRequest,
    TextDelta,
    Usage,
    backend_for,
)
from inference.backends.local import LocalBackend
from inference.backends.remote import RemoteBackend, UpstreamStreamError
from inference.models import LLMModel
from inference.serializers import (
    ChatCompletionRequestSerializer,
    CompletionRequestSerializer,
    EmbeddingRequestSerializer,
)
from llmsite.errors import BackendUnavailable, InvalidRequest, UpstreamRejected
from tests.inference.fake_openai import WORDS, FakeOpenAI

pytestmark = pytest.mark.django_db(transaction=True)


def chat(**body) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}
    serializer = ChatCompletionRequestSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def completion(**body) -> dict:
    serializer = CompletionRequestSerializer(data={"model": "m", "prompt": "Hi", **body})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def embedding(**body) -> dict:
    serializer = EmbeddingRequestSerializer(data={"model": "m", "input": ["a", "b"], **body})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


async def run(backend: Backend, kind: str, data: dict) -> list:
    gen = await backend.prepare(GenerateRequest(kind=kind, data=data))
    await gen.start(None)
    events = [event async for event in gen.events()]
    await gen.close()
    return events


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def far(db, fake) -> LLMModel:
    return LLMModel.objects.create(
        model_id="far", backend="openai", base_url=fake.base_url, path="", remote_model="up-m"
    )


def test_backend_for_is_local_for_a_gguf_and_remote_for_a_base_url(gemma, far):
    assert isinstance(backend_for(gemma), LocalBackend)
    assert isinstance(backend_for(far), RemoteBackend)


# -- local ------------------------------------------------------------------------
async def test_local_generation_is_text_deltas_then_a_finish_per_choice(gemma):
    backend = backend_for(gemma)
    gen = await backend.prepare(
        GenerateRequest(kind="completions", data=completion(max_tokens=3, n=2, temperature=0))
    )
    assert gen.prompt_tokens > 0 and gen.reserve_tokens == 6
    await gen.start(None)
    events = [event async for event in gen.events()]
    finishes = [e for e in events if isinstance(e, Finish)]
    assert [f.index for f in finishes] == [0, 1]
    assert all(f.reason in ("stop", "length") for f in finishes)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas and {d.index for d in deltas} <= {0, 1}
    assert sum(d.n_tokens for d in deltas if d.index == 0) == finishes[0].completion_tokens


async def test_local_chat_counts_the_templated_prompt(gemma):
    events = await run(backend_for(gemma), "chat/completions", chat(max_tokens=2))
    assert isinstance(events[-1], Finish)
    assert not any(isinstance(e, Usage) for e in events)


async def test_local_refuses_a_prompt_longer_than_the_context(gemma):
    from llmsite.errors import ContextLengthExceeded

    with pytest.raises(ContextLengthExceeded):
        await backend_for(gemma).prepare(
            GenerateRequest(kind="completions", data=completion(prompt=[1] * 5000, max_tokens=1))
        )


async def test_local_embeddings_and_tokenize(gemma):
    backend = backend_for(gemma)
    job = await backend.embed(embedding())
    result = await job.run()
    assert len(result.vectors) == 2 and result.prompt_tokens == job.prompt_tokens > 0
    assert await backend.tokenize("Hello") != []


# -- remote -------------------------------------------------------------------------
async def test_remote_stream_becomes_typed_events_with_the_upstream_usage(far, fake):
    events = await run(backend_for(far), "chat/completions", chat(stream=True))
    assert [e.text for e in events if isinstance(e, TextDelta)] == WORDS
    assert Finish(0, "stop") in events
    assert events[-1] == Usage(prompt_tokens=5, completion_tokens=3)
    sent = fake.bodies[-1]
    assert sent["model"] == "up-m" and sent["stream_options"] == {"include_usage": True}


async def test_remote_whole_answer_becomes_the_same_events(far):
    events = await run(backend_for(far), "completions", completion())
    assert events == [TextDelta(0, "".join(WORDS), 1, ()), Finish(0, "stop"), Usage(5, 3)]


async def test_remote_answer_without_usage_is_a_backend_failure(far, fake):
    fake.usage = False
    with pytest.raises(BackendUnavailable):
        await run(backend_for(far), "completions", completion())


async def test_remote_stream_error_event_is_a_typed_error(far, fake):
    fake.stream_error = True
    backend = backend_for(far)
    gen = await backend.prepare(GenerateRequest(kind="chat/completions", data=chat(stream=True)))
    await gen.start(None)
    seen = []
    with pytest.raises(UpstreamStreamError) as caught:
        async for event in gen.events():
            seen.append(event)
    assert seen == [TextDelta(0, "Hello", 1, ())]
    assert caught.value.body()["error"]["message"] == "boom"


@pytest.mark.parametrize(("status", "error"), [(400, UpstreamRejected), (502, BackendUnavailable)])
async def test_remote_http_errors_are_relayed_or_unavailable(far, fake, status, error):
    fake.status = status
    with pytest.raises(error):
        await run(backend_for(far), "completions", completion())


async def test_remote_embeddings_and_no_tokenizer(far):
    backend = backend_for(far)
    job = await backend.embed(embedding(encoding_format="base64"))
    result = await job.run()
    assert result.vectors == [[0.5, -0.5], [0.5, -0.5]] and result.prompt_tokens == 7
    with pytest.raises(InvalidRequest):
        await backend.tokenize("Hello")
