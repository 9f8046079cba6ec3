"""Supervised pipeline commands (added with the supervised pipeline)."""


def register(sub) -> None:
    return None
