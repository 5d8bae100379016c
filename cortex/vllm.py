"""vLLM behind Cortex functions: OpenAI chat and completion chunks from vLLM's async engine.

The only module that imports vllm, and only when a `VLLMChat` is built, so `import cortex.vllm`
works without it. A Cerebrium-style main.py::

    from cortex.vllm import VLLMChat, serves_model

    llm = VLLMChat("Qwen/Qwen2.5-0.5B-Instruct", max_model_len=4096)  # the engine starts at import

    @serves_model(llm.model_name)  # GET .../models lists it (sets run.__cortex_model__)
    async def run(messages: list, run_id: str = "", stream: bool = True, max_tokens: int = 256):
        async for chunk in llm.chat(messages, run_id=run_id, stream=stream, max_tokens=max_tokens):
            yield chunk

Each chunk is an OpenAI `chat.completion.chunk` (or `text_completion`) dict; Cortex frames them as
SSE and adds `data: [DONE]` on its OpenAI routes, or collects them when the caller does not stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cortex.config import CONFIG_FILE, load_config
from cortex.errors import MissingDependencyError

VLLM_MISSING = "vLLM is not installed. Install it with: pip install 'cortex[vllm]'"
MODEL_ATTRIBUTE = "__cortex_model__"  # read by the OpenAI routes for GET .../models
APP_MODULE = "main"  # the name Cortex imports main.py under (see discovery.import_main)

logger = logging.getLogger("cortex.vllm")
F = TypeVar("F", bound=Callable[..., Any])


def serves_model(name: str) -> Callable[[F], F]:
    """Decorator: `func` serves model `name` (same as `func.__cortex_model__ = name`)."""

    def mark(func: F) -> F:
        setattr(func, MODEL_ATTRIBUTE, name)
        return func

    return mark


@dataclass(frozen=True)
class _VLLM:
    """The vLLM names this module uses, imported on first use."""

    AsyncLLM: Any
    AsyncEngineArgs: Any
    SamplingParams: Any
    RequestOutputKind: Any
    StructuredOutputsParams: Any  # None in a vLLM without structured outputs


def load_vllm() -> _VLLM:
    """Import vLLM; MissingDependencyError when it is not installed (other import errors propagate)."""
    try:
        async_llm = importlib.import_module("vllm.v1.engine.async_llm")
        arg_utils = importlib.import_module("vllm.engine.arg_utils")
        sampling = importlib.import_module("vllm.sampling_params")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "vllm":
            raise  # vLLM is there but one of its own dependencies is missing: show that
        raise MissingDependencyError(VLLM_MISSING) from exc
    return _VLLM(
        AsyncLLM=async_llm.AsyncLLM,
        AsyncEngineArgs=arg_utils.AsyncEngineArgs,
        SamplingParams=sampling.SamplingParams,
        RequestOutputKind=sampling.RequestOutputKind,
        StructuredOutputsParams=getattr(sampling, "StructuredOutputsParams", None),
    )


def app_gpu_count() -> int | None:
    """`[cerebrium.hardware] gpu_count` of the app Cortex is importing, when its compute is a GPU."""
    path = getattr(sys.modules.get(APP_MODULE), "__file__", None)
    if path is None or not (Path(path).parent / CONFIG_FILE).is_file():
        return None  # not under `cortex serve`: leave vLLM's default
    hardware = load_config(Path(path).parent).config.hardware
    return hardware.gpu_count if hardware.is_gpu and hardware.gpu_count > 0 else None


def engine_arguments(model: str, engine_args: Mapping[str, Any], gpu_count: int | None) -> dict[str, Any]:
    """AsyncEngineArgs keywords: the user's, with tensor_parallel_size defaulting to the GPU count."""
    arguments = {"model": model, **engine_args}
    if gpu_count is not None and "tensor_parallel_size" not in arguments:
        arguments["tensor_parallel_size"] = gpu_count
    return arguments


def config_objects(args_class: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Dicts given for config-object fields (structured_outputs_config, compilation_config, ...)
    built into those objects, as vLLM's CLI and `LLM` do, so engine args can come from JSON."""
    result = dict(arguments)
    for spec in dataclasses.fields(args_class):
        value = result.get(spec.name)
        if isinstance(value, dict):
            default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
            if dataclasses.is_dataclass(default) and not isinstance(default, type):
                result[spec.name] = type(default)(**value)
    return result


def sampling_arguments(
    *,
    temperature: float,
    top_p: float,
    max_tokens: int | None,
    stop: str | Sequence[str] | None,
    seed: int | None,
    presence_penalty: float,
    frequency_penalty: float,
    n: int,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """OpenAI sampling fields -> SamplingParams keywords; `extra` (ignore_eos, top_k, ...) as given."""
    if n != 1:
        raise ValueError(
            f"n={n} is not supported: cortex.vllm returns one choice per request. "
            "Send n=1 (or leave it out) and make n requests instead."
        )
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 (got {max_tokens}); leave it out for no limit.")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return {
        "n": 1,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "stop": stops,
        "seed": seed,
        "presence_penalty": presence_penalty,
        "frequency_penalty": frequency_penalty,
        **extra,
    }


def structured_output_arguments(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI response_format -> StructuredOutputsParams keywords; None for plain text."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = (response_format or {}).get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise ValueError(
                "response_format of type 'json_schema' needs "
                '{"json_schema": {"name": ..., "schema": {...}}}; '
                f"got {response_format!r}."
            )
        return {"json": dict(schema)}
    raise ValueError(
        f"response_format type {kind!r} is not supported; use 'text', 'json_object' or 'json_schema'."
    )


def text_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages with list-of-parts content joined into plain text, for chat templates."""
    if not messages:
        raise ValueError("messages is empty; send at least one {'role': 'user', 'content': '...'}.")
    result = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError(
                f"messages[{index}] must be an object with a 'role' and a 'content'; got {message!r}."
            )
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(_text_part(index, part) for part in content)
        result.append({**message, "content": content})
    return result


def _text_part(index: int, part: Any) -> str:
    if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
        text: str = part["text"]
        return text
    raise ValueError(
        f"messages[{index}] has a content part cortex.vllm cannot read: {part!r}. "
        "Only {'type': 'text', 'text': '...'} parts are supported."
    )


def wants_usage(stream: bool, stream_options: Mapping[str, Any] | None) -> bool:
    """Usage is sent when asked for, and always without streaming (OpenAI answers carry it)."""
    return not stream or bool((stream_options or {}).get("include_usage"))


@dataclass
class Chunks:
    """The OpenAI chunks of one request (chat or text completion), with its running token counts."""

    request_id: str
    model: str
    is_chat: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        """A `chat.completion.chunk` with one choice."""
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def text(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        """A `text_completion` chunk with one choice."""
        return self._chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}])

    def usage(self) -> dict[str, Any]:
        """The last chunk when usage is wanted: no choices, the token counts."""
        total = self.prompt_tokens + self.completion_tokens
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                 "total_tokens": total}  # fmt: skip
        return {**self._chunk([]), "usage": usage}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        kind, prefix = ("chat.completion.chunk", "chatcmpl") if self.is_chat else ("text_completion", "cmpl")
        return {"id": f"{prefix}-{self.request_id}", "object": kind, "created": self.created,
                "model": self.model, "choices": choices}  # fmt: skip


@dataclass(frozen=True)
class _Piece:
    """One delta of generated text, as read from a vLLM RequestOutput."""

    text: str
    finish_reason: str | None


class VLLMChat:
    """One vLLM async engine, started when this is built (once, at import of main.py).

    `model` is a local folder or a hub name; `served_model_name` is the name answers and
    GET .../models report (default: `model`). Every other keyword is an `AsyncEngineArgs` field,
    passed through as written: dtype, max_model_len, enforce_eager, gpu_memory_utilization,
    distributed_executor_backend, ...; a config-object field may be given as a dict
    (`structured_outputs_config={"disable_any_whitespace": True}`). `tensor_parallel_size`
    defaults to `[cerebrium.hardware] gpu_count` of the app being served when its compute is a
    GPU, else to vLLM's default.
    """

    def __init__(self, model: str, *, served_model_name: str | None = None, **engine_args: Any) -> None:
        self._vllm = load_vllm()
        self.model_name = served_model_name or model
        arguments = engine_arguments(model, engine_args, app_gpu_count())
        arguments = config_objects(self._vllm.AsyncEngineArgs, arguments)
        self.engine: Any = self._vllm.AsyncLLM.from_engine_args(self._vllm.AsyncEngineArgs(**arguments))
        self.tokenizer: Any = self.engine.get_tokenizer()  # synchronous in vLLM 0.32

    async def chat(
        self,
        messages: Sequence[Any],
        *,
        run_id: str = "",
        stream: bool = True,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        n: int = 1,
        stream_options: Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """`chat.completion.chunk` dicts: the role first, text deltas, `finish_reason` in the last
        choice, then a usage chunk when `stream_options={"include_usage": True}` or not streaming.

        The model's chat template builds the prompt; `run_id` is vLLM's request id (the request is
        aborted when the consumer stops early). Extra keywords (ignore_eos, top_k, min_p, ...) go
        to `SamplingParams` as they are; a bad one raises there.
        """
        params = self._sampling_params(
            sampling_arguments(
                temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed,
                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, n=n,
                extra=sampling,
            ),
            response_format,
        )  # fmt: skip
        prompt = {"prompt_token_ids": await asyncio.to_thread(self.chat_prompt_ids, messages)}
        chunks = Chunks(run_id or uuid.uuid4().hex, self.model_name)
        role_sent = False  # sent with the first output, so a prompt vLLM refuses fails before any chunk
        async with aclosing(self._pieces(prompt, params, chunks)) as pieces:
            async for piece in pieces:
                if not role_sent:
                    role_sent = True
                    yield chunks.delta({"role": "assistant", "content": ""})
                delta = {"content": piece.text} if piece.text else {}
                if delta or piece.finish_reason:
                    yield chunks.delta(delta, piece.finish_reason)
        if wants_usage(stream, stream_options):
            yield chunks.usage()

    async def completion(
        self,
        prompt: str | list[int],
        *,
        run_id: str = "",
        stream: bool = True,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int | None = 16,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        n: int = 1,
        stream_options: Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """`text_completion` chunks for a raw prompt (text or token ids), as `chat` does for messages."""
        params = self._sampling_params(
            sampling_arguments(
                temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop, seed=seed,
                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, n=n,
                extra=sampling,
            ),
            response_format,
        )  # fmt: skip
        engine_prompt: Any = prompt if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}
        chunks = Chunks(run_id or uuid.uuid4().hex, self.model_name, is_chat=False)
        async with aclosing(self._pieces(engine_prompt, params, chunks)) as pieces:
            async for piece in pieces:
                if piece.text or piece.finish_reason:
                    yield chunks.text(piece.text, piece.finish_reason)
        if wants_usage(stream, stream_options):
            yield chunks.usage()

    def chat_prompt_ids(self, messages: Sequence[Any]) -> list[int]:
        """Token ids of `messages` through the tokenizer's chat template, ready for the reply."""
        text = self.tokenizer.apply_chat_template(
            text_messages(messages), tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return ids

    def shutdown(self) -> None:
        """Stop the engine and its worker processes (takes a few seconds)."""
        self.engine.shutdown()

    def _sampling_params(self, arguments: dict[str, Any], response_format: Mapping[str, Any] | None) -> Any:
        structured = structured_output_arguments(response_format)
        if structured is not None:
            if self._vllm.StructuredOutputsParams is None:
                raise ValueError("response_format needs a vLLM with StructuredOutputsParams (0.11 or newer).")
            arguments["structured_outputs"] = self._vllm.StructuredOutputsParams(**structured)
        return self._vllm.SamplingParams(**arguments, output_kind=self._vllm.RequestOutputKind.DELTA)

    async def _pieces(self, prompt: Any, params: Any, chunks: Chunks) -> AsyncGenerator[_Piece, None]:
        """Deltas of one request, counted into `chunks`; aborted in vLLM if the consumer stops early."""
        finished = False
        try:
            async with aclosing(self.engine.generate(prompt, params, chunks.request_id)) as outputs:
                async for output in outputs:
                    choice = output.outputs[0]
                    finished = bool(output.finished)
                    chunks.prompt_tokens = len(output.prompt_token_ids or ())
                    chunks.completion_tokens += len(choice.token_ids)
                    yield _Piece(choice.text, choice.finish_reason)
        finally:
            if not finished:
                logger.info(
                    "vLLM request %s aborted: its caller stopped before it finished.", chunks.request_id
                )
                await self.engine.abort(chunks.request_id)
