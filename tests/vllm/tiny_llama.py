"""Build a tiny random Llama (tokenizer, config, bf16 safetensors, chat template) with no downloads.

Its text is gibberish but deterministic with a seed or temperature 0; it rarely emits EOS, so
callers set max_tokens. Run as a script to build one: `python -m tests.vllm.tiny_llama DIR`.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
VOCAB_SIZE = 4096
TRAINING_FILES = 200  # of the standard library's .py files: enough text for a 4096-token vocabulary


def build_tiny_llama(target: Path) -> Path:
    """Write a loadable Llama model folder to `target` and return it."""
    target.mkdir(parents=True, exist_ok=True)
    _build_tokenizer(target)
    _build_model(target)
    return target


def _training_files() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [str(path) for path in sorted(stdlib.glob("*.py"))[:TRAINING_FILES]]


def _build_tokenizer(target: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train(_training_files(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    config_path.write_text(json.dumps(config, indent=2))


def _build_model(target: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {token: SPECIAL_TOKENS.index(token) for token in SPECIAL_TOKENS}  # trained first, in order
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["</s>"], ids["<|end|>"]],
        pad_token_id=ids["<pad>"],
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    GenerationConfig(
        bos_token_id=ids["<s>"], eos_token_id=[ids["</s>"], ids["<|end|>"]], pad_token_id=ids["<pad>"]
    ).save_pretrained(target)


if __name__ == "__main__":
    print(build_tiny_llama(Path(sys.argv[1])))
