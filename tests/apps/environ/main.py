"""Reports the environment the app was started with."""
import os

SEEN_AT_IMPORT = os.environ.get("IMPORT_TIME_SECRET")


def env(names: list[str]):
    return {name: os.environ.get(name) for name in names}


def at_import():
    return SEEN_AT_IMPORT
