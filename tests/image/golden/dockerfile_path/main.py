def hello(name: str = "world") -> dict:
    return {"greeting": f"hello {name}"}
