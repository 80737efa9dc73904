"""Argument types shared by the command groups: numbers checked by argparse, so a bad value is a usage error
that names the option, before anything runs."""

from __future__ import annotations

import argparse


def _number(cast, text: str, ok, requirement: str):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 1, "a positive whole number")


def non_negative_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 0, "0 or more")


def non_negative_float(text: str) -> float:
    return _number(float, text, lambda v: v >= 0, "0 or more")


def fraction(text: str) -> float:
    return _number(float, text, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")


def threshold(text: str) -> float:
    return _number(float, text, lambda v: 0.0 < v <= 1.0, "above 0 and at most 1")
