"""The local backend: a GGUF model on this process's llama.cpp engine.

Prompt building (tokenization, which is llama.cpp work proportional to the
prompt) runs in a worker thread, never on the event loop; the engine's own
thread does the decoding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings

from inference import chat_templates
from inference.backends.base import (
    Embeddings,
    Event,
    Finish,
    GenerateRequest,
    TextDelta,
    ToolCallDelta,
)
from inference.engine import (
    EmbeddingResult,
    EngineClosed,
    Finished,
    GrammarError,
    LlamaEngine,
    ModelLoadError,
    SamplingParams,
)
from inference.engine import TextDelta as EngineDelta
from inference.grammar import json_schema_grammar
from inference.models import LLMModel
from inference.registry import MemoryBudgetExceeded, registry
from inference.tools import LazyGrammar, ToolRequest, reply_finish_reason, tool_request
from inference.workers.protocol import WorkerCrashed
from llmsite.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelUnavailable,
    RateLimited,
    ServiceUnavailable,
    internal_error,
)
from llmsite.middleware import requests_arriving

logger = logging.getLogger("llmsite.inference")

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# No real text averages more characters per token than this: a prompt longer
# than n_ctx times it cannot fit, and is refused before it costs a tokenization.
CHARS_PER_TOKEN_BOUND = 16
# Prompts up to this many characters are planned (templated, tokenized) on the
# event loop: see _plans_inline.
INLINE_PLAN_CHARS = 1024


async def local_engine(model: LLMModel) -> LlamaEngine:
    """The loaded engine for a local model, loading it (off the event loop) if needed."""
    engine = registry.ready_engine(model)
    if engine is not None:  # the common case: no thread hops
        return engine
    try:
        engine, ready = await sync_to_async(_load, thread_sensitive=False)(model)
    except ModelLoadError as exc:
        logger.error("model %s unavailable: %s", model.model_id, exc)
        raise ModelUnavailable(
            f"The model `{model.model_id}` is unavailable: its GGUF file could not be loaded.",
            param="model",
            code="model_unavailable",
            headers={"Retry-After": "60"},
        ) from exc
    except MemoryBudgetExceeded as exc:
        raise ModelUnavailable(
            f"The model `{model.model_id}` cannot be loaded now: {exc}",
            param="model",
            code="model_unavailable",
            headers={"Retry-After": "10"},
        ) from exc
    if not ready:
        raise ModelUnavailable(
            f"The model `{model.model_id}` is still loading; retry shortly.",
            param="model",
            headers={"Retry-After": "5"},
        )
    return engine


def _load(model: LLMModel) -> tuple[LlamaEngine, bool]:
    """Start (or find) the model's engine and wait for it, up to LLMSITE_LOAD_TIMEOUT.

    An engine replaced while we waited (a model worker that crashed and was
    restarted, an operator's reload) is followed to its successor.
    """
    deadline = time.monotonic() + settings.LLMSITE_LOAD_TIMEOUT
    while True:
        engine = registry.engine_for(model)
        try:
            return engine, engine.wait_ready(max(0.0, deadline - time.monotonic()))
        except EngineClosed:
            if time.monotonic() >= deadline:
                return engine, False


def worker_crashed(model_id: str, exc: WorkerCrashed) -> ServiceUnavailable:
    """A 503 for a request whose model worker died or hung mid-request."""
    error = ServiceUnavailable(
        f"The model `{model_id}` stopped while serving this request ({exc}); it is being "
        "restarted, retry shortly.",
        code="model_worker_crashed",
        headers={"Retry-After": "2"},
    )
    error.__cause__ = exc
    return error


def check_capacity(engine: LlamaEngine, jobs: int, owner: str | None = None) -> None:
    # Refuse up front rather than queue without bound: a 503 with Retry-After
    # lets a client (or a load balancer) go elsewhere now.
    if engine.queue_depth + jobs > settings.LLMSITE_MAX_QUEUE:
        raise ServiceUnavailable(
            f"The model `{engine.spec.model_id}` is overloaded; retry shortly.",
            code="model_overloaded",
            headers={"Retry-After": "2"},
        )
    # One tenant may not fill the engine: past its share, its own requests wait
    # their turn (a 429), and the others still find room.
    share = settings.LLMSITE_TENANT_QUEUE_SHARE
    if owner is not None and engine.owner_load(owner) + jobs > share:
        raise RateLimited(
            f"Your tenant has {engine.owner_load(owner)} requests queued or running on "
            f"`{engine.spec.model_id}`, its share of this model is {share}; retry shortly.",
            code="tenant_queue_full",
            headers={"Retry-After": "1"},
        )


async def _submit_all(
    model: LLMModel,
    engine: LlamaEngine,
    jobs: list[tuple[list[int], SamplingParams]],
    owner: str | None = None,
    grammar_param: str = "response_format",
    coming: int = 0,
) -> list:
    """Queue every job on the model's engine. An engine unloaded meanwhile (an
    operator's unload or reload) is replaced by a fresh one, so the request
    waits for the load instead of failing."""
    handles = []
    try:
        for tokens, params in jobs:
            try:
                handles.append(engine.submit(tokens, params, owner=owner, coming=coming))
            except EngineClosed:
                engine = await local_engine(model)
                handles.append(engine.submit(tokens, params, owner=owner, coming=coming))
    except GrammarError as exc:
        for handle in handles:
            handle.cancel()
        raise _grammar_refused(exc, grammar_param) from exc
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    return handles


# -- prompts -------------------------------------------------------------------------
def _text_chars(item) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):  # a chat message
        content = item.get("content")
        return len(content) if isinstance(content, str) else len(json.dumps(content))
    return 0  # token ids cost no tokenization


def check_prompt_chars(model: LLMModel, items: list, param: str) -> int:
    """Refuse a prompt too long to tokenize: tokenizing costs CPU in proportion
    to the characters, and a prompt this long cannot fit the context anyway."""
    limit = settings.LLMSITE_MAX_PROMPT_CHARS or model.n_ctx * CHARS_PER_TOKEN_BOUND
    chars = sum(_text_chars(item) for item in items)
    if chars > limit:
        raise ContextLengthExceeded(
            f"This model accepts at most {limit} characters of {param} in one request; "
            f"yours has {chars}. Please reduce the length of the {param}.",
            param=param,
        )
    return chars


def _plans_inline(data: dict, chars: int) -> bool:
    """Whether a prompt is planned on the event loop rather than in a thread.

    Tokenizing costs about 1 µs per character here, a thread hop about 100 µs
    and a wait behind whatever else holds the GIL: a short prompt with nothing
    to convert is cheaper planned in place, and blocks the loop for well under
    a millisecond. Tools and JSON schemas become grammars (a conversion, and a
    check that may cross to a model worker): those always go to a thread.
    """
    if chars > INLINE_PLAN_CHARS or data.get("tools"):
        return False
    ids = sum(len(item) for item in data.get("prompt") or () if isinstance(item, list))
    if ids > INLINE_PLAN_CHARS:  # each one is checked against the vocabulary
        return False
    response_format = data.get("response_format") or {}
    return response_format.get("type") in (None, "text")


def _tokenize_prompt(engine: LlamaEngine, item: str | list[int], param: str) -> list[int]:
    if isinstance(item, str):
        return engine.tokenize(item, add_bos=True, special=False)
    bad = next((t for t in item if not engine.valid_token(t)), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} is outside this model's vocabulary (0..{engine.n_vocab - 1}).",
            param=param,
            code="invalid_value",
        )
    return list(item)


def _logit_bias(engine: LlamaEngine, bias: dict[int, float]) -> dict[int, float] | None:
    bad = next((t for t in bias if not engine.valid_token(t)), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} in logit_bias is outside this model's vocabulary "
            f"(0..{engine.n_vocab - 1}).",
            param="logit_bias",
            code="invalid_value",
        )
    return bias or None


def _max_tokens(
    model: LLMModel, prompt_len: int, requested: int | None, default: int | None, param: str
) -> int:
    room = model.n_ctx - prompt_len
    if requested is None:
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {model.n_ctx} tokens. However, your "
                f"{param} resulted in {prompt_len} tokens. Please reduce the length of the "
                f"{param}.",
                param=param,
            )
        return min(default, room) if default else room
    if prompt_len + requested > model.n_ctx:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.n_ctx} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the {param}, "
            f"{requested} in the completion). Please reduce the length of the {param} or "
            f"completion.",
            param=param,
        )
    return requested


def _seed_for(seed: int | None, choice: int) -> int | None:
    return None if seed is None else (seed + choice) & 0xFFFFFFFF


def _grammar_refused(exc: GrammarError, param: str = "response_format") -> InvalidRequest:
    return InvalidRequest(
        f"The grammar built from `{param}` cannot be used: {exc}",
        param=param,
        code="invalid_value",
    )


def _json_grammar(engine: LlamaEngine, response_format: dict | None) -> str | None:
    """The grammar for a JSON response format: the schema bounded before it is
    converted (inference.grammar), the result checked the way the engine will
    parse it, so a grammar llama.cpp would refuse is a 400 here. Runs in a
    worker thread with the rest of the plan."""
    if not response_format or response_format["type"] == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF

    if response_format["type"] == "json_object":
        return JSON_GBNF
    schema = response_format["json_schema"].get("schema") or {}
    grammar = json_schema_grammar(schema, param="response_format")
    try:
        engine.check_grammar(grammar)
    except GrammarError as exc:
        raise _grammar_refused(exc) from exc
    return grammar


def chat_prompt(engine: LlamaEngine, model: LLMModel, data: dict) -> tuple[list[int], tuple]:
    """A chat's prompt tokens and the stop strings its format adds.

    The one place a chat becomes tokens: the GGUF's own chat template (or a
    hand-written format for a GGUF without one), see inference.chat_templates,
    which also gives the template earlier calls' arguments as objects. The
    request's `tools` are shown to a template that reads them (even with
    `tool_choice: "none"`: the conversation may hold calls to them).
    Runs in a worker thread with the rest of the plan.
    """
    prompt = chat_templates.chat_prompt(
        engine, model, data["messages"], tools=data.get("tools") or None
    )
    return prompt.tokens, prompt.stop


def _tools_grammar(
    engine: LlamaEngine, model: LLMModel, tools: ToolRequest
) -> str | LazyGrammar | None:
    """The sampling side of tool calling, checked before anything is queued.

    `"required"` or a named function: a grammar of `<tool_call>` blocks built
    from the tools' schemas (bounded by inference.grammar, then parsed as the
    engine will), so the reply always parses and validates; it applies
    whatever the prompt format, which is why a model whose template cannot
    show tools may still be forced to call one. `"auto"` needs a template that
    shows the tools; it gets a lazy grammar (`tools.lazy_grammar()`, built and
    checked the same way), as llama-server does: sampling is free until the
    reply starts a call (the `<tool_call>` tag, or a bare `{"name": "<tool>"`
    opening the reply), and the call is then held to its schema. The reply is
    parsed afterwards either way. `"none"` neither constrains nor parses.
    """
    if not tools.tools:
        return None
    if not tools.forced and not chat_templates.supports_tools(engine, model):
        raise InvalidRequest(
            f"The model `{model.model_id}` has no chat template that shows tools, so it "
            'cannot choose to call one: send `tool_choice` "required" or a named '
            "function (decoding is then held to a call), or use a model with tool support.",
            param="tools",
            code="unsupported_parameter",
        )

    def to_gbnf(schema: dict) -> str:
        return json_schema_grammar(schema, param="tools")

    grammar = (
        tools.grammar(to_gbnf=to_gbnf) if tools.forced else tools.lazy_grammar(to_gbnf=to_gbnf)
    )
    if grammar is None:
        return None
    try:
        engine.check_grammar(grammar if isinstance(grammar, str) else grammar.grammar)
    except GrammarError as exc:
        raise _grammar_refused(exc, "tools") from exc
    return grammar


def _tokenize_chat(engine: LlamaEngine, chat_format: str, messages: list[dict]) -> list[int]:
    """A chat in a named hand-written format (client text never becomes control tokens)."""
    return chat_templates.format_prompt(engine, chat_format, messages).tokens


def _plan_completion(engine: LlamaEngine, model: LLMModel, data: dict):
    prompts = [_tokenize_prompt(engine, item, "prompt") for item in data["prompt"]]
    longest = max(len(tokens) for tokens in prompts)
    max_tokens = _max_tokens(
        model, longest, data.get("max_tokens"), DEFAULT_COMPLETION_MAX_TOKENS, "prompt"
    )
    bias = _logit_bias(engine, data["logit_bias"])
    jobs = []
    texts: list[str] = []
    for p_index, tokens in enumerate(prompts):
        item = data["prompt"][p_index]
        texts.append(item if isinstance(item, str) else engine.detokenize(tokens))
        for c in range(data["n"]):
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=data["temperature"],
                top_p=data["top_p"],
                seed=_seed_for(data.get("seed"), c),
                stop=tuple(data["stop"]),
                presence_penalty=data["presence_penalty"],
                frequency_penalty=data["frequency_penalty"],
                logprobs=data.get("logprobs"),
                logit_bias=bias,
            )
            jobs.append((tokens, params))
    return jobs, sum(len(t) for t in prompts), max_tokens * len(jobs), texts, None


def _plan_chat(engine: LlamaEngine, model: LLMModel, data: dict, tools: ToolRequest):
    tools_grammar = _tools_grammar(engine, model, tools)
    tokens, format_stops = chat_prompt(engine, model, data)
    max_tokens = _max_tokens(model, len(tokens), data.get("max_tokens"), None, "messages")
    # A forced call's grammar wins over a response_format: the reply is calls.
    # A response_format's grammar wins over "auto"'s lazy one: it holds the
    # whole reply, and calls are still parsed from it.
    forced = tools_grammar if isinstance(tools_grammar, str) else None
    lazy = tools_grammar if isinstance(tools_grammar, LazyGrammar) else None
    grammar = forced or _json_grammar(engine, data.get("response_format"))
    if grammar is not None:
        lazy = None
    elif lazy is not None:
        grammar = lazy.grammar
    logprobs = (data.get("top_logprobs") or 0) if data.get("logprobs") else None
    bias = _logit_bias(engine, data["logit_bias"])
    jobs = []
    for c in range(data["n"]):
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=data["temperature"],
            top_p=data["top_p"],
            seed=_seed_for(data.get("seed"), c),
            stop=tuple(data["stop"]) + format_stops,
            presence_penalty=data["presence_penalty"],
            frequency_penalty=data["frequency_penalty"],
            logprobs=logprobs,
            grammar=grammar,
            trigger_words=lazy.trigger_words if lazy else (),
            trigger_patterns=lazy.trigger_patterns if lazy else (),
            logit_bias=bias,
        )
        jobs.append((tokens, params))
    grammar_param = "tools" if forced or lazy else None
    return jobs, len(tokens), max_tokens * len(jobs), None, grammar_param


# -- generation ----------------------------------------------------------------------
# Requests for each local model that this process has routed but not yet
# submitted (prepared, reserving quota). Each submission tells the engine how
# many are still on their way, so that an idle engine can wait a moment and
# prefill a burst together (LlamaEngine._gather). Kept on the event loop: no lock.
_on_their_way: Counter[str] = Counter()


@dataclass(eq=False)
class LocalGeneration:
    backend: LocalBackend
    engine: LlamaEngine
    jobs: list
    prompt_tokens: int
    reserve_tokens: int
    prompt_texts: list[str] | None
    n: int
    owner: str | None = None
    tools: ToolRequest | None = None  # a chat's tool fields: its replies are parsed for calls
    stops: tuple[str, ...] = ()  # the request's own stop strings, not its chat format's
    grammar_param: str = "response_format"  # what a grammar the engine refuses is blamed on
    handles: list = field(default_factory=list)
    _peeked: list = field(default_factory=list)
    on_its_way: bool = False  # counted in _on_their_way until submitted or closed

    async def start(self, timeout: float | None) -> None:
        coming = self._arrived()
        self.handles = await _submit_all(
            self.backend.model,
            self.engine,
            self.jobs,
            owner=self.owner,
            grammar_param=self.grammar_param,
            coming=coming,
        )
        # Peek with an iterator of its own: the rest may be read from another
        # event loop (Django's test client does that), and a handle iterator
        # waits on the loop it started in.
        events = aiter(self.handles[0])
        try:
            self._peeked.append(await asyncio.wait_for(anext(events), timeout))
        except WorkerCrashed as exc:
            self._cancel()
            raise worker_crashed(self.backend.model.model_id, exc) from exc
        except BaseException:
            self._cancel()
            raise
        finally:
            await events.aclose()

    async def events(self) -> AsyncIterator[Event]:
        try:
            for index, handle in enumerate(self.handles):
                parser = self.tools.parser() if self.tools is not None else None
                async for event in self._choice_events(index, handle):
                    if isinstance(event, EngineDelta):
                        delta = TextDelta(index, event.text, event.n_tokens, tuple(event.logprobs))
                        if parser is None:
                            yield delta
                        else:
                            for out in _parsed(delta, parser.feed(event.text)):
                                yield out
                    elif isinstance(event, Finished):
                        reason = "stop" if event.finish_reason == "stop" else "length"
                        if parser is not None:
                            for out in _parsed(TextDelta(index, ""), parser.finish()):
                                yield out
                            reason = reply_finish_reason(parser, reason)
                        # A chat format's own stop strings end a turn naturally.
                        stop = event.stop_sequence if event.stop_sequence in self.stops else None
                        yield Finish(
                            index,
                            reason,
                            event.completion_tokens,
                            stop if reason == "stop" else None,
                        )
        finally:
            self._cancel()

    async def _choice_events(self, index: int, handle) -> AsyncIterator[object]:
        if index == 0:
            while self._peeked:
                event = self._peeked.pop(0)
                yield event
                if isinstance(event, Finished):
                    return
        try:
            async for event in handle:
                yield event
        except WorkerCrashed as exc:
            raise worker_crashed(self.backend.model.model_id, exc) from exc

    async def close(self) -> None:
        self._cancel()

    def _arrived(self) -> int:
        """No longer on its way; how many other requests may still be: those for
        the model, and those this process has received and not yet routed."""
        model_id = self.backend.model.model_id
        if self.on_its_way:
            self.on_its_way = False
            _on_their_way[model_id] -= 1
        return _on_their_way[model_id] + requests_arriving()

    def _cancel(self) -> None:
        self._arrived()
        for handle in self.handles:
            handle.cancel()


def _parsed(delta: TextDelta, pieces: list[dict]) -> list[Event]:
    """A text delta as the tool-call parser split it: content and call pieces.

    The delta's token count and logprobs stay on its first event (text held
    back as a possible call is still generated, and counted), so the service
    counts tokens exactly as without tools.
    """
    out: list[Event] = []
    carried = False
    for piece in pieces:
        if "content" in piece:
            text = piece["content"]
            if carried:
                out.append(TextDelta(delta.index, text))
            else:
                out.append(TextDelta(delta.index, text, delta.n_tokens, delta.logprobs))
                carried = True
            continue
        for item in piece["tool_calls"]:
            function = item.get("function") or {}
            out.append(
                ToolCallDelta(
                    index=delta.index,
                    call_index=item["index"],
                    id=item.get("id"),
                    name=function.get("name"),
                    arguments=function.get("arguments") or "",
                )
            )
    if not carried and (delta.n_tokens or delta.logprobs):
        out.insert(0, TextDelta(delta.index, "", delta.n_tokens, delta.logprobs))
    return out


@dataclass(eq=False)
class LocalEmbeddingJob:
    backend: LocalBackend
    engine: LlamaEngine
    inputs: list[list[int]]
    prompt_tokens: int
    owner: str | None = None

    async def run(self) -> Embeddings:
        try:
            handle = self.engine.submit_embeddings(self.inputs, owner=self.owner)
        except EngineClosed:
            engine = await local_engine(self.backend.model)
            handle = engine.submit_embeddings(self.inputs, owner=self.owner)
        result = None
        try:
            async for event in handle:
                if isinstance(event, EmbeddingResult):
                    result = event
        except WorkerCrashed as exc:
            handle.cancel()
            raise worker_crashed(self.backend.model.model_id, exc) from exc
        except BaseException:
            handle.cancel()
            raise
        if result is None:
            raise internal_error()
        return Embeddings(vectors=result.vectors, prompt_tokens=self.prompt_tokens)


def _embedding_inputs(engine: LlamaEngine, model: LLMModel, data: dict) -> list[list[int]]:
    inputs = []
    for index, item in enumerate(data["input"]):
        tokens = _tokenize_prompt(engine, item, "input")
        if len(tokens) > model.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {model.n_ctx} tokens, however "
                f"input {index} has {len(tokens)} tokens. Please reduce its length.",
                param="input",
            )
        inputs.append(tokens)
    total = sum(len(tokens) for tokens in inputs)
    limit = settings.LLMSITE_EMBEDDINGS_MAX_TOKENS
    if total > limit:
        raise InvalidRequest(
            f"At most {limit} tokens of input are embedded in one request; yours has {total}.",
            param="input",
            code="invalid_value",
        )
    return inputs


class LocalBackend:
    def __init__(self, model: LLMModel) -> None:
        self.model = model

    async def prepare(self, request: GenerateRequest) -> LocalGeneration:
        """The generation, planned. It counts as on its way to the engine until
        started or closed (a caller closes one it does not start)."""
        _on_their_way[self.model.model_id] += 1
        try:
            chat = request.kind == "chat/completions"
            data = request.data
            if chat:
                chars = check_prompt_chars(self.model, data["messages"], "messages")
            else:
                chars = check_prompt_chars(self.model, data["prompt"], "prompt")
            engine = await local_engine(self.model)
            tools = tool_request(data) if chat else None

            def plan(engine: LlamaEngine, model: LLMModel, data: dict):
                if tools is not None:
                    return _plan_chat(engine, model, data, tools)
                return _plan_completion(engine, model, data)

            if _plans_inline(data, chars):
                jobs, prompt_tokens, reserve, texts, grammar_param = plan(engine, self.model, data)
            else:
                jobs, prompt_tokens, reserve, texts, grammar_param = await sync_to_async(
                    plan, thread_sensitive=False
                )(engine, self.model, data)
            check_capacity(engine, len(jobs), request.owner)
        except BaseException:
            _on_their_way[self.model.model_id] -= 1
            raise
        return LocalGeneration(
            backend=self,
            engine=engine,
            jobs=jobs,
            prompt_tokens=prompt_tokens,
            reserve_tokens=reserve,
            prompt_texts=texts,
            n=request.data["n"],
            owner=request.owner,
            tools=tools,
            stops=tuple(request.data["stop"]),
            grammar_param=grammar_param or "response_format",
            on_its_way=True,
        )

    async def embed(self, data: dict, *, owner: str | None = None) -> LocalEmbeddingJob:
        check_prompt_chars(self.model, data["input"], "input")
        engine = await local_engine(self.model)
        inputs = await sync_to_async(_embedding_inputs, thread_sensitive=False)(
            engine, self.model, data
        )
        check_capacity(engine, 1, owner)
        return LocalEmbeddingJob(self, engine, inputs, sum(len(t) for t in inputs), owner)

    async def tokenizer(self) -> LlamaEngine:
        return await local_engine(self.model)

    async def tokenize(self, text: str) -> list[int]:
        engine = await local_engine(self.model)
        return await sync_to_async(engine.tokenize, thread_sensitive=False)(text)
