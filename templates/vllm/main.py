"""An LLM chat app on vLLM: OpenAI chat fields in, chat.completion.chunk dicts out.

POST .../run with {"messages": [...]} and `Accept: text/event-stream` streams the chunks as SSE;
without that header you get them as a list. Cortex's OpenAI routes (.../run/chat/completions)
serve the same function to the official `openai` client.

Environment:
  LLM_MODEL        a hub name or a local model folder (default Qwen/Qwen2.5-0.5B-Instruct)
  LLM_SERVED_NAME  the name clients use and GET .../models lists (default: LLM_MODEL)
  LLM_ENGINE_ARGS  JSON object of extra vLLM engine args, e.g. '{"enforce_eager": true}'
"""

import json
import os

from cortex.vllm import VLLMChat, serves_model

ENGINE_ARGS = {"dtype": "auto", "max_model_len": 4096, **json.loads(os.environ.get("LLM_ENGINE_ARGS", "{}"))}

# Built once, when main.py is imported: the engine loads the model before the app reports ready.
llm = VLLMChat(
    os.environ.get("LLM_MODEL", "Qwen/Qwen2.5-0.5B-Instruct"),
    served_model_name=os.environ.get("LLM_SERVED_NAME") or None,
    **ENGINE_ARGS,
)


@serves_model(llm.model_name)
async def run(
    messages: list,
    model: str = "",  # sent by OpenAI clients; this app serves one model
    run_id: str = "",
    stream: bool = True,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_tokens: int = 256,
    stop: str | list[str] | None = None,
    seed: int | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    n: int = 1,
    stream_options: dict | None = None,
    response_format: dict | None = None,
    ignore_eos: bool = False,
):
    """Chat with the model: OpenAI chat.completion.chunk dicts, usage last when asked for."""
    async for chunk in llm.chat(
        messages,
        run_id=run_id,
        stream=stream,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=stop,
        seed=seed,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        n=n,
        stream_options=stream_options,
        response_format=response_format,
        ignore_eos=ignore_eos,
    ):
        yield chunk
