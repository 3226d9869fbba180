"""POST /tokenize and /detokenize, in llama-server's and vLLM's shapes.

A model's own tokenizer, for counting tokens before sending a request:
`content` is tokenized as a completion prompt would be, `messages` (with
`tools`) through the model's chat prompt exactly as /v1/chat/completions builds
it. Authenticated and tenant-scoped like /v1 (served at the root, as
llama-server and vLLM do); nothing is billed.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field
from rest_framework import serializers

from inference import services
from inference.api import ERRORS, InferenceView, respond
from inference.chat_templates import chat_prompt
from inference.serializers import ContentField, StrictSerializer
from llmsite.errors import InvalidRequest

MAX_CONTENT_CHARS = 262_144
MAX_MESSAGES = 512
MAX_TOOLS = 128
MAX_DETOKENIZE_TOKENS = 131_072


class TokenizeMessageSerializer(StrictSerializer):
    ROLES = ("system", "developer", "user", "assistant", "tool")

    role = serializers.CharField(help_text="system, developer, user, assistant or tool")
    content = ContentField(required=False, allow_null=True)
    name = serializers.CharField(max_length=64, required=False)
    tool_calls = serializers.ListField(
        child=serializers.DictField(), required=False, max_length=128
    )
    tool_call_id = serializers.CharField(max_length=256, required=False)
    refusal = serializers.CharField(required=False, allow_null=True)

    def validate_role(self, value):
        if value not in self.ROLES:
            raise serializers.ValidationError(f"must be one of {', '.join(self.ROLES)}")
        return value

    def validate(self, attrs):
        if attrs["role"] == "developer":
            attrs["role"] = "system"
        attrs.setdefault("content", None)
        if attrs["content"] is None and attrs["role"] != "assistant":
            raise InvalidRequest(
                f"Messages with role `{attrs['role']}` need `content`.",
                param="messages.content",
                code="invalid_value",
            )
        return attrs


class TokenizeSerializer(StrictSerializer):
    model = serializers.CharField(max_length=128)
    content = serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, max_length=MAX_CONTENT_CHARS
    )
    messages = serializers.ListField(
        child=TokenizeMessageSerializer(), required=False, min_length=1, max_length=MAX_MESSAGES
    )
    tools = serializers.ListField(
        child=serializers.DictField(), required=False, allow_null=True, max_length=MAX_TOOLS
    )
    add_special = serializers.BooleanField(
        required=False,
        default=True,
        help_text="`content` only: add the BOS token if the model's tokenizer asks for one.",
    )
    add_generation_prompt = serializers.BooleanField(
        required=False, default=True, help_text="`messages` only: open the assistant's turn."
    )
    with_pieces = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        if ("content" in attrs) == ("messages" in attrs):
            raise InvalidRequest(
                "Send either `content` or `messages`.",
                param="content" if "content" in attrs or "messages" not in attrs else "messages",
                code="invalid_value",
            )
        if attrs.get("tools") and "messages" not in attrs:
            raise InvalidRequest(
                "`tools` goes with `messages`.", param="tools", code="invalid_value"
            )
        return attrs


class TokenPieceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    piece = serializers.CharField()


@extend_schema_field(
    {
        "type": "array",
        "items": {
            "oneOf": [
                {"type": "integer"},
                {
                    "type": "object",
                    "properties": {"id": {"type": "integer"}, "piece": {"type": "string"}},
                    "required": ["id", "piece"],
                },
            ]
        },
        "description": "Token ids; with `with_pieces`, objects {id, piece} instead.",
    }
)
class TokensField(serializers.ListField):
    pass


class TokenizeResponseSerializer(serializers.Serializer):
    tokens = TokensField()
    count = serializers.IntegerField()
    max_model_len = serializers.IntegerField(help_text="The model's context size per request.")


class DetokenizeSerializer(StrictSerializer):
    model = serializers.CharField(max_length=128)
    tokens = serializers.ListField(
        child=serializers.IntegerField(min_value=0), max_length=MAX_DETOKENIZE_TOKENS
    )


class DetokenizeResponseSerializer(serializers.Serializer):
    content = serializers.CharField()


def _token_bytes(engine, tokens: list[int]) -> bytes:
    """The tokens' text with control tokens spelled out (<|im_end|>), as llama-server does."""
    llm = engine._llm  # the engine's llama_cpp.Llama (its tokenizer is read-only once loaded)
    return llm.detokenize(list(tokens), special=True)


def _tokenize(engine, model, data: dict) -> dict:
    if "messages" in data:
        tokens = chat_prompt(
            engine,
            model,
            data["messages"],
            tools=data.get("tools"),
            add_generation_prompt=data["add_generation_prompt"],
        ).tokens
    else:
        tokens = engine.tokenize(data["content"], add_bos=data["add_special"], special=False)
    out: list = tokens
    if data["with_pieces"]:
        out = [
            {"id": t, "piece": _token_bytes(engine, [t]).decode("utf-8", errors="replace")}
            for t in tokens
        ]
    return {"tokens": out, "count": len(tokens), "max_model_len": model.n_ctx}


def _detokenize(engine, tokens: list[int]) -> dict:
    bad = next((t for t in tokens if not engine.valid_token(t)), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token {bad} is outside this model's vocabulary (0..{engine.n_vocab - 1}).",
            param="tokens",
            code="invalid_value",
        )
    return {"content": _token_bytes(engine, tokens).decode("utf-8", errors="replace")}


class _TokenizerView(InferenceView):
    request_serializer: type[serializers.Serializer]

    async def _run(self, request, work):
        return respond(
            await services.tokenizer_run(
                principal=request.user,
                body=await self.body(request),
                request_id=request._request.request_id,
                endpoint=self.endpoint,
                serializer_class=self.request_serializer,
                work=work,
            )
        )


class TokenizeView(_TokenizerView):
    endpoint = "tokenize"
    request_serializer = TokenizeSerializer

    @extend_schema(
        operation_id="tokenize",
        tags=["Tokenizer"],
        summary="Tokenize text, or a chat as the model's chat template renders it",
        request=TokenizeSerializer,
        responses={200: TokenizeResponseSerializer, **ERRORS},
        examples=[
            OpenApiExample(
                "content",
                request_only=True,
                value={"model": "qwen2.5-coder-0.5b-instruct", "content": "Hello world"},
            ),
            OpenApiExample(
                "messages",
                request_only=True,
                value={
                    "model": "qwen2.5-coder-0.5b-instruct",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "with_pieces": True,
                },
            ),
            OpenApiExample(
                "tokens",
                response_only=True,
                value={"tokens": [9707, 1879], "count": 2, "max_model_len": 4096},
            ),
        ],
    )
    async def post(self, request):
        return await self._run(request, _tokenize)


class DetokenizeView(_TokenizerView):
    endpoint = "detokenize"
    request_serializer = DetokenizeSerializer

    @extend_schema(
        operation_id="detokenize",
        tags=["Tokenizer"],
        summary="Token ids back to text (control tokens spelled out)",
        request=DetokenizeSerializer,
        responses={200: DetokenizeResponseSerializer, **ERRORS},
        examples=[
            OpenApiExample(
                "detokenize",
                request_only=True,
                value={"model": "qwen2.5-coder-0.5b-instruct", "tokens": [9707, 1879]},
            ),
            OpenApiExample("content", response_only=True, value={"content": "Hello world"}),
        ],
    )
    async def post(self, request):
        return await self._run(
            request, lambda engine, _model, data: _detokenize(engine, data["tokens"])
        )
