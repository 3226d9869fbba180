from __future__ import annotations

import json

import pytest

from inference.models import LLMModel
from inference.registry import registry
from tests.helpers import sse_events

pytestmark = pytest.mark.django_db

URL = "/v1/completions"


def post(client, **body):
    body.setdefault("model", "gemma-3-270m")
    return client.post(URL, body, format="json")


def tokenizer_count(text: str, *, add_bos: bool = True) -> int:
    engine = registry.engine_for(LLMModel.objects.get(model_id="gemma-3-270m"))
    return len(engine.tokenize(text, add_bos=add_bos))


def test_completion_has_openai_shape_and_tokenizer_usage(client):
    prompt = "The capital of France is"
    r = post(client, prompt=prompt, max_tokens=5, temperature=0)
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == "gemma-3-270m"
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["text"]
    usage = body["usage"]
    assert usage["prompt_tokens"] == tokenizer_count(prompt)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 5


def test_max_tokens_cut_gives_finish_reason_length(client):
    r = post(client, prompt="Count: one, two, three, four,", max_tokens=3, temperature=0)
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3


def test_stop_sequence_ends_text_before_it(client):
    prompt = "Count: one, two, three, four,"
    free = post(client, prompt=prompt, max_tokens=12, temperature=0).json()["choices"][0]["text"]
    assert "," in free
    r = post(client, prompt=prompt, max_tokens=12, temperature=0, stop=[","])
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == free.split(",")[0]


def test_temperature_zero_is_deterministic(client):
    a = post(client, prompt="Once upon a time", max_tokens=8, temperature=0).json()
    b = post(client, prompt="Once upon a time", max_tokens=8, temperature=0).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_same_seed_same_text_and_different_seeds_differ(client):
    def run(seed):
        body = post(
            client, prompt="My favourite animal is", max_tokens=12, temperature=1.5, seed=seed
        ).json()
        return body["choices"][0]["text"]

    assert run(7) == run(7)
    assert len({run(s) for s in (1, 2, 3, 4)}) > 1


def test_n_and_prompt_list_give_one_choice_each(client):
    r = post(client, prompt=["Hello", "Goodbye"], n=2, max_tokens=2, temperature=0)
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    expected_prompt = tokenizer_count("Hello") + tokenizer_count("Goodbye")
    assert body["usage"]["prompt_tokens"] == expected_prompt
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 4 * 2
    assert body["choices"][0]["text"] == body["choices"][1]["text"]


def test_token_array_prompt_matches_text_prompt(client):
    engine = registry.engine_for(LLMModel.objects.get(model_id="gemma-3-270m"))
    tokens = engine.tokenize("The sky is")
    a = post(client, prompt=tokens, max_tokens=4, temperature=0).json()
    b = post(client, prompt="The sky is", max_tokens=4, temperature=0).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["prompt_tokens"] == len(tokens)


def test_echo_prepends_prompt(client):
    r = post(client, prompt="Water is", max_tokens=3, temperature=0, echo=True)
    assert r.json()["choices"][0]["text"].startswith("Water is")


def test_logprobs_are_log_probabilities_of_the_chosen_tokens(client):
    r = post(client, prompt="The capital of France is", max_tokens=3, temperature=0, logprobs=2)
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert logprob <= 0
        assert len(top) == 2
        # Greedy decoding picks the most likely token.
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)
        assert token in top
    assert "".join(lp["tokens"]) == r.json()["choices"][0]["text"]


def server_timing(response) -> dict[str, float]:
    """A Server-Timing header's metrics: name -> dur (ms); each named once."""
    metrics = {}
    for metric in response["Server-Timing"].split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        (dur,) = [float(p.removeprefix("dur=")) for p in params if p.startswith("dur=")]
        assert name not in metrics and dur >= 0, response["Server-Timing"]
        metrics[name] = dur
    return metrics


@pytest.mark.parametrize("stream", [False, True])
def test_server_timing_splits_the_answer_into_quota_backend_and_total(client, stream):
    r = post(client, prompt="The capital of France is", max_tokens=3, temperature=0, stream=stream)
    assert r.status_code == 200
    if stream:
        assert sse_events(r)[-1] == "data: [DONE]"
    timing = server_timing(r)
    assert set(timing) == {"quota", "backend", "total"}
    assert timing["backend"] > 0
    # The stages lie inside the middleware's span, which openai-processing-ms also reports.
    assert timing["quota"] + timing["backend"] <= timing["total"] + 0.02
    assert abs(timing["total"] - int(r["openai-processing-ms"])) < 1.01


def test_a_refused_request_has_only_the_total_timing(client):
    r = post(client, prompt="Hi", max_tokens=0)
    assert r.status_code == 400
    assert set(server_timing(r)) == {"total"}


def test_stream_sends_chunks_with_one_id_then_usage_then_done(client):
    r = post(
        client,
        prompt="Once upon a time",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/event-stream")
    events = sse_events(r)
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "text_completion" for c in chunks)
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 6
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    plain = post(client, prompt="Once upon a time", max_tokens=6, temperature=0).json()
    assert text == plain["choices"][0]["text"]


def test_prompt_longer_than_context_is_400_with_both_numbers(client, gemma):
    gemma.n_ctx = 64
    gemma.save()
    r = post(client, prompt="word " * 100, max_tokens=4)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "64" in err["message"] and str(tokenizer_count("word " * 100)) in err["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("top_p", 1.5),
        ("n", 9),
        ("max_tokens", 0),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("presence_penalty", 3),
    ],
)
def test_out_of_range_values_are_400_naming_the_param(client, field, value):
    r = post(client, prompt="hi", **{field: value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("field", ["best_of", "suffix"])
def test_unsupported_parameters_are_400_naming_them(client, field):
    r = post(client, prompt="hi", **{field: 2 if field == "best_of" else "x"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]


def test_logit_bias_bans_a_token(client):
    prompt = "Count: one, two, three, four,"
    (comma,) = registry.engine_for(LLMModel.objects.get(model_id="gemma-3-270m")).tokenize(
        ",", add_bos=False
    )
    free = post(client, prompt=prompt, max_tokens=8, temperature=0).json()["choices"][0]["text"]
    assert "," in free
    r = post(client, prompt=prompt, max_tokens=8, temperature=0, logit_bias={str(comma): -100})
    assert r.status_code == 200, r.content
    assert "," not in r.json()["choices"][0]["text"]


@pytest.mark.parametrize("bias", ["x", {"abc": 1}, {"5": 101}, {"5": "high"}, {"999999999": 1}])
def test_invalid_logit_bias_is_400(client, bias):
    r = post(client, prompt="hi", logit_bias=bias)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "logit_bias"


def test_unknown_parameter_is_400(client):
    r = post(client, prompt="hi", frobnicate=True)
    assert r.status_code == 400
    assert "frobnicate" in r.json()["error"]["message"]
