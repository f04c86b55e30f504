"""A term's strength is ``guidance_scale`` (diffusers' guiders' name); the old ``scale`` keyword and
attribute still work for one release, with a FutureWarning, and an old saved config still loads."""

from __future__ import annotations

import json
import warnings

import pytest
from packaging.version import Version

import vpg_pipelines
from vpg_pipelines.guidance.apg import AdaptiveProjectedGuidance
from vpg_pipelines.guidance.base import RENAMED_KEYWORDS_REMOVED_IN, GuidanceTerm
from vpg_pipelines.guidance.cfg import ClassifierFreeGuidance
from vpg_pipelines.guidance.igg import InformationGroundingGuidance
from vpg_pipelines.guidance.prefix import PrefixGuidance
from vpg_pipelines.guidance.ssg import ScaledSpatialGuidance
from vpg_pipelines.guidance.temperature import EntropyAwareTemperature

STRENGTH_TERMS = [
    (ClassifierFreeGuidance, 2.5),
    (AdaptiveProjectedGuidance, 12.0),
    (PrefixGuidance, 3.0),
    (InformationGroundingGuidance, 0.75),
    (ScaledSpatialGuidance, [0.0, 0.2, 0.4]),
]
DEPRECATED = r"`scale` (argument|attribute) of \w+ is deprecated .* use `guidance_scale`"


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("cls,strength", STRENGTH_TERMS, ids=lambda v: getattr(v, "__name__", ""))
def test_the_strength_is_guidance_scale_and_scale_warns(cls, strength):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        new = cls(guidance_scale=strength)
        assert new.guidance_scale == strength and new.config["guidance_scale"] == strength
        assert "scale" not in new.config
    with pytest.warns(FutureWarning, match=DEPRECATED):
        old = cls(scale=strength)
    assert old.guidance_scale == strength
    assert _public(old.config) == _public(new.config)  # the config records the new name only
    with pytest.raises(TypeError, match="pass `guidance_scale` only"):
        cls(scale=strength, guidance_scale=strength)


@pytest.mark.parametrize("cls,strength", STRENGTH_TERMS, ids=lambda v: getattr(v, "__name__", ""))
def test_the_scale_attribute_reads_and_writes_guidance_scale(cls, strength):
    term = cls(guidance_scale=strength)
    with pytest.warns(FutureWarning, match=DEPRECATED):
        assert term.scale == strength
    with pytest.warns(FutureWarning, match=DEPRECATED):
        term.scale = 1.25
    assert term.guidance_scale == 1.25


def test_a_term_without_a_strength_has_no_scale_attribute():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="has no attribute 'scale'"):
            EntropyAwareTemperature().scale  # noqa: B018 - the read is the test


def test_an_old_saved_config_and_an_old_change_still_load(tmp_path):
    """A ``guider_config.json`` written before the rename holds ``scale``; it must not fall back to the
    default strength (diffusers would drop an unknown key with a log line)."""
    old = {"_class_name": "ClassifierFreeGuidance", "scale": 2.5, "schedule": "linear", "layer": 0,
           "start": 0.0, "stop": 1.0, "enabled": True}
    (tmp_path / "guider_config.json").write_text(json.dumps(old))
    for loader in (GuidanceTerm, ClassifierFreeGuidance):
        with pytest.warns(FutureWarning, match=DEPRECATED):
            loaded = loader.from_pretrained(tmp_path)
        assert isinstance(loaded, ClassifierFreeGuidance)
        assert (loaded.guidance_scale, loaded.schedule) == (2.5, "linear")
    resaved = tmp_path / "resaved"
    loaded.save_pretrained(resaved)
    saved = json.loads((resaved / "guider_config.json").read_text())
    assert saved["guidance_scale"] == 2.5 and "scale" not in saved
    with pytest.warns(FutureWarning, match=DEPRECATED):
        changed = loaded.new(scale=4.0)
    assert changed.guidance_scale == 4.0 and changed.config["guidance_scale"] == 4.0


def test_the_old_names_go_before_their_removal_release():
    assert Version(vpg_pipelines.__version__) < Version(RENAMED_KEYWORDS_REMOVED_IN), (
        "remove the `scale` keyword / attribute aliases of the guidance terms (guidance/base.py: "
        "RENAMED_KEYWORDS, accepts_renamed_keywords, GuidanceTerm.scale, from_config) and this test")
