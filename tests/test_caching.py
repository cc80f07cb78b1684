"""Definition files and encoder keys are read once per version, and re-read when they change."""

from __future__ import annotations

import os

from harness.cohort.spec import _read_yaml
from harness.encode import registry


def test_yaml_is_parsed_once_per_file_version_and_copies_are_independent(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("a: [1, 2]\n")
    first = _read_yaml(path)
    first["a"].append(3)  # a caller changing its copy changes nothing else
    assert _read_yaml(path) == {"a": [1, 2]}
    path.write_text("a: [1, 2, 4]\n")
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    assert _read_yaml(path) == {"a": [1, 2, 4]}


def test_encoder_key_is_built_once_per_name(monkeypatch):
    calls = []
    real = registry.get_encoder

    def counting(name):
        calls.append(name)
        return real(name)

    registry._encoder_key_cached.cache_clear()
    monkeypatch.setattr(registry, "get_encoder", counting)
    keys = {registry.encoder_key_for("test_tiny") for _ in range(3)}
    assert len(keys) == 1 and calls == ["test_tiny"]


def test_every_metric_declares_its_range_and_publication_uses_it():
    import pytest

    from harness.leaderboard.publish import Rejected, metric_range
    from harness.metrics.registry import METRICS, _register

    assert metric_range("kappa_linear") == (-1.0, 1.0) and metric_range("auroc") == (0.0, 1.0)
    for name in METRICS:
        low, high = metric_range(name)
        assert low < high
    with pytest.raises(Rejected, match="not a registered metric"):
        metric_range("made_up")
    with pytest.raises(TypeError, match="bounds"):
        _register("no_range", "binary", True)  # a metric must say what range it has
