"""The model manifest: validation errors name the field at fault."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference.errors import ManifestError
from inference.manifest import Manifest
from tests.manifest_fixtures import manifest_dict


def test_valid_manifest_round_trips(tmp_path: Path) -> None:
    manifest = Manifest.from_dict(manifest_dict(with_lung=True))
    assert manifest.class_keys == ("covid19", "cap", "no_pneumonia")
    assert manifest.output("lung_probability") is not None
    manifest.save(tmp_path)
    again = Manifest.load(tmp_path)
    assert again == manifest


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.pop("model_name"), "model_name"),
        (lambda d: d.__setitem__("format", "other"), "format"),
        (lambda d: d.__setitem__("format_version", 2), "format_version"),
        (lambda d: d["input"].__setitem__("layout", "NDHWC"), "input.layout"),
        (lambda d: d["input"].__setitem__("dtype", "int8"), "input.dtype"),
        (lambda d: d["grid"].__setitem__("shape", [8, 8, 8]), "grid.shape"),
        (lambda d: d["grid"].__setitem__("spacing_mm", [1, 0, 1]), "grid.spacing_mm"),
        (lambda d: d["grid"].__setitem__("placement", "anywhere"), "grid.placement"),
        (lambda d: d["intensity"].__setitem__("clip_hu", [100, -100]), "intensity.clip_hu"),
        (lambda d: d["intensity"].__setitem__("scale_hu", 0), "intensity.scale_hu"),
        (lambda d: d["outputs"].pop(1), "outputs"),
        (lambda d: d["outputs"][1].__setitem__("shape", [1, 4]), "outputs[1].shape"),
        (lambda d: d["outputs"][0].__setitem__("role", "mask"), "outputs[0].role"),
        (lambda d: d["classes"][2].pop("code"), "classes[2].code"),
        (lambda d: d["segments"][0].__setitem__("source", "lung_probability"),
         "segments[0].source"),
        (lambda d: d.__setitem__("lesion_threshold", 1.5), "lesion_threshold"),
        (lambda d: d.pop("intended_use"), "intended_use"),
    ],
)
def test_invalid_field_is_named(mutate: object, field: str) -> None:
    data = manifest_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert info.value.field == field
    assert f'"{field}"' in str(info.value)


def test_load_reports_missing_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ManifestError):
        Manifest.load(tmp_path)


def test_code_lengths_follow_their_vr() -> None:
    data = manifest_dict()
    data["classes"][0]["code"]["meaning"] = "x" * 65
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert info.value.field == "classes[0].code.meaning"
    data = manifest_dict()
    data["segments"][1]["type"]["value"] = "1" * 17
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert info.value.field == "segments[1].type.value"
