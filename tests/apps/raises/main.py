"""Functions that fail in the ways users' functions fail."""


class Opaque:
    pass


def boom(message: str = "bad input"):
    raise ValueError(message)


async def aboom():
    raise KeyError("missing")


def opaque():
    return {"value": Opaque()}


def user_timeout():
    raise TimeoutError("upstream API timed out")


def not_a_number():
    return {"nan": float("nan"), "inf": float("inf"), "ok": 1.5}


def first_match(items: list[int]):
    return next(i for i in items if i > 10)  # raises StopIteration when nothing matches
