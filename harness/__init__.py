"""harness: an evaluation harness for EHR + chest X-ray fusion models."""

from __future__ import annotations

__version__ = "0.1.0"
