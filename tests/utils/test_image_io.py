"""The one image reader: 16-bit, EXIF, palette and alpha modes against independent readers
(OpenCV for raw 16-bit samples, numpy rotations and palette look-ups, detectron2's read_image for
EXIF), and errors that name the file."""
import cv2
import numpy as np
import pytest
from PIL import Image

from retclip.utils.cli import UserError
from retclip.utils.image_io import ImageReadError, check_resized_shape, read_image


def test_16bit_grayscale_is_scaled_by_its_range_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 65536, size=(7, 9), dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(raw).save(path)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # OpenCV's own 16-bit PNG decoder
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, raw)
    expected = np.floor(decoded.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # 65535 / 255 = 257
    got = read_image(path)
    assert got.shape == (7, 9, 3) and got.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(got[..., c], expected)
    assert (got < 255).mean() > 0.9  # Pillow's convert("RGB") made ~all of it 255
    assert np.array_equal(read_image(path, format="L"), expected)


def test_32bit_integer_outside_16_bits_is_stretched_from_its_own_range(tmp_path):
    raw = np.array([[-1000, 0], [70000, 200000]], dtype=np.int32)
    path = tmp_path / "i32.tif"
    Image.fromarray(raw, mode="I").save(path)
    lo, hi = raw.min(), raw.max()
    expected = np.floor((raw - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(read_image(path, format="L"), expected)


@pytest.mark.parametrize("orientation,turns", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied_like_detectron2(tmp_path, orientation, turns):
    from detectron2.data.detection_utils import read_image as d2_read_image

    raw = np.zeros((6, 10, 3), np.uint8)
    raw[:2, :3] = (255, 0, 0)  # a red corner, top-left as stored
    raw[4:, 7:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(raw).save(path, exif=exif)
    got = read_image(path)
    assert np.array_equal(got, np.rot90(raw, k=turns))  # np.rot90: counter-clockwise quarter turns
    assert np.array_equal(got, d2_read_image(str(path), format="RGB"))
    assert np.array_equal(read_image(path, format="BGR"), got[:, :, ::-1])


def test_palette_la_and_rgba_modes(tmp_path):
    palette = np.array([[0, 0, 0], [200, 10, 30], [5, 250, 90]], np.uint8)
    index = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.flatten().tolist())
    img.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), palette[index])

    gray = np.array([[10, 20], [30, 40]], np.uint8)
    alpha = np.array([[0, 255], [128, 7]], np.uint8)
    Image.fromarray(np.stack([gray, alpha], -1), mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png"), np.repeat(gray[..., None], 3, 2))

    rgba = np.dstack([np.full((2, 2), 9, np.uint8), gray, gray[::-1], alpha])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])

    cmyk = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # no black ink, full magenta + yellow: red
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    got = read_image(tmp_path / "cmyk.jpg")
    assert got.shape == (3, 4, 3) and got[..., 0].min() > 200 and got[..., 1:].max() < 60


def _jpeg(path, size=(64, 48)):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.mark.parametrize("kind", ["truncated", "empty", "not_an_image", "missing", "one_pixel_high"])
def test_bad_images_raise_an_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "truncated":
        _jpeg(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_an_image":
        path.write_text("name,labels\n")
    elif kind == "one_pixel_high":
        _jpeg(path, size=(40, 1))
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


def test_extreme_aspect_ratio_is_refused_by_name():
    check_resized_shape("ok.png", (8, 40), (96, 480))
    with pytest.raises(ImageReadError, match=r"wide\.png is 4000x8 .* 160x0"):
        check_resized_shape("wide.png", (8, 4000), (0, 160))
