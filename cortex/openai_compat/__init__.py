"""OpenAI-compatible routes under every function: chat/completions, completions, embeddings, models."""
