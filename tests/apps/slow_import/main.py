"""Loads like a model: takes a while to import (see /ready)."""
import os
import time

time.sleep(float(os.environ.get("SLOW_IMPORT_SECONDS", "2")))


def predict():
    return "loaded"
