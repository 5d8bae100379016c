import not_a_real_module  # noqa: F401


def predict():
    return 1
