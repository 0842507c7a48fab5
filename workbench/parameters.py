"""The committed parameters (parameters.toml): emulation and sampling values, with their sources."""
from __future__ import annotations

import functools
import tomllib
from pathlib import Path

PATH = Path(__file__).with_name("parameters.toml")


@functools.lru_cache(maxsize=1)
def load() -> dict:
    with open(PATH, "rb") as f:
        return tomllib.load(f)


def emulation() -> dict:
    return load()["emulation"]


def lag() -> dict:
    return load()["lag"]


def tracing() -> dict:
    return load()["tracing"]


def capacity() -> dict:
    return load()["capacity"]
