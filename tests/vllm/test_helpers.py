"""cortex.vllm without an engine: the missing-vLLM message, OpenAI -> vLLM mapping, chunk shapes.

Not slow: these run in the light .venv too, where vLLM is not installed.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest

from cortex import vllm
from cortex.errors import CortexError, MissingDependencyError


@pytest.fixture
def without_vllm(monkeypatch):
    """Imports of vllm fail as they do where it is not installed."""
    for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_building_a_chat_without_vllm_says_how_to_install_it(without_vllm):
    with pytest.raises(MissingDependencyError) as caught:
        vllm.VLLMChat("some/model")
    assert str(caught.value) == "vLLM is not installed. Install it with: pip install 'cortex[vllm]'"
    assert isinstance(caught.value, CortexError)


def test_serves_model_marks_the_same_function():
    async def run(messages: list):
        yield {}

    assert vllm.serves_model("tiny")(run) is run
    assert run.__cortex_model__ == "tiny"


def test_sampling_arguments_map_openai_names():
    arguments = vllm.sampling_arguments(
        temperature=0.5, top_p=0.9, max_tokens=7, stop="END", seed=3, presence_penalty=0.1,
        frequency_penalty=0.2, n=1, extra={"ignore_eos": True},
    )  # fmt: skip
    assert arguments == {
        "n": 1, "temperature": 0.5, "top_p": 0.9, "max_tokens": 7, "stop": ["END"], "seed": 3,
        "presence_penalty": 0.1, "frequency_penalty": 0.2, "ignore_eos": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("n", "max_tokens", "message"),
    [
        (3, 5, "n=3 is not supported: cortex.vllm returns one choice per request. "
               "Send n=1 (or leave it out) and make n requests instead."),
        (1, 0, "max_tokens must be at least 1 (got 0); leave it out for no limit."),
    ],
)  # fmt: skip
def test_sampling_arguments_refuse_what_cannot_be_served(n, max_tokens, message):
    with pytest.raises(ValueError) as caught:
        vllm.sampling_arguments(
            temperature=1.0, top_p=1.0, max_tokens=max_tokens, stop=None, seed=None,
            presence_penalty=0.0, frequency_penalty=0.0, n=n, extra={},
        )  # fmt: skip
    assert str(caught.value) == message


def test_response_format_maps_to_structured_outputs():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert vllm.structured_output_arguments(json_schema) == {"json": schema}
    assert vllm.structured_output_arguments({"type": "json_object"}) == {"json_object": True}
    assert vllm.structured_output_arguments({"type": "text"}) is None
    assert vllm.structured_output_arguments(None) is None


def test_response_format_problems_say_what_to_send():
    with pytest.raises(ValueError) as caught:
        vllm.structured_output_arguments({"type": "xml"})
    assert str(caught.value) == (
        "response_format type 'xml' is not supported; use 'text', 'json_object' or 'json_schema'."
    )
    with pytest.raises(ValueError, match=r'needs \{"json_schema": \{"name": \.\.\., "schema"'):
        vllm.structured_output_arguments({"type": "json_schema", "json_schema": {"name": "x"}})


def test_text_messages_join_text_parts():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "you"}]},
    ]
    assert vllm.text_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, you"},
    ]


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "messages is empty; send at least one {'role': 'user', 'content': '...'}."),
        (["hi"], "messages[0] must be an object with a 'role' and a 'content'; got 'hi'."),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0] has a content part cortex.vllm cannot read: "
            "{'type': 'image_url', 'image_url': {'url': 'x'}}. "
            "Only {'type': 'text', 'text': '...'} parts are supported.",
        ),
    ],
)
def test_text_messages_refuse_what_a_chat_template_cannot_take(messages, message):
    with pytest.raises(ValueError) as caught:
        vllm.text_messages(messages)
    assert str(caught.value) == message


def test_chat_chunks_have_openai_shapes():
    chunks = vllm.Chunks("r1", "tiny", created=100, prompt_tokens=5, completion_tokens=3)
    assert chunks.delta({"content": "hi"}, "stop") == {
        "id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 100, "model": "tiny",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": "stop"}],
    }  # fmt: skip
    assert chunks.usage() == {
        "id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 100, "model": "tiny",
        "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }  # fmt: skip


def test_text_completion_chunks_have_openai_shapes():
    chunks = vllm.Chunks("r2", "tiny", is_chat=False, created=100)
    assert chunks.text("abc") == {
        "id": "cmpl-r2", "object": "text_completion", "created": 100, "model": "tiny",
        "choices": [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": None}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("stream", "options", "expected"),
    [(True, None, False), (True, {"include_usage": True}, True), (False, None, True)],
)
def test_usage_is_sent_when_asked_for_or_not_streaming(stream, options, expected):
    assert vllm.wants_usage(stream, options) is expected


def test_tensor_parallel_size_defaults_to_the_gpu_count_unless_set():
    assert vllm.engine_arguments("m", {"dtype": "auto"}, 2) == {
        "model": "m", "dtype": "auto", "tensor_parallel_size": 2,
    }  # fmt: skip
    assert vllm.engine_arguments("m", {"tensor_parallel_size": 1}, 4)["tensor_parallel_size"] == 1
    assert "tensor_parallel_size" not in vllm.engine_arguments("m", {}, None)


@dataclasses.dataclass
class _Config:
    strict: bool = False
    level: int = 0


@dataclasses.dataclass
class _EngineArgs:
    model: str = ""
    sub_config: _Config = dataclasses.field(default_factory=_Config)
    overrides: dict = dataclasses.field(default_factory=dict)


def test_config_objects_build_dicts_given_for_config_fields():
    arguments = {"model": "m", "sub_config": {"strict": True}, "overrides": {"a": 1}}
    assert vllm.config_objects(_EngineArgs, arguments) == {
        "model": "m", "sub_config": _Config(strict=True), "overrides": {"a": 1},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        ('compute = "AMPERE_A10"\ngpu_count = 2', 2),
        ('compute = "AMPERE_A10"', 1),
        ('compute = "CPU"', None),
    ],
)
def test_app_gpu_count_reads_the_served_apps_cerebrium_toml(monkeypatch, tmp_path, hardware, expected):
    (tmp_path / "cerebrium.toml").write_text(
        f'[cerebrium.deployment]\nname = "x"\n\n[cerebrium.hardware]\n{hardware}\n'
    )
    main = types.ModuleType("main")
    main.__file__ = str(tmp_path / "main.py")
    monkeypatch.setitem(sys.modules, "main", main)
    assert vllm.app_gpu_count() == expected


def test_app_gpu_count_outside_cortex_serve_is_none(monkeypatch):
    monkeypatch.delitem(sys.modules, "main", raising=False)
    assert vllm.app_gpu_count() is None
