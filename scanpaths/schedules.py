"""Schedules (stub; issue 2)."""


class Schedule:
    name = "?"


def builtin_schedules() -> list:
    return []
