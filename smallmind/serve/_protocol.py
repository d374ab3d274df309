"""Request bodies of the OpenAI-compatible API (pydantic), and their translation into
scheduler requests. Unknown fields are ignored, as OpenAI's own clients expect; a value out of
range is rejected with the name of the field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ..errors import SmallMindError
from ._backend import Backend, Request

if TYPE_CHECKING:  # pragma: no cover
    from ..structured.tools import ToolPlan

__all__ = [
    "ApiError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "DetokenizeRequest",
    "Limits",
    "TokenizeRequest",
    "build_requests",
    "echo_texts",
    "error_param",
]

MAX_STOP = 16


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCall(_Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool's answer: to which call
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_dict(self) -> dict[str, Any]:
        """The message as a chat template sees it."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        for key in ("tool_call_id", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class FunctionDef(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Body):
    type: Literal["function"]
    function: FunctionDef

    def as_dict(self) -> dict[str, Any]:
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class JsonSchemaFormat(_Body):
    name: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """OpenAI's ``response_format``: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


Probability = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Sampling(_Body):
    """Fields shared by both endpoints, with OpenAI's ranges."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: Probability = 1.0
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # llama.cpp's extensions, which llama-cpp-python's clients send too.
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float = Field(
        default=1.0, gt=0.0, le=10.0, validation_alias=AliasChoices("repetition_penalty", "repeat_penalty")
    )

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDef] | None = None
    tool_choice: str | dict[str, Any] | None = None  # checked by the tool plan
    parallel_tool_calls: bool | None = None  # accepted: a reply makes at most one call


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False


class TokenizeRequest(_Body):
    content: str = Field(validation_alias=AliasChoices("content", "input", "text"))
    add_special: bool = True


class DetokenizeRequest(_Body):
    tokens: list[int]


class Limits(BaseModel):
    """Server-side caps on what one request may ask."""

    max_prompt_tokens: int
    max_tokens: int


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def error_param(loc: tuple | list) -> str | None:
    """The field a pydantic error location names, as OpenAI's ``param`` ("messages.0.content"):
    without the leading "body", and cut where pydantic names the branch of a union it tried
    ("str", "list[TextPart]")."""
    parts: list[str] = []
    for p in loc:
        if isinstance(p, str) and (p in _TYPE_TAGS or "[" in p):
            break
        if p != "body" or parts:
            parts.append(str(p))
    return ".".join(parts) or None


def _stop(value: str | list[str] | None) -> list[str]:
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop takes at most {MAX_STOP} strings, got {len(stops)}", param="stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop strings must not be empty", param="stop")
    return stops


def _logit_bias(raw: dict[str, float] | None, vocab: int) -> dict[int, float] | None:
    if not raw:
        return None
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(400, f"logit_bias keys must be token ids, got {key!r}",
                           param="logit_bias") from None
        if not 0 <= token < vocab:
            raise ApiError(
                400, f"logit_bias token id {token} is outside the vocabulary [0, {vocab})", param="logit_bias"
            )
        bias[token] = float(value)
    return bias


def _prompts(body: ChatCompletionRequest | CompletionRequest, backend: Backend,
             plan: ToolPlan | None) -> list[list[int]]:
    if isinstance(body, ChatCompletionRequest):
        from ..structured.tools import plain_messages
        try:
            if plan is not None:
                return [backend.encode_chat(plan.messages, tools=plan.template_tools)]
            return [backend.encode_chat(plain_messages([m.as_dict() for m in body.messages]))]
        except SmallMindError as exc:  # the model's template refuses the conversation
            raise ApiError(400, str(exc), param="messages") from None
    prompt = body.prompt
    if isinstance(prompt, str):
        return [backend.encode(prompt)]
    if not prompt:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    prompts: list[list[int]] = []
    if all(isinstance(p, int) for p in prompt):
        prompts.append([int(p) for p in prompt])  # type: ignore[arg-type]
    else:
        for item in prompt:
            prompts.append(backend.encode(item) if isinstance(item, str) else [int(i) for i in item])  # type: ignore[union-attr]
    for ids in prompts:
        if not ids:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        bad = next((i for i in ids if not 0 <= i < backend.vocab_size), None)
        if bad is not None:
            raise ApiError(
                400, f"token id {bad} is outside the vocabulary [0, {backend.vocab_size})", param="prompt"
            )
    return prompts


def _response_schema(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for (None: free text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise ApiError(400, "response_format of type json_schema needs json_schema.schema",
                       param="response_format")
    return fmt.json_schema.schema_


def echo_texts(body: ChatCompletionRequest | CompletionRequest, requests: list[Request],
               backend: Backend) -> list[str] | None:
    """The prompt text each choice starts with under ``echo`` (None without it)."""
    if not isinstance(body, CompletionRequest) or not body.echo:
        return None
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt] * len(requests)
    if all(isinstance(p, str) for p in prompt):
        return [str(prompt[i // body.n]) for i in range(len(requests))]
    return [backend.decode(r.prompt) for r in requests]


def _logprobs(body: ChatCompletionRequest | CompletionRequest) -> int | None:
    """How many alternatives each token's logprob comes with (None: no logprobs)."""
    if isinstance(body, CompletionRequest):
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs (the prompt's logprobs) is not supported",
                           param="echo", code="unsupported_parameter")
        return body.logprobs
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def _tool_plan(body: ChatCompletionRequest | CompletionRequest, backend: Backend) -> ToolPlan | None:
    """How ``tools`` / ``tool_choice`` render and constrain the reply (None: no tools)."""
    if not isinstance(body, ChatCompletionRequest) or (body.tools is None and body.tool_choice is None):
        return None
    if not body.tools:
        if body.tool_choice in (None, "none"):
            return None
        raise ApiError(400, "tool_choice needs a non-empty tools list", param="tool_choice")
    if _response_schema(body.response_format) is not None:
        raise ApiError(400, "tools and response_format cannot be combined: a tool call is JSON already",
                       param="response_format")
    try:
        return backend.tool_plan([m.as_dict() for m in body.messages], [t.as_dict() for t in body.tools],
                                 body.tool_choice)
    except (ValueError, TypeError) as exc:
        param = "tool_choice" if "tool_choice" in str(exc) else "tools"
        raise ApiError(400, str(exc), param=param) from None


def build_requests(
    body: ChatCompletionRequest | CompletionRequest, backend: Backend, limits: Limits
) -> tuple[list[Request], ToolPlan | None]:
    """One scheduler :class:`Request` per choice: ``n`` per prompt, prompt by prompt (the
    choice index OpenAI gives is ``prompt_index * n + i``), and the tool plan that reads the
    replies back (None without tools)."""
    chat = isinstance(body, ChatCompletionRequest)
    logprobs = _logprobs(body)
    wanted = body.max_tokens
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        wanted = body.max_completion_tokens
    if wanted is not None and wanted > limits.max_tokens:
        raise ApiError(
            400,
            f"max_tokens is {wanted}, more than this server's limit of {limits.max_tokens}",
            param="max_tokens",
        )
    stops = _stop(body.stop)
    if chat:
        stops += [s for s in backend.chat_stops() if s not in stops]
    sampling: dict[str, Any] = {
        "temperature": body.temperature,
        "top_p": None if body.top_p == 1.0 else body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "logit_bias": _logit_bias(body.logit_bias, backend.vocab_size),
    }
    plan = _tool_plan(body, backend)
    schema = _response_schema(body.response_format)
    constraint = {"json_schema": schema} if schema is not None else dict(plan.constraint if plan else {})
    if constraint:
        sampling.update(constraint)
        try:  # compiled (and cached) now, so that a bad schema is a 400 before any work
            backend.check_constraint(**constraint)
        except (ValueError, TypeError, ImportError) as exc:
            param = "response_format" if schema is not None else "tools"
            raise ApiError(400, str(exc), param=param) from None
    requests = []
    param = "messages" if chat else "prompt"
    for ids in _prompts(body, backend, plan):
        if len(ids) > limits.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens, more than this server's limit of "
                f"{limits.max_prompt_tokens}",
                param=param,
                code="context_length_exceeded",
            )
        room = backend.n_ctx - len(ids)
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens and the context holds {backend.n_ctx}: "
                "no room for an answer",
                param=param,
                code="context_length_exceeded",
            )
        max_tokens = min(room, limits.max_tokens if wanted is None else wanted)
        for i in range(body.n):
            seed = None if body.seed is None else (body.seed + i) % 2**63
            requests.append(Request(ids, max_tokens, dict(sampling, seed=seed), tuple(stops), logprobs))
    return requests, plan
