"""The lab's one error type, at the bottom of the package so that every module of it may raise it."""

from __future__ import annotations


class LabError(RuntimeError):
    """Building or tearing down a lab failed; the message names the object and the fix."""


__all__ = ["LabError"]
