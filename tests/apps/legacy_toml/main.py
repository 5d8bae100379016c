def predict(prompt: str):
    return prompt.upper()
