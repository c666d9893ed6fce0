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


# A line as decode wrote it before records were typed (an interpolate target; settings shortened): the
# typed writer keeps its keys and order and adds ``file_name`` after the decode's and the walk's keys.
DECODE_LINE = (
    '{"target_id": "a", "target_index": 0, "sample": 0, "seed": 0, "image": "images/a_s00.png", '
    '"final_image": "final/a_s00.png", "baseline_image": "baseline/s00.png", "best_distance": 6.633758544921875, '
    '"final_distance": 6.911670684814453, "baseline_distance": 6.61644983291626, '
    '"relative_distance": 1.00261601197662, "cosine": 0.3032800555229187, "naturalness": 0.9424951487106105, '
    '"off_manifold": false, "best_step": 0, "best_timestep": 999, "stopped_step": 1, "steps": 2, '
    '"evaluations": 2, "skipped_steps": 0, "seconds": 0.5, "batch_seconds": 2.0, "trajectory_image": null, '
    '"target": {"kind": "vector", "source": "test", "index": null, "label": null, "image_path": null}, '
    '"prior": "test:tiny-ddpm", "encoder": "test:tiny-conv", "layer": "embedding", '
    '"settings": {"name": "test", "steps": 2, "clamp": "straight-through", "samples": 1, "seed": 0}, '
    '"encoder_weights": "", "encoder_weights_sha256": "", "path_position": 0.0, "path_kind": "linear", '
    '"path_index": 0}')


def test_typed_writer_keeps_the_decode_key_order():
    r = SampleRecord.from_json(DECODE_LINE)
    assert r.extra == {} and r.naturalness == 0.9424951487106105 and r.off_manifold is False
    assert r.encoder_weights == "" and r.path_kind == "linear"
    fresh = SampleRecord(**{k: v for k, v in json.loads(DECODE_LINE).items()})  # built field by field
    assert fresh.to_json() == DECODE_LINE[:-1] + ', "file_name": "images/a_s00.png"}'


@pytest.mark.parametrize("line", [
    DECODE_LINE,
    DECODE_LINE.replace('"naturalness": 0.9424951487106105', '"naturalness": null')
    .replace('"off_manifold": false', '"off_manifold": null'),  # measured nothing (--no-baseline)
    '{"image": "x.png", "sample": 3, "target_id": "t", "note": {"by": "hand"}}',  # hand-written, own order
    '{"target_id": "t", "sample": 0, "image": "i.png", "file_name": "i.png", "target_image": "targets/t.png"}',
])
def test_rewriting_a_manifest_keeps_every_line_byte_for_byte(tmp_path, line):
    path = tmp_path / "manifest.jsonl"
    path.write_text(line + "\n")
    m = Manifest.read(tmp_path)
    m.write(m.records)
    assert path.read_text() == line + "\n"
    changed = m.records[0].replace(best_distance=1.5)  # a field set since: added after the line's own keys
    assert json.loads(changed.to_json()) == {**json.loads(line), "best_distance": 1.5}


def test_typed_fields_not_extra():
    r = SampleRecord.from_dict({"target_id": "t", "sample": 0, "image": "i.png", "encoder_weights": "/w.pt",
                                "encoder_weights_sha256": "ab", "target_image": "targets/t.png", "new": 1})
    assert (r.encoder_weights, r.encoder_weights_sha256, r.target_image) == ("/w.pt", "ab", "targets/t.png")
    assert r.extra == {"new": 1}
    walked = rec("p", 0).with_keys({"path_position": 0.5, "grid_row": 2, "from_the_future": True})
    assert (walked.path_position, walked.grid_row, walked.extra) == (0.5, 2, {"from_the_future": True})


def test_a_line_cut_by_a_kill_is_dropped_and_repaired(tmp_path):
    m = Manifest(tmp_path)
    m.append([rec("a", 0), rec("a", 1)])
    whole = m.path.read_bytes()
    m.path.write_bytes(whole + rec("a", 2).to_json().encode()[:30])  # no newline: the write was cut
    assert [r.sample for r in Manifest.read(tmp_path)] == [0, 1] and m.path.read_bytes() != whole
    assert [r.sample for r in Manifest.read(tmp_path, repair=True)] == [0, 1] and m.path.read_bytes() == whole
    assert len(Manifest.read(tmp_path / "nowhere", missing_ok=True)) == 0
    with pytest.raises(InputError, match="cannot read"):
        Manifest.read(tmp_path / "nowhere")
