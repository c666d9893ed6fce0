"""The typed manifest: records round-trip, tolerate newer keys, and fail on bad lines with the line number."""

from __future__ import annotations

import json

import pytest

from probe.errors import InputError
from probe.manifest import Manifest, SampleRecord, by_target, write_metadata


def rec(tid: str, s: int, **kw) -> SampleRecord:
    return SampleRecord(target_id=tid, sample=s, image=f"images/{tid}_s{s:02d}.png", **kw)


def test_round_trip_keeps_unknown_keys_and_writes_file_name():
    r = rec("a", 1, best_distance=2.5, scale=0.5, naturalness=0.9, target={"label": "Bag"})
    line = json.loads(r.to_json())
    assert line["file_name"] == "images/a_s01.png" and line["scale"] == 0.5 and line["naturalness"] == 0.9
    assert "path_position" not in line and "off_manifold" not in line  # optional fields only when set
    assert line["baseline_image"] is None  # decode fields always written
    newer = {**line, "from_the_future": [1, 2]}
    back = SampleRecord.from_dict(newer)
    assert back.extra == {"from_the_future": [1, 2]} and back.label == "Bag"
    assert json.loads(back.to_json())["from_the_future"] == [1, 2]
    assert SampleRecord.from_json(r.to_json()) == r


def test_read_reports_the_bad_line(tmp_path):
    m = Manifest(tmp_path)
    m.append([rec("a", 0), rec("a", 1)])
    with open(m.path, "a") as fh:
        fh.write('{"target_id": "b", "sample": 0}\n')
    with pytest.raises(InputError, match=r"manifest.jsonl: line 3 lacks 'image'"):
        Manifest.read(tmp_path)
    m.path.write_text('{"target_id": "a", "sample": "x", "image": "i.png"}\n')
    with pytest.raises(InputError, match=r"line 1: 'sample' is not an integer"):
        Manifest.read(m.path)


def test_grouping_keeps_first_appearance_and_last_repeat(tmp_path):
    m = Manifest(tmp_path)
    m.append([rec("b", 1), rec("b", 0), rec("a", 0), rec("b", 1, best_distance=1.0)])
    groups = Manifest.read(tmp_path).by_target()
    assert list(groups) == ["b", "a"] and [r.sample for r in groups["b"]] == [0, 1]
    assert groups["b"][1].best_distance == 1.0 and by_target(m.records) == groups
    assert len(m.cells()) == 3


def test_metadata_jsonl_follows_imagefolder(tmp_path):
    records = [rec("a", 0, target={"label": 3}), rec("a", 1), rec("a", 1, best_distance=0.5)]
    path = write_metadata(tmp_path, records)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert path == tmp_path / "images" / "metadata.jsonl"
    assert [r["file_name"] for r in rows] == ["a_s00.png", "a_s01.png"]  # relative to images/, one per image
    assert rows[1]["best_distance"] == 0.5 and all(not isinstance(v, dict) for r in rows for v in r.values())
