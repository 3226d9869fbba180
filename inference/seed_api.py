"""The seed system's API: LLM-Runner-Router's request and response forms.

llmsite implements the "API Server Examples" of LLM-Runner-Router (its
examples/API.md: the `LLMAPIClient` and the basic and advanced Express
servers), so that system's clients can point their code at llmsite. Its
bodies differ from llmsite's own in a few places; this module translates, both
ways, and holds no business rules: the requests still run through llmsite's
services, quotas and accounting unchanged.

- /v1/batch: seed items are `{prompt, max_tokens, temperature, ...}` (no
  `url`, no `body`); each becomes a /v1/completions item (a `messages` item a
  chat item), with the seed server's defaults. The answer is the seed's
  `{object: "batch", results: [{index, success, result | error}], total,
  successful, failed}`.
- /v1/compare: the seed's `options` carry the sampling parameters for every
  model, under the seed router's names (`maxTokens`, `topP`, ...) or OpenAI's.
  A body with `options` gets the seed's `{object: "comparison", prompt,
  models, results, request_id}`.
- /v1/analyze: `analysis_types` is the seed's name for `tasks`; every answer
  also carries the seed's `text`, `results` (`sentiment` as a plain label, its
  score beside it) and `request_id`.
- /health (llmsite.health, with models_health registered by the app) and
  GET /api/admin/stats: the seed's names beside llmsite's.

The serializers (inference.serializers) validate the seed's forms and call the
request translations here; the views call the response translations.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from typing import Any

from drf_spectacular.utils import OpenApiExample

# What the seed's servers use when an item leaves them out (examples/API.md:
# `max_tokens = 150, temperature = 0.7`).
SEED_DEFAULTS = {"max_tokens": 150, "temperature": 0.7}

# The seed's analysis answer quotes the text cut to this many characters.
SEED_TEXT_PREVIEW = 100

# `options` of a seed compare: the seed router's option names (camelCase, as
# its Pipeline reads them) and OpenAI's, each to the sampling field it sets.
SEED_OPTION_FIELDS = {
    "maxTokens": "max_tokens",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "topP": "top_p",
    "top_p": "top_p",
    "stop": "stop",
    "stopSequences": "stop",
    "seed": "seed",
    "frequencyPenalty": "frequency_penalty",
    "frequency_penalty": "frequency_penalty",
    "presencePenalty": "presence_penalty",
    "presence_penalty": "presence_penalty",
    "logit_bias": "logit_bias",
    "user": "user",
}
# Seed router options llmsite does not implement: refused by name, not ignored.
SEED_UNSUPPORTED_OPTIONS = {"topK", "top_k", "repeatPenalty", "repeat_penalty", "stopStrings"}


# -- /v1/batch ------------------------------------------------------------------------
def _is_llmsite_item(item: Any) -> bool:
    return isinstance(item, dict) and ("url" in item or "body" in item)


def _is_seed_item(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and not _is_llmsite_item(item)
        and ("prompt" in item or "messages" in item)
    )


def batch_form(items: Any) -> str:
    """Which form a batch's `requests` are in: "seed", "llmsite" or "mixed".

    An item with `url` or `body` is llmsite's; one with `prompt` or `messages`
    (and neither of those) is the seed's. A batch is the seed's when it has
    seed items and no llmsite ones. Other items (not objects, or objects with
    neither form's fields) fail alone in whichever form the batch is.
    """
    if not isinstance(items, list):
        return "llmsite"
    seed = any(_is_seed_item(item) for item in items)
    llmsite = any(_is_llmsite_item(item) for item in items)
    if seed and llmsite:
        return "mixed"
    return "seed" if seed else "llmsite"


def batch_is_seed(data: Any) -> bool:
    """Whether a /v1/batch body is in the seed's form (see batch_form)."""
    return isinstance(data, dict) and batch_form(data.get("requests")) == "seed"


def batch_item_from_seed(item: Any) -> Any:
    """One seed batch item as an llmsite item: a completion (a chat with `messages`).

    The other fields go into the body unchanged, so that a field the endpoint
    does not take is that item's 400 naming it, as in a single call. Items
    that are not objects stay as they are and fail alone.
    """
    if not isinstance(item, dict):
        return item
    body = {key: value for key, value in item.items() if key != "custom_id"}
    for key, value in SEED_DEFAULTS.items():
        body.setdefault(key, value)
    chat = "messages" in body and "prompt" not in body
    out = {"url": "/v1/chat/completions" if chat else "/v1/completions", "body": body}
    if "custom_id" in item:
        out["custom_id"] = item["custom_id"]
    return out


def _answer_text(response: Mapping) -> str | None:
    choices = response.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    if "message" in choice:
        return (choice.get("message") or {}).get("content")
    return choice.get("text")


def _seed_result(entry: Mapping) -> dict:
    """One llmsite batch or compare entry as the seed's `{index, success, result | error}`."""
    out: dict[str, Any] = {"index": entry["index"]}
    if entry.get("custom_id") is not None:
        out["custom_id"] = entry["custom_id"]
    if "model" in entry:  # compare: the model asked for
        out["model"] = entry["model"]
    out["success"] = entry["status_code"] == 200
    out["status_code"] = entry["status_code"]
    if not out["success"]:
        error = entry.get("error") or {}
        # The seed's `error` is the message alone; the OpenAI error object stays beside it.
        out["error"] = error.get("message", "")
        out["error_detail"] = error
        return out
    response = entry.get("response")
    if response is not None:  # a batch item: the whole OpenAI response
        usage = response.get("usage") or {}
        choices = response.get("choices") or [{}]
        result = {
            "text": _answer_text(response),
            "tokens": usage.get("completion_tokens"),
            "model": response.get("model"),
            "latency": entry.get("latency_ms"),
            "finish_reason": choices[0].get("finish_reason"),
            "usage": usage or None,
        }
    else:  # a compare entry: already the text and its figures
        usage = entry.get("usage") or {}
        result = {
            "text": entry.get("text"),
            "tokens": usage.get("completion_tokens"),
            "model": entry.get("answered_model"),
            "latency": entry.get("latency_ms"),
            "finish_reason": entry.get("finish_reason"),
            "usage": usage or None,
            "ttft_ms": entry.get("ttft_ms"),
            "tokens_per_second": entry.get("tokens_per_second"),
        }
    out["result"] = result
    return out


def batch_to_seed(body: Mapping) -> dict:
    """llmsite's `batch.result` as the seed's `batch` answer, with llmsite's totals beside it."""
    results = [_seed_result(entry) for entry in body["data"]]
    successful = sum(1 for result in results if result["success"])
    return {
        "object": "batch",
        "results": results,
        "total": len(results),
        "successful": successful,
        "failed": len(results) - successful,
        "totals": body.get("totals"),
    }


# -- /v1/compare ----------------------------------------------------------------------
def compare_is_seed(data: Any) -> bool:
    """A /v1/compare body is in the seed's form when it carries `options`."""
    return isinstance(data, dict) and "options" in data


def compare_to_seed(body: Mapping, *, request: Mapping, request_id: str) -> dict:
    """llmsite's `compare.result` as the seed's `comparison`, with llmsite's totals beside it."""
    out = {
        "object": "comparison",
        "prompt": request.get("prompt"),
        "models": list(request.get("models") or []),
        "results": [_seed_result(entry) for entry in body["data"]],
        "request_id": request_id,
        "totals": body.get("totals"),
    }
    if "messages" in request:
        out["messages"] = request["messages"]
    return out


# -- /v1/analyze ----------------------------------------------------------------------
def analysis_with_seed_fields(body: Mapping, *, text: str, request_id: str) -> dict:
    """llmsite's analysis with the seed's names added: `text` (its first 100
    characters), `results` (`sentiment` the plain label, `sentiment_score`
    beside it) and `request_id`. Both shapes are `object: "analysis"`, so
    every answer carries both."""
    results: dict[str, Any] = {}
    sentiment = body.get("sentiment")
    if isinstance(sentiment, Mapping):
        results["sentiment"] = sentiment.get("label")
        results["sentiment_score"] = sentiment.get("score")
    for task in ("keywords", "summary"):
        if task in body:
            results[task] = body[task]
    preview = text[:SEED_TEXT_PREVIEW] + ("..." if len(text) > SEED_TEXT_PREVIEW else "")
    return {**body, "text": preview, "results": results, "request_id": request_id}


# -- /health --------------------------------------------------------------------------
def models_health(states: Mapping[str, str]) -> dict:
    """What /health says about models, without naming any: how many are loaded
    (`modelsLoaded`, the seed router's name) and how many are in each state."""
    counts = {"loaded": 0, "loading": 0, "failed": 0}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return {
        "initialized": True,
        "engine": "llama.cpp",
        "modelsLoaded": counts["loaded"],
        "models": counts,
    }


def health_models() -> dict:
    """The /health source inference registers at ready(): models_health of this
    process's registry (from memory, no I/O)."""
    from inference.registry import registry

    return models_health(registry.engine_states())


# -- GET /api/admin/stats -------------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def process_usage() -> dict:
    """This process's memory and CPU in the seed server's units: bytes
    (Node's process.memoryUsage) and microseconds (process.cpuUsage)."""
    times = os.times()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "memory": {"rss": _rss_bytes(), "maxRss": peak},
        "cpu": {"user": int(times.user * 1_000_000), "system": int(times.system * 1_000_000)},
    }


def stats_with_seed_fields(stats: Mapping, *, strategy: str) -> dict:
    """The operators' stats with the seed's admin stats beside them:
    `server: {uptime, requests, errors, memory, cpu}`, `router` (the seed
    router's getStatus names) and `metrics` (the request counters)."""
    counters = ("requests", "errors", "rejected", "cancelled", "http_requests", "http_errors")
    return {
        **stats,
        "server": {
            "uptime": stats.get("uptime_s"),
            "requests": stats.get("requests"),
            "errors": stats.get("errors"),
            **process_usage(),
        },
        "router": {
            "initialized": True,
            "engine": "llama.cpp",
            "strategy": strategy,
            "modelsLoaded": stats.get("models_loaded"),
        },
        "metrics": {name: stats[name] for name in counters if name in stats},
    }


# -- OpenAPI examples of the seed's forms ----------------------------------------------
def request_examples(examples: list[OpenApiExample]) -> list[OpenApiExample]:
    """Only the request examples: where the seed's answer has its own shape (batch,
    compare), the operation's response schema is llmsite's, and the seed's answer
    is described in the operation's text and the README instead."""
    return [example for example in examples if not example.response_only]


def _examples(name: str, request: dict, response: dict) -> list[OpenApiExample]:
    return [
        OpenApiExample(f"{name} (LLM-Runner-Router)", request_only=True, value=request),
        OpenApiExample(f"{name} (LLM-Runner-Router)", response_only=True, value=response),
    ]


COMPLETION_EXAMPLES = [
    OpenApiExample(
        "completion without model (LLM-Runner-Router's client)",
        request_only=True,
        value={"prompt": "What is artificial intelligence?", "max_tokens": 150, "temperature": 0.7},
        description="No `model`: routed as `auto`; the response's `model` names the one "
        "that answered.",
    )
]
CHAT_EXAMPLES = [
    OpenApiExample(
        "chat without model (LLM-Runner-Router's client)",
        request_only=True,
        value={
            "messages": [{"role": "user", "content": "Can you help me with math?"}],
            "max_tokens": 150,
            "temperature": 0.7,
        },
        description="No `model`: routed as `auto`; the response's `model` names the one "
        "that answered.",
    )
]
BATCH_EXAMPLES = _examples(
    "batch",
    {
        "requests": [
            {"prompt": "What is 2+2?", "max_tokens": 50},
            {"prompt": "What is the capital of France?", "max_tokens": 50},
        ]
    },
    {
        "object": "batch",
        "results": [
            {
                "index": 0,
                "success": True,
                "status_code": 200,
                "result": {
                    "text": " 4",
                    "tokens": 2,
                    "model": "gemma-3-270m",
                    "latency": 41,
                    "finish_reason": "stop",
                    "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
                },
            },
            {
                "index": 1,
                "success": False,
                "status_code": 429,
                "error": "Rate limit reached for requests per minute.",
                "error_detail": {
                    "message": "Rate limit reached for requests per minute.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                },
            },
        ],
        "total": 2,
        "successful": 1,
        "failed": 1,
        "totals": {"requests": 2, "succeeded": 1, "failed": 1, "total_tokens": 10},
    },
)
COMPARE_EXAMPLES = _examples(
    "compare",
    {
        "prompt": "The capital of France is",
        "models": ["gemma-3-270m", "auto"],
        "options": {"maxTokens": 8, "temperature": 0},
    },
    {
        "object": "comparison",
        "prompt": "The capital of France is",
        "models": ["gemma-3-270m", "auto"],
        "results": [
            {
                "index": 0,
                "model": "gemma-3-270m",
                "success": True,
                "status_code": 200,
                "result": {
                    "text": " Paris.",
                    "tokens": 3,
                    "model": "gemma-3-270m",
                    "latency": 65,
                    "finish_reason": "stop",
                    "usage": {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9},
                    "ttft_ms": 30,
                    "tokens_per_second": 80.5,
                },
            }
        ],
        "request_id": "3b1f0c2a9d8e4f6a",
        "totals": {"requests": 2, "succeeded": 2, "failed": 0},
    },
)
ANALYZE_EXAMPLES = _examples(
    "analyze",
    {"text": "The service was quick and friendly.", "analysis_types": ["sentiment", "keywords"]},
    {
        "object": "analysis",
        "model": "gemma-3-270m",
        "sentiment": {"label": "positive", "score": 0.9},
        "keywords": ["service"],
        "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80},
        "text": "The service was quick and friendly.",
        "results": {"sentiment": "positive", "sentiment_score": 0.9, "keywords": ["service"]},
        "request_id": "3b1f0c2a9d8e4f6a",
    },
)
