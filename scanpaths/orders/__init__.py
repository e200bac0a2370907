"""Built-in scan orders (one module per family)."""


def builtin_scanpaths() -> list:
    return []
