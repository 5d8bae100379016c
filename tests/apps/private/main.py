def whoami(name: str) -> dict:
    return {"hello": name}
