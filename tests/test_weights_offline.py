"""Pretrained hub weights that cannot be had offline fail at once with the message (no minute of
download retries). The hub is never contacted: it is set offline or its probe is replaced."""

from __future__ import annotations

import pytest
import timm

from tagseg.errors import TagsegError
from tagseg.models import factory, weights

NAME = "resnet18.a1_in1k"  # declares both an hf-hub id and a URL in timm


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty cache, and a timm that fails the test if asked to download anything."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "torch"))
    real = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        assert not pretrained, "timm was asked to download weights"
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    probes = []
    monkeypatch.setattr(weights, "host_reachable", lambda host, *a, **k: probes.append(host) or False)
    return probes


def test_unreachable_hub_fails_fast_with_the_message(no_download):
    with pytest.raises(TagsegError) as exc:
        factory.build_timm_model(NAME, pretrained=True, num_classes=0)
    text = str(exc.value)
    assert text.startswith(f"could not fetch timm's pretrained weights for {NAME!r}")
    assert "model.weights=PATH" in text and "model.pretrained=false" in text
    assert "cannot be reached" in text
    assert no_download == ["huggingface.co", "github.com"]  # one attempt per host, no retries


def test_hf_hub_offline_needs_no_probe_for_hub_only_weights(no_download, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr(weights, "pretrained_locations", lambda name: [("hf-hub", "timm/x")])
    with pytest.raises(TagsegError, match="HF_HUB_OFFLINE is set and they are not in the local cache"):
        factory.build_timm_model(NAME, pretrained=True, num_classes=0)
    assert no_download == []


def test_hf_hub_offline_still_tries_a_plain_url_once(no_download, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(TagsegError, match="github.com cannot be reached"):
        factory.build_timm_model(NAME, pretrained=True, num_classes=0)
    assert no_download == ["github.com"]


def test_cached_weights_skip_the_probe(no_download, monkeypatch, tmp_path):
    url = dict(weights.pretrained_locations(NAME))["url"]
    cached = tmp_path / "torch" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    weights.check_hub_weights_reachable(NAME)  # no error, nothing probed
    assert no_download == []


def test_reachable_hub_goes_on_to_timm(monkeypatch, no_download):
    monkeypatch.setattr(weights, "host_reachable", lambda host, *a, **k: True)
    weights.check_hub_weights_reachable(NAME)


def test_untagged_or_unknown_weights_are_left_to_timm():
    assert weights.pretrained_locations("no_such_model.x") == []
    weights.check_hub_weights_reachable("no_such_model.x")


def test_a_local_file_in_the_pretrained_overlay_needs_no_hub(no_download, monkeypatch):
    called = []
    monkeypatch.setattr(factory, "check_hub_weights_reachable", lambda name: called.append(name))
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: ("built", pretrained))
    assert factory.build_timm_model(NAME, pretrained=True, pretrained_cfg_overlay={"file": "w.pth"}) == \
        ("built", True)
    assert called == []
    factory.build_timm_model(NAME, pretrained=True)
    assert called == [NAME]
