"""/v1/batch, /v1/compare and /v1/analyze: requests built out of other /v1 requests.

Accounting. Every unit of inference here is its own /v1 request for quotas
and billing: it gets its own Accounting (request id `<request id>-<index>`),
reserves its own quota and leaves exactly one usage record under the
endpoint it ran (`chat.completions`, `completions`, `embeddings`). Limits and
bills come out as if the caller had sent the requests one by one: a batch
may see some items refused with 429 while others answer. The envelope
reserves nothing and records nothing once its body is valid (the view hands
accounting over to the items); an envelope refused before anything runs
(invalid body) is one record, like any refused request.

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
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from rest_framework.serializers import Serializer

from accounts.authentication import Principal
from billing.quota import key_limits, tenant_limits
from inference import services
from inference.accounting import Accounting
from inference.serializers import (
    BATCH_URLS,
    DEFAULT_BATCH_CONCURRENCY,
    BatchItemSerializer,
    ChatCompletionRequestSerializer,
    CompletionRequestSerializer,
)
from llmsite.errors import APIError, InvalidRequest, internal_error, to_api_error

logger = logging.getLogger("llmsite.inference")

# The endpoint name (as the single-call views record it) and service of each batch URL.
_TARGETS = {
    "/v1/chat/completions": ("chat.completions", services.chat_completion_create),
    "/v1/completions": ("completions", services.completion_create),
    "/v1/embeddings": ("embeddings", services.embedding_create),
}
assert set(_TARGETS) == set(BATCH_URLS)

# A compare run with no max_tokens would otherwise be a chat's "until the
# context is full": on several models at once that is minutes, not a comparison.
DEFAULT_COMPARE_MAX_TOKENS = 256


@dataclass
class FanOut:
    """A response made of several accounted requests: its body, and the
    x-ratelimit-* headers of the item reservation that left the least room."""

    body: dict
    headers: dict[str, str]


def _child_id(request_id: str, index: int) -> str:
    suffix = f"-{index}"
    # Usage records hold 128 characters; a client's X-Request-Id may use them all.
    return request_id[: 128 - len(suffix)] + suffix


def _child_accounting(
    principal: Principal, endpoint: str, request_id: str, index: int, body
) -> Accounting:
    # The same fields InferenceView.start_accounting reads from a single call's body.
    body = body if isinstance(body, dict) else {}
    user = body.get("user")
    return Accounting(
        principal=principal,
        endpoint=endpoint,
        request_id=_child_id(request_id, index),
        end_user=user[:256] if isinstance(user, str) else "",
        model_id=str(body.get("model", ""))[:128],
    )


def _as_api_error(exc: Exception) -> APIError:
    err = to_api_error(exc)
    if err is None:
        logger.exception("unhandled error in a fanned-out request")
        return internal_error()
    return err


async def _settle(acct: Accounting, exc: BaseException) -> None:
    """Write the record of a request that failed before the service wrote it
    (validation), as InferenceView.dispatch does for a single call."""
    if not acct.written:
        acct.fail(exc)
        await acct.write()


def _error_entry(entry: dict, err: APIError) -> dict:
    return {**entry, "status_code": err.status, "error": err.body()["error"]}


def _validated(serializer_class: type[Serializer], body) -> dict:
    serializer = serializer_class(data=body)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _tightest_headers(accts: list[Accounting]) -> dict[str, str]:
    def room(headers: dict[str, str]) -> tuple[int, int]:
        far = 1 << 62
        return (
            int(headers.get("x-ratelimit-remaining-requests", far)),
            int(headers.get("x-ratelimit-remaining-tokens", far)),
        )

    found = [h for h in (acct.rate_headers() for acct in accts) if h]
    return min(found, key=room) if found else {}


def _totals(entries: list[dict], accts: list[Accounting], started: float) -> dict:
    # Tokens as accounted (billed): for answered items the same as their usage.
    prompt = sum(acct.prompt_tokens for acct in accts)
    completion = sum(acct.completion_tokens for acct in accts)
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


async def batch_run(*, principal: Principal, data: dict, request_id: str) -> FanOut:
    """Run every item of a batch, at most `concurrency` at a time, in asyncio.

    Each item is validated and run as its own request (see the module's
    docstring): its result is `response` with status 200, or its `error` in
    OpenAI's shape with the status a single call would have had. Items come
    back in request order, whatever order they finished in. The batch itself
    answers 200 once its envelope is valid, even when every item failed: the
    per-item status codes and `totals` say what happened.
    """
    started = time.monotonic()
    items = data["requests"]
    width = data.get("concurrency") or DEFAULT_BATCH_CONCURRENCY
    cap = await _concurrency_cap(principal)
    width = max(1, min(width, len(items), settings.LLMSITE_BATCH_MAX, cap or width))
    gate = asyncio.Semaphore(width)
    accts: list[Accounting] = []

    async def run(index: int, raw) -> dict:
        raw_dict = raw if isinstance(raw, dict) else {}
        custom_id = raw_dict.get("custom_id")
        entry = {"index": index, "custom_id": custom_id if isinstance(custom_id, str) else None}
        body = raw_dict.get("body")
        url = raw_dict.get("url")
        # An item with no valid url is still recorded, under the batch's own name.
        endpoint, service = _TARGETS.get(url if isinstance(url, str) else "", ("batch", None))
        async with gate:
            acct = _child_accounting(principal, endpoint, request_id, index, body)
            accts.append(acct)
            try:
                if not isinstance(raw, dict):
                    raise InvalidRequest("A batch item must be a JSON object.", code="invalid_type")
                item = _validated(BatchItemSerializer, raw)
                response = await service(principal=principal, data=item["data"], acct=acct)
            except Exception as exc:
                await _settle(acct, exc)
                return _error_entry(entry, _as_api_error(exc))
            except BaseException as exc:  # cancelled: the client left
                await _settle(acct, exc)
                raise
        latency_ms = int((time.monotonic() - acct.started) * 1000)
        return {**entry, "status_code": 200, "latency_ms": latency_ms, "response": response}

    entries = await asyncio.gather(*(run(index, raw) for index, raw in enumerate(items)))
    return FanOut(
        body={
            "object": "batch.result",
            "data": entries,
            "totals": _totals(entries, accts, started),
        },
        headers=_tightest_headers(accts),
    )


# -- /v1/compare -------------------------------------------------------------------------
def _tokens_per_second(acct: Accounting, ended: float) -> float | None:
    """The decode rate: tokens after the first over the time after the first, as
    llama.cpp reports it (the first token's wait is the TTFT). With fewer than
    two tokens, or no first-token time (a remote backend answering whole), it
    is the tokens over the whole latency; None when nothing was generated."""
    tokens = acct.completion_tokens
    if tokens < 1:
        return None
    first = acct.first_token_at
    if first is not None and tokens >= 2 and ended > first:
        return round((tokens - 1) / (ended - first), 2)
    elapsed = ended - acct.started
    return round(tokens / elapsed, 2) if elapsed > 0 else None


async def compare_run(*, principal: Principal, data: dict, request_id: str) -> FanOut:
    """The same prompt (or conversation) on each model, all at once.

    Each model runs as a single completion (with `prompt`) or chat completion
    (with `messages`) would, through the router: a name may be a model id, an
    alias or `auto`, and `answered_model` says which model answered. A model
    that cannot answer (unknown: 404, over quota: 429, overloaded: 503) gets an
    `error` in OpenAI's shape in its entry. The compare answers 200 whenever its
    body is valid, even if every model failed: a comparison where one side is
    missing is still the answer, and the status codes per entry say why.
    """
    started = time.monotonic()
    chat = "messages" in data
    endpoint, service = _TARGETS["/v1/chat/completions" if chat else "/v1/completions"]
    serializer_class = ChatCompletionRequestSerializer if chat else CompletionRequestSerializer
    shared = {
        key: value
        for key, value in data.items()
        if key not in ("models", "n", "stream", "stream_options", "include_usage")
        and value is not None
    }
    shared.setdefault("max_tokens", DEFAULT_COMPARE_MAX_TOKENS)
    accts: list[Accounting] = []

    async def run(index: int, name: str) -> dict:
        body = {**shared, "model": name}
        acct = _child_accounting(principal, endpoint, request_id, index, body)
        accts.append(acct)
        entry = {"index": index, "model": name}
        try:
            result = await service(
                principal=principal, data=_validated(serializer_class, body), acct=acct
            )
        except Exception as exc:
            await _settle(acct, exc)
            return _error_entry(entry, _as_api_error(exc))
        except BaseException as exc:
            await _settle(acct, exc)
            raise
        ended = time.monotonic()
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
    return FanOut(
        body={
            "object": "compare.result",
            "data": entries,
            "totals": _totals(entries, accts, started),
        },
        headers=_tightest_headers(accts),
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


async def text_analyze(*, principal: Principal, data: dict, acct: Accounting) -> dict:
    """Sentiment, keywords and summary of a text, as one chat completion on the router.

    The answer is constrained with `response_format` json_schema (a GBNF
    grammar on local models), with bounded lengths and a token budget that
    covers the longest answer the grammar allows, so it always parses into
    the requested parts. Greedy decoding: the same text gives the same
    analysis. Content quality is the model's; the structure is guaranteed.
    """
    tasks = data["tasks"]
    budget = _BRACES_CHARS + sum(_TASK_CHARS[task] for task in tasks)
    body = {
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
    result = await services.chat_completion_create(
        principal=principal, data=_validated(ChatCompletionRequestSerializer, body), acct=acct
    )
    content = result["choices"][0]["message"]["content"] or ""
    return {
        "object": "analysis",
        "model": result["model"],
        **_parse_analysis(content, tasks),
        "usage": result["usage"],
    }
