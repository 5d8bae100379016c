"""Calls that succeed: plain, async, pydantic models, dataclasses, run_id, **kwargs."""
from dataclasses import dataclass
from os.path import join  # imported: not an endpoint

from pydantic import BaseModel


class Item(BaseModel):  # a class: not an endpoint
    name: str
    price: float
    tags: list[str] = []


@dataclass
class Receipt:
    name: str
    total: float


def predict(prompt: str, n: int = 1):
    return {"echo": prompt * n}


async def apredict(x: int, factor: float = 2.0) -> float:
    return x * factor


def with_run_id(value: str, run_id: str):
    return {"value": value, "run_id": run_id}


def run_id_first(run_id, value: int = 0):
    return [run_id, value]


def buy(item: Item, quantity: int = 1) -> Receipt:
    return Receipt(name=item.name, total=item.price * quantity)


def model_out(name: str) -> Item:
    return Item(name=name, price=1.5)


def created(name: str):
    return {"status_code": 201, "name": name}


def anything(a: int, **extra):
    return {"a": a, "extra": extra}


def no_args():
    return "pong"


def untyped(x, y=3):
    return [x, y]


def _helper():
    return "private"
