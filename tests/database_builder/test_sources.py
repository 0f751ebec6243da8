import json

import pytest

from retclip.database_builder import DatasetSource, FolderSource, OpenImagesSource
from retclip.testing.synthetic import (
    TRAIN_CLASSES,
    make_synthetic_panoptic,
    register_synthetic_panoptic,
)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_open_images_subset(tmp_path):
    images = tmp_path / "images"
    for i in ("a1", "b2", "c3"):
        _touch(images / f"{i}.jpg")
    (tmp_path / "classes.csv").write_text(
        "LabelName,DisplayName\n/m/01yrx,Cat\n/m/0cmf2,Airplane\n/m/02crq1,Couch\n"
    )
    (tmp_path / "labels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\n"
        "b2,human,/m/01yrx,1\n"
        "b2,human,/m/0cmf2,0\n"  # a verified negative
        "a1,machine,/m/02crq1,0.9\n"
        "a1,human,/m/0zzzz,1\n"  # unknown MID
        "c3,human,/m/0zzzz,1\n"
        "c3,human,/m/0yyyy,1\n"
        "d4,human,/m/01yrx,1\n"  # no file
    )
    src = OpenImagesSource(str(images), str(tmp_path / "labels.csv"), str(tmp_path / "classes.csv"))
    recs = src.records()
    assert [r.image_id for r in recs] == ["a1", "b2"]
    assert recs[0].labels == ("Couch",) and recs[1].labels == ("Cat",)
    assert src.vocabulary == ["Cat", "Couch"]
    assert src.report["unknown_mids"] == {"/m/0yyyy": 1, "/m/0zzzz": 2}
    assert src.report["missing_files"] == 1
    # Class subset by name or MID, and a count limit.
    sub = OpenImagesSource(
        str(images),
        str(tmp_path / "labels.csv"),
        str(tmp_path / "classes.csv"),
        classes=["/m/01yrx", "couch"],
        max_images=1,
    )
    assert sub.vocabulary == ["Cat", "Couch"] and [r.image_id for r in sub.records()] == ["a1"]
    with pytest.raises(KeyError, match="Dog"):
        OpenImagesSource(
            str(images),
            str(tmp_path / "labels.csv"),
            str(tmp_path / "classes.csv"),
            classes=["Dog"],
        )
    (tmp_path / "bad.csv").write_text("ImageID,Label\n")
    with pytest.raises(KeyError, match="LabelName"):
        OpenImagesSource(str(images), str(tmp_path / "bad.csv"), str(tmp_path / "classes.csv"))


def test_open_images_descriptions_without_header(tmp_path):
    _touch(tmp_path / "im" / "x.jpg")
    (tmp_path / "classes.csv").write_text("/m/01yrx,Cat\n")
    (tmp_path / "labels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\nx,human,/m/01yrx,1\n"
    )
    src = OpenImagesSource(
        str(tmp_path / "im"), str(tmp_path / "labels.csv"), str(tmp_path / "classes.csv")
    )
    assert src.records()[0].labels == ("Cat",)


def test_folder_source_csv_and_json(tmp_path):
    (tmp_path / "labels.csv").write_text("image,labels\nz.jpg,cat;sofa\na.jpg,\n")
    src = FolderSource(str(tmp_path), str(tmp_path / "labels.csv"))
    recs = src.records()
    assert [r.image_id for r in recs] == ["a.jpg", "z.jpg"]
    assert recs[0].labels == () and recs[1].labels == ("cat", "sofa")
    assert src.vocabulary == ["cat", "sofa"]
    (tmp_path / "labels.json").write_text(json.dumps({"q.png": ["lamp", "cat"]}))
    src = FolderSource(str(tmp_path), str(tmp_path / "labels.json"), classes=["cat"])
    assert src.vocabulary == ["cat"] and src.records()[0].labels == ("cat",)
    with pytest.raises(FileNotFoundError):
        FolderSource(str(tmp_path), str(tmp_path / "none.csv"))


def test_dataset_source_labels_from_annotations(tmp_path):
    split = make_synthetic_panoptic(str(tmp_path), "train", TRAIN_CLASSES, num_images=3, seed=5)
    register_synthetic_panoptic("test_dbb_source", split)
    src = DatasetSource("test_dbb_source")
    pan = json.load(open(split.panoptic_json))
    names = {c["id"]: c["name"] for c in TRAIN_CLASSES}
    recs = src.records()
    assert len(recs) == 3 and src.vocabulary == [c["name"] for c in TRAIN_CLASSES]
    for rec, ann in zip(recs, sorted(pan["annotations"], key=lambda a: str(a["image_id"]))):
        assert set(rec.labels) == {names[s["category_id"]] for s in ann["segments_info"]}
        assert rec.dataset_dict["pan_seg_file_name"].endswith(ann["file_name"])
    with pytest.raises(KeyError, match="not registered"):
        DatasetSource("no_such_dataset")


@pytest.mark.parametrize(
    "labels_name, content, where",
    [
        ("labels.csv", "image,labels\nok.jpg,cat\n../x.jpg,cat\n", "labels.csv line 3"),
        ("labels.csv", "image,labels\n/etc/x.jpg,cat\n", "labels.csv line 2"),
        (
            "labels.json",
            '{"ok.jpg": ["cat"], "a/../../x.jpg": ["dog"]}',
            "labels.json key 'a/../../x.jpg'",
        ),
    ],
)
def test_folder_source_paths_stay_inside_the_image_dir(tmp_path, labels_name, content, where):
    _touch(tmp_path / "images" / "ok.jpg")
    _touch(tmp_path / "x.jpg")  # exists, but outside the image folder
    (tmp_path / labels_name).write_text(content)
    with pytest.raises(ValueError, match="outside DATABASE_BUILD.SOURCE.IMAGE_DIR") as err:
        FolderSource(str(tmp_path / "images"), str(tmp_path / labels_name))
    assert where in str(err.value)
    # Names that only look odd but stay inside are fine.
    (tmp_path / "inside.csv").write_text("image,labels\nsub/../ok.jpg,cat\n")
    assert len(FolderSource(str(tmp_path / "images"), str(tmp_path / "inside.csv")).records()) == 1


def test_open_images_ids_stay_inside_the_image_dir(tmp_path):
    _touch(tmp_path / "images" / "a1.jpg")
    _touch(tmp_path / "x.jpg")
    (tmp_path / "classes.csv").write_text("LabelName,DisplayName\n/m/01yrx,Cat\n")
    (tmp_path / "labels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\na1,human,/m/01yrx,1\n../x,human,/m/01yrx,1\n"
    )
    with pytest.raises(ValueError, match=r"labels.csv line 3: image '../x.jpg' is outside"):
        OpenImagesSource(
            str(tmp_path / "images"), str(tmp_path / "labels.csv"), str(tmp_path / "classes.csv")
        )
