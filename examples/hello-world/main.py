"""The app `cerebrium init` writes, unchanged: every public function is an endpoint."""
from pydantic import BaseModel


class Greeting(BaseModel):
    name: str
    language: str = "en"


def run(prompt: str, run_id):
    """Echo the prompt back, as Cerebrium's starter app does."""
    print(f"Received the prompt {prompt} in run {run_id}")
    return {"my_result": prompt}


def greet(person: Greeting) -> dict:
    """Validated from JSON into a pydantic model: {"person": {"name": "Ada"}}."""
    hello = {"en": "Hello", "fr": "Bonjour", "de": "Hallo"}.get(person.language, "Hello")
    return {"greeting": f"{hello}, {person.name}!"}
