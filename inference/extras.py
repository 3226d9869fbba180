"""/v1/batch, /v1/compare and /v1/analyze: requests built out of other /v1 requests.

Accounting. Every unit of inference here is its own /v1 request for quotas
and billing: it is its own request to the service (request id `<request id>-<index>`),
reserves its own quota and leaves exactly one usage record under the
endpoint it ran (`chat.completions`, `completions`, `embeddings`). Limits and
bills come out as if the caller had sent the requests one by one: a batch
may see some items refused with 429 while others answer. The envelope
reserves nothing and records nothing once its body is valid; an envelope
refused before anything runs (invalid body) is one record, like any refused
request.

An item that never started because the client left first leaves no record:
nothing was reserved or computed for it.

A compare runs each model as one such request, as a batch runs each item.

/v1/analyze is one chat completion underneath: one request, one record,
under the endpoint `analyze`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from rest_framework.serializers import Serializer

from accounts.authentication import Principal
from billing.quota import key_limits, tenant_limits
from inference import services
from inference.serializers import (
    BATCH_URLS,
    DEFAULT_BATCH_CONCURRENCY,
    AnalyzeRequestSerializer,
    BatchItemSerializer,
    BatchRequestSerializer,
    ChatCompletionRequestSerializer,
    CompareRequestSerializer,
    CompletionRequestSerializer,
)
from inference.services import Accounted, Completed, Outcome
from llmsite.errors import APIError, InvalidRequest

logger = logging.getLogger("llmsite.inference")

# The endpoint name (as the single-call views record it) of each batch URL; the
# service's operation has the same name.
_TARGETS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
assert set(_TARGETS) == set(BATCH_URLS)

# A compare run with no max_tokens would otherwise be a chat's "until the
# context is full": on several models at once that is minutes, not a comparison.
DEFAULT_COMPARE_MAX_TOKENS = 256


def _child_id(request_id: str, index: int) -> str:
    suffix = f"-{index}"
    # Usage records hold 128 characters; a client's X-Request-Id may use them all.
    return request_id[: 128 - len(suffix)] + suffix


def _error_entry(entry: dict, err: APIError) -> dict:
    return {**entry, "status_code": err.status, "error": err.body()["error"]}


def _validated(serializer_class: type[Serializer], body) -> dict:
    serializer = serializer_class(data=body)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


async def _envelope(serializer_class, *, principal, body, request_id: str, endpoint: str) -> dict:
    """The validated envelope; an invalid one is refused, and recorded, as one request."""
    try:
        return _validated(serializer_class, body)
    except Exception as exc:
        raise await services.request_refuse(
            principal=principal, endpoint=endpoint, request_id=request_id, error=exc, body=body
        ) from exc


def _tightest_headers(accounted: list[Accounted]) -> dict[str, str]:
    def room(headers: dict[str, str]) -> tuple[int, int]:
        far = 1 << 62
        return (
            int(headers.get("x-ratelimit-remaining-requests", far)),
            int(headers.get("x-ratelimit-remaining-tokens", far)),
        )

    found = [a.rate_headers for a in accounted if a.rate_headers]
    return min(found, key=room) if found else {}


def _totals(entries: list[dict], accounted: list[Accounted], started: float) -> dict:
    # Tokens as accounted (billed): for answered items the same as their usage.
    prompt = sum(a.prompt_tokens for a in accounted)
    completion = sum(a.completion_tokens for a in accounted)
    succeeded = sum(1 for entry in entries if entry["status_code"] == 200)
    return {
        "requests": len(entries),
        "succeeded": succeeded,
        "failed": len(entries) - succeeded,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "latency_ms": int((time.monotonic() - started) * 1000),
    }


# -- /v1/batch ---------------------------------------------------------------------------
async def _concurrency_cap(principal: Principal) -> int | None:
    """The tightest max_concurrent of the tenant and the key, if any.

    A batch wider than that would refuse its own items with 429 ("too many
    concurrent requests"); running that many at a time still lets other
    requests of the tenant take slots, and then an item is refused as a single
    call would be.
    """

    def read() -> int | None:
        caps = [
            limits.max_concurrent
            for limits in (tenant_limits(principal.tenant), key_limits(principal.api_key))
            if limits.max_concurrent is not None
        ]
        return min(caps) if caps else None

    return await sync_to_async(read)()


def _batch_item(raw) -> dict:
    if not isinstance(raw, dict):
        raise InvalidRequest("A batch item must be a JSON object.", code="invalid_type")
    return _validated(BatchItemSerializer, raw)["data"]


async def batch_run(
    *, principal: Principal, body, request_id: str, endpoint: str = "batch"
) -> Completed:
    """Run every item of a batch, at most `concurrency` at a time, in asyncio.

    Each item is validated and run as its own request (see the module's
    docstring): its result is `response` with status 200, or its `error` in
    OpenAI's shape with the status a single call would have had. Items come
    back in request order, whatever order they finished in. The batch itself
    answers 200 once its envelope is valid, even when every item failed: the
    per-item status codes and `totals` say what happened.
    """
    data = await _envelope(
        BatchRequestSerializer,
        principal=principal,
        body=body,
        request_id=request_id,
        endpoint=endpoint,
    )
    started = time.monotonic()
    items = data["requests"]
    width = data.get("concurrency") or DEFAULT_BATCH_CONCURRENCY
    cap = await _concurrency_cap(principal)
    width = max(1, min(width, len(items), settings.LLMSITE_BATCH_MAX, cap or width))
    gate = asyncio.Semaphore(width)
    accounted: list[Accounted] = []

    async def run(index: int, raw) -> dict:
        raw_dict = raw if isinstance(raw, dict) else {}
        custom_id = raw_dict.get("custom_id")
        entry = {"index": index, "custom_id": custom_id if isinstance(custom_id, str) else None}
        url = raw_dict.get("url")
        # An item with no valid url is still recorded, under the batch's own name.
        target = _TARGETS.get(url if isinstance(url, str) else "", "batch")
        async with gate:
            outcome = await services.request_run(
                target,
                principal=principal,
                body=raw,
                request_id=_child_id(request_id, index),
                endpoint=target,
                validate=_batch_item,
                record_body=raw_dict.get("body"),
            )
        accounted.append(outcome.accounted)
        if outcome.error is not None:
            return _error_entry(entry, outcome.error)
        done = outcome.accounted
        latency_ms = int((done.ended - done.started) * 1000)
        return {
            **entry,
            "status_code": 200,
            "latency_ms": latency_ms,
            "response": outcome.result.body,
        }

    entries = await asyncio.gather(*(run(index, raw) for index, raw in enumerate(items)))
    return Completed(
        {"object": "batch.result", "data": entries, "totals": _totals(entries, accounted, started)},
        _tightest_headers(accounted),
    )


# -- /v1/compare -------------------------------------------------------------------------
def _tokens_per_second(accounted: Accounted, ended: float) -> float | None:
    """The decode rate: tokens after the first over the time after the first, as
    llama.cpp reports it (the first token's wait is the TTFT). With fewer than
    two tokens, or no first-token time (a remote backend answering whole), it
    is the tokens over the whole latency; None when nothing was generated."""
    tokens = accounted.completion_tokens
    if tokens < 1:
        return None
    first = accounted.first_token_at
    if first is not None and tokens >= 2 and ended > first:
        return round((tokens - 1) / (ended - first), 2)
    elapsed = ended - accounted.started
    return round(tokens / elapsed, 2) if elapsed > 0 else None


async def compare_run(
    *, principal: Principal, body, request_id: str, endpoint: str = "compare"
) -> Completed:
    """The same prompt (or conversation) on each model, all at once.

    Each model runs as a single completion (with `prompt`) or chat completion
    (with `messages`) would, through the router: a name may be a model id, an
    alias or `auto`, and `answered_model` says which model answered. A model
    that cannot answer (unknown: 404, over quota: 429, overloaded: 503) gets an
    `error` in OpenAI's shape in its entry. The compare answers 200 whenever its
    body is valid, even if every model failed: a comparison where one side is
    missing is still the answer, and the status codes per entry say why.
    """
    data = await _envelope(
        CompareRequestSerializer,
        principal=principal,
        body=body,
        request_id=request_id,
        endpoint=endpoint,
    )
    started = time.monotonic()
    chat = "messages" in data
    target = "chat.completions" if chat else "completions"
    serializer_class = ChatCompletionRequestSerializer if chat else CompletionRequestSerializer
    shared = {
        key: value
        for key, value in data.items()
        if key not in ("models", "n", "stream", "stream_options", "include_usage")
        and value is not None
    }
    shared.setdefault("max_tokens", DEFAULT_COMPARE_MAX_TOKENS)
    accounted: list[Accounted] = []

    async def run(index: int, name: str) -> dict:
        entry = {"index": index, "model": name}
        outcome: Outcome = await services.request_run(
            target,
            principal=principal,
            body={**shared, "model": name},
            request_id=_child_id(request_id, index),
            endpoint=target,
            validate=lambda item: _validated(serializer_class, item),
        )
        accounted.append(outcome.accounted)
        if outcome.error is not None:
            return _error_entry(entry, outcome.error)
        result = outcome.result.body
        acct = outcome.accounted
        ended = acct.ended
        choice = result["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        first = acct.first_token_at
        return {
            **entry,
            "answered_model": result["model"],
            "status_code": 200,
            "text": text,
            "finish_reason": choice["finish_reason"],
            "latency_ms": int((ended - acct.started) * 1000),
            "ttft_ms": int((first - acct.started) * 1000) if first is not None else None,
            "usage": result["usage"],
            "tokens_per_second": _tokens_per_second(acct, ended),
        }

    entries = await asyncio.gather(*(run(i, name) for i, name in enumerate(data["models"])))
    return Completed(
        {
            "object": "compare.result",
            "data": entries,
            "totals": _totals(entries, accounted, started),
        },
        _tightest_headers(accounted),
    )


# -- /v1/analyze -------------------------------------------------------------------------
# Bounds in the schema are what make generation end: the GBNF converter turns
# maxItems and a pattern's {1,n} into bounded repetitions and an enum into
# literals, so the grammar has no unbounded repetition and its longest output
# is finite; the token budget below covers it. They are also kept small on
# purpose: grammar-constrained decoding costs far more per token than free
# decoding (llama-cpp-python checks the grammar against the whole vocabulary).
KEYWORDS_MAX = 5
KEYWORD_CHARS = 24
SUMMARY_CHARS = 160
SENTIMENT_LABELS = ("positive", "negative", "neutral")
# The converter ignores minimum/maximum, and a free number may take 50 digits
# (greedy decoding of a small model happily writes 0.0000000000000000): the
# score is one of eleven steps instead, always within 0..1 and a few tokens long.
SCORE_STEPS = [round(step / 10, 1) for step in range(11)]


def _line(max_chars: int) -> dict:
    """A string of 1..max_chars characters on one line, without quotes or escapes:
    the model must close it rather than ramble on into new lines, and each
    character is one character of output (the budget below counts on it)."""
    return {"type": "string", "pattern": rf'^[^"\\\n\r\t]{{1,{max_chars}}}$'}


_TASK_SCHEMAS = {
    "sentiment": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(SENTIMENT_LABELS)},
            "score": {"type": "number", "enum": SCORE_STEPS},
        },
        "required": ["label", "score"],
        "additionalProperties": False,
    },
    "keywords": {
        "type": "array",
        "items": _line(KEYWORD_CHARS),
        "minItems": 1,
        "maxItems": KEYWORDS_MAX,
    },
    "summary": _line(SUMMARY_CHARS),
}

# The longest output each part's grammar allows, in characters: its literal
# structure doubled (the grammar allows one space after every literal) plus its
# free text. A generated token adds at least one character, so this many
# tokens always reach the closing brace: the answer is never cut off by
# max_tokens, and it always parses.
_TASK_CHARS = {
    "sentiment": 2 * len('"sentiment":{"label":"negative","score":0.1},'),
    "keywords": 2 * len('"keywords":[],') + KEYWORDS_MAX * (2 * len('"",') + KEYWORD_CHARS),
    "summary": 2 * len('"summary":"",') + SUMMARY_CHARS,
}
_BRACES_CHARS = 2 * len("{}")


_TASK_INSTRUCTIONS = {
    "sentiment": '"sentiment": positive, negative or neutral, and how sure you are, 0 to 1',
    "keywords": f'"keywords": at most {KEYWORDS_MAX} keywords of one or two words',
    "summary": '"summary": one short sentence',
}


class UnparseableOutput(APIError):
    """The model's answer did not hold the analysis structure (a remote backend
    that ignored the schema). The tokens were computed and are billed."""

    status = 502
    type = "server_error"
    code = "invalid_model_output"


def analysis_schema(tasks: list[str]) -> dict:
    """The JSON schema of the answer: one property per requested task, all required."""
    return {
        "type": "object",
        "properties": {task: _TASK_SCHEMAS[task] for task in tasks},
        "required": list(tasks),
        "additionalProperties": False,
    }


def _analyze_prompt(tasks: list[str], text: str) -> str:
    # No example answer: a small model copies it word for word instead of
    # reading the text. The schema gives the shape; the prompt, the meaning.
    wanted = "\n".join(f"- {_TASK_INSTRUCTIONS[task]}" for task in tasks)
    return (
        "Analyze the text below. Answer with one short JSON object only:\n"
        f"{wanted}\n\nText:\n{text}"
    )


def _parse_analysis(content: str, tasks: list[str]) -> dict:
    try:
        # strict=False: a JSON string may not hold raw control characters, and the
        # grammar keeps out only newlines and tabs.
        parsed = json.loads(content, strict=False)
    except ValueError as exc:
        raise UnparseableOutput("The model's answer was not valid JSON.") from exc
    if not isinstance(parsed, dict):
        raise UnparseableOutput("The model's answer was not a JSON object.")
    out: dict = {}
    if "sentiment" in tasks:
        sentiment = parsed.get("sentiment")
        label = sentiment.get("label") if isinstance(sentiment, dict) else None
        score = sentiment.get("score") if isinstance(sentiment, dict) else None
        if label not in SENTIMENT_LABELS or not isinstance(score, int | float):
            raise UnparseableOutput("The model's answer had no valid sentiment.")
        # A remote backend may not hold to the schema's steps: clamp, at least.
        out["sentiment"] = {"label": label, "score": min(1.0, max(0.0, float(score)))}
    if "keywords" in tasks:
        keywords = parsed.get("keywords")
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise UnparseableOutput("The model's answer had no valid keywords.")
        # A small model repeats itself: keep each keyword once, in order.
        unique: dict[str, str] = {}
        for keyword in (k.strip() for k in keywords):
            if keyword:
                unique.setdefault(keyword.casefold(), keyword)
        out["keywords"] = list(unique.values())[:KEYWORDS_MAX]
    if "summary" in tasks:
        summary = parsed.get("summary")
        if not isinstance(summary, str):
            raise UnparseableOutput("The model's answer had no valid summary.")
        out["summary"] = summary.strip()
    return out


def analysis_request(body) -> tuple[dict, list[str]]:
    """The validated chat completion an analyze body stands for, and its tasks.

    The answer is constrained with `response_format` json_schema (a GBNF
    grammar on local models), with bounded lengths and a token budget that
    covers the longest answer the grammar allows, so it always parses into
    the requested parts. Greedy decoding: the same text gives the same
    analysis. Content quality is the model's; the structure is guaranteed.
    """
    data = _validated(AnalyzeRequestSerializer, body)
    tasks = data["tasks"]
    budget = _BRACES_CHARS + sum(_TASK_CHARS[task] for task in tasks)
    chat = {
        "model": data["model"],
        "messages": [{"role": "user", "content": _analyze_prompt(tasks, data["text"])}],
        "max_tokens": budget,
        "temperature": 0,
        "user": data.get("user") or "",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "analysis", "schema": analysis_schema(tasks), "strict": True},
        },
    }
    return _validated(ChatCompletionRequestSerializer, chat), tasks


def analysis_shape(result: dict, tasks: list[str]) -> dict:
    """The analysis out of the chat completion's answer."""
    content = result["choices"][0]["message"]["content"] or ""
    return {
        "object": "analysis",
        "model": result["model"],
        **_parse_analysis(content, tasks),
        "usage": result["usage"],
    }
