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
