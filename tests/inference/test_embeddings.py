from __future__ import annotations

import base64
import math
import struct

import pytest

from inference.registry import registry

pytestmark = pytest.mark.django_db

URL = "/v1/embeddings"


def post(client, **body):
    body.setdefault("model", "gemma-3-270m")
    return client.post(URL, body, format="json")


def norm(vec):
    return math.sqrt(sum(x * x for x in vec))


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_one_normalised_vector_of_model_size(client, gemma):
    r = post(client, input="The quick brown fox")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["object"] == "list" and body["model"] == "gemma-3-270m"
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    engine = registry.engine_for(gemma)
    assert len(item["embedding"]) == engine.n_embd == 640
    assert norm(item["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert body["usage"]["prompt_tokens"] == len(engine.tokenize("The quick brown fox"))
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]


def test_batch_matches_single_inputs_and_similar_texts_are_closer(client):
    texts = ["I love cats", "I adore kittens", "Quarterly tax filing deadline"]
    batch = [d["embedding"] for d in post(client, input=texts).json()["data"]]
    assert len(batch) == 3
    single = post(client, input=texts[1]).json()["data"][0]["embedding"]
    assert cosine(batch[1], single) == pytest.approx(1.0, abs=1e-4)
    assert cosine(batch[0], batch[1]) > cosine(batch[0], batch[2])


def test_token_array_input_equals_text_input(client, gemma):
    tokens = registry.engine_for(gemma).tokenize("hello world")
    by_tokens = post(client, input=[tokens]).json()["data"][0]["embedding"]
    by_text = post(client, input="hello world").json()["data"][0]["embedding"]
    assert cosine(by_tokens, by_text) == pytest.approx(1.0, abs=1e-5)


def test_base64_encoding_decodes_to_the_float_vector(client):
    floats = post(client, input="abc").json()["data"][0]["embedding"]
    b64 = post(client, input="abc", encoding_format="base64").json()["data"][0]["embedding"]
    raw = base64.b64decode(b64)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats, abs=1e-6)


@pytest.mark.parametrize("bad", ["", [], [""], [[]], 5, [1.5]])
def test_invalid_input_is_400(client, bad):
    r = post(client, input=bad)
    assert r.status_code == 400
    assert r.json()["error"]["param"].startswith("input")


def test_dimensions_is_refused_by_name(client):
    r = post(client, input="x", dimensions=64)
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_out_of_vocabulary_token_is_400(client):
    r = post(client, input=[[10**9]])
    assert r.status_code == 400 and "vocabulary" in r.json()["error"]["message"]
