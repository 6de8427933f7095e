"""Datasets: digits, 2-D densities, .npy/.npz files, TFDS (mocked), errors, dequantization."""

from __future__ import annotations

import numpy as np
import pytest

from tfp_nice import data
from tfp_nice.data import DataError, DataSpec


def _rows(a: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in a.reshape(len(a), -1)}


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(len(a), -1)
    return flat[np.lexsort(flat.T[::-1])]


# --- digits ------------------------------------------------------------------------------------
def test_digits_are_8x8x1_with_17_levels_and_a_fixed_70_15_15_split():
    s = data.load("digits")
    assert s.spec == DataSpec("digits", (8, 8, 1), 17, 0.0, 16.0)
    assert (s.train.shape, s.validation.shape, s.test.shape) == (
        (1257, 8, 8, 1), (270, 8, 8, 1), (270, 8, 8, 1))
    assert all(a.dtype == np.float32 for a in (s.train, s.validation, s.test))
    allx = np.concatenate([s.train, s.validation, s.test])
    assert allx.min() == 0 and allx.max() == 16 and np.array_equal(allx, np.round(allx))
    assert s.spec.is_image and s.spec.num_dims == 64

    other = data.load("digits", seed=7, validation_fraction=0.3)  # the split never changes
    for a, b in zip((s.train, s.validation, s.test), (other.train, other.validation, other.test)):
        np.testing.assert_array_equal(a, b)


def test_digit_splits_are_disjoint():
    s = data.load("digits")
    train, val, test = _rows(s.train), _rows(s.validation), _rows(s.test)
    # sklearn's digits contain no duplicate images, so disjoint rows = disjoint examples.
    assert len(train) + len(val) + len(test) == 1797
    assert not (train & val) and not (train & test) and not (val & test)


def test_spec_config_round_trips_and_rejects_bad_values():
    spec = data.load("digits").spec
    assert DataSpec.from_config(spec.to_config()) == spec
    with pytest.raises(DataError, match=r"event_shape.*Received: event_shape=\(\)"):
        DataSpec("x", (), None, 0.0, 1.0)
    with pytest.raises(DataError, match="num_levels=1"):
        DataSpec("x", (2,), 1, 0.0, 1.0)
    with pytest.raises(DataError, match="exactly the keys"):
        DataSpec.from_config({"name": "x"})


# --- 2-D densities -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", data.DENSITIES)
def test_density_shapes_and_reproducibility_by_seed(name):
    s = data.load(name, seed=3, num_samples=400)
    assert (s.train.shape, s.validation.shape, s.test.shape) == ((400, 2), (100, 2), (100, 2))
    assert s.spec.num_levels is None and s.spec.event_shape == (2,) and not s.spec.is_image
    allx = np.concatenate([s.train, s.validation, s.test])
    assert (s.spec.low, s.spec.high) == (float(allx.min()), float(allx.max()))
    again = data.load(name, seed=3, num_samples=400)
    np.testing.assert_array_equal(s.train, again.train)
    np.testing.assert_array_equal(s.test, again.test)
    assert not np.array_equal(s.train, data.load(name, seed=4, num_samples=400).train)
    assert not np.array_equal(s.validation, s.test)  # independent streams


def test_density_geometry():
    rings = data.load("rings", num_samples=2000).train
    radius = np.linalg.norm(rings, axis=1)
    assert np.all(np.min(np.abs(radius[:, None] - [0.75, 1.5, 2.25, 3.0]), axis=1) < 0.5)
    board = data.load("checkerboard", num_samples=2000).train
    cells = (np.floor(board[:, 0] / 2) + np.floor(board[:, 1] / 2)) % 2
    assert np.all(cells == 0) and np.abs(board).max() <= 4
    gauss = data.load("8gaussians", num_samples=2000).train * 1.414
    angles = np.mod(np.arctan2(gauss[:, 1], gauss[:, 0]) / (np.pi / 4) + 0.5, 8).astype(int)
    assert np.bincount(angles, minlength=8).min() > 150  # all eight modes populated


# --- files -------------------------------------------------------------------------------------
def test_npz_uint8_images_round_trip_with_x_train_and_x_test(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    x_test = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=x_train, x_test=x_test)
    s = data.load(str(path), seed=1)
    assert s.spec == DataSpec(str(path), (28, 28, 1), 256, 0.0, 255.0)
    np.testing.assert_array_equal(s.test, x_test)
    assert (len(s.train), len(s.validation)) == (34, 6)
    np.testing.assert_array_equal(_sorted_rows(np.concatenate([s.train, s.validation])),
                                  _sorted_rows(x_train.astype(np.float32)))
    assert not _rows(s.train) & _rows(s.validation)
    again = data.load(path, seed=1)  # PathLike accepted, carving seeded
    np.testing.assert_array_equal(s.validation, again.validation)
    assert not np.array_equal(s.validation, data.load(str(path), seed=2).validation)


def test_npy_hw_images_get_a_channel_and_every_split_is_carved(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    s = data.load(str(tmp_path / "x.npy"))
    assert s.spec.event_shape == (28, 28, 1) and s.spec.num_levels == 256
    assert (len(s.train), len(s.validation), len(s.test)) == (14, 3, 3)
    np.testing.assert_array_equal(
        _sorted_rows(np.concatenate([s.train, s.validation, s.test])),
        _sorted_rows(x[..., None].astype(np.float32)))


def test_float_vectors_are_continuous_and_x_val_is_used(tmp_path):
    rng = np.random.default_rng(0)
    x, x_val = rng.normal(size=(30, 5)), rng.normal(size=(6, 5))
    np.savez(tmp_path / "v.npz", x=x, x_validation=x_val)
    s = data.load(str(tmp_path / "v.npz"))
    assert s.spec.num_levels is None and s.spec.event_shape == (5,)
    np.testing.assert_allclose(s.validation, x_val.astype(np.float32))
    assert (len(s.train), len(s.test)) == (26, 4)  # round(0.15 * 30) = 4
    allx = np.concatenate([s.train, s.validation, s.test])
    assert (s.spec.low, s.spec.high) == (float(allx.min()), float(allx.max()))
    declared = data.load(str(tmp_path / "v.npz"), value_range=(-10, 10))
    assert (declared.spec.low, declared.spec.high) == (-10.0, 10.0)


def test_integer_levels_default_to_max_plus_one_and_can_be_declared(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(60, dtype=np.int32).reshape(20, 3) % 5)
    assert data.load(str(tmp_path / "i.npy")).spec.num_levels == 5
    assert data.load(str(tmp_path / "i.npy"), num_levels=16).spec.high == 15.0
    np.save(tmp_path / "f.npy", (np.arange(60).reshape(20, 3) % 4).astype(np.float64))
    assert data.load(str(tmp_path / "f.npy"), num_levels=4).spec.num_levels == 4


# --- bad input ---------------------------------------------------------------------------------
def _save(path, **arrays):
    np.savez(path, **arrays) if str(path).endswith(".npz") else np.save(path, arrays["x"])
    return str(path)


def test_missing_file_and_unknown_names(tmp_path):
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(DataError, match=r"File not found: '.*nope\.npz'"):
        data.load(missing)
    with pytest.raises(DataError, match=r"Unknown dataset 'mnist'.*'digits'.*'moons'.*tfds:"):
        data.load("mnist")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"x\.csv'.*unsupported.*\.npy or \.npz"):
        data.load(str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="File not found: 'dir/x.h5'"):
        data.load("dir/x.h5")


@pytest.mark.parametrize("name", ["junk.npz", "junk.npy"])
def test_random_bytes_are_reported_as_not_a_numpy_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=rf"{name}' is not a NumPy \.npy/\.npz file"):
        data.load(str(path))


def test_truncated_npz_and_object_arrays_are_reported(tmp_path):
    path = _save(tmp_path / "t.npz", x=np.zeros((10, 3)))
    blob = open(path, "rb").read()
    open(path, "wb").write(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"Cannot read '.*t\.npz'.*corrupt"):
        data.load(path)
    path = str(tmp_path / "o.npy")
    np.save(path, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"o\.npy'.*Object arrays"):
        data.load(path)


def test_wrong_array_names_list_the_names_found(tmp_path):
    path = _save(tmp_path / "n.npz", images=np.zeros((10, 3)), labels=np.zeros(10))
    with pytest.raises(DataError, match=r"expected 'x' or 'x_train'.*found \['images', 'labels'\]"):
        data.load(path)
    path = _save(tmp_path / "b.npz", x=np.zeros((10, 3)), x_train=np.zeros((10, 3)))
    with pytest.raises(DataError, match="both 'x' and 'x_train'"):
        data.load(path)
    path = _save(tmp_path / "s.npz", x_train=np.ones((10, 3)), x_test=np.ones((4, 2)))
    with pytest.raises(DataError, match=r"different example shapes.*x_test.*\[2\]"):
        data.load(path)


def test_nan_and_inf_are_counted(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    x[0, 0], x[3, 1], x[5, 2] = np.nan, np.inf, -np.inf
    with pytest.raises(DataError, match=r"n\.npy' contains 3 NaN/Inf value\(s\) out of 60"):
        data.load(_save(tmp_path / "n.npy", x=x))
    path = _save(tmp_path / "n.npz", x=np.ones((20, 3)), x_test=np.full((4, 3), np.nan))
    with pytest.raises(DataError, match="array 'x_test' contains 12 NaN/Inf"):
        data.load(path)


def test_values_outside_the_declared_range_report_min_and_max(tmp_path):
    big = _save(tmp_path / "big.npy", x=np.arange(60, dtype=np.int16).reshape(20, 3) * 5)
    with pytest.raises(DataError, match=r"\[0, 255\] for num_levels=256.*min 0 and max 295"):
        data.load(big, num_levels=256)
    neg = _save(tmp_path / "neg.npy", x=np.arange(60, dtype=np.int32).reshape(20, 3) - 7)
    with pytest.raises(DataError, match="min -7 and max 52"):
        data.load(neg)
    floats = _save(tmp_path / "f.npy", x=np.linspace(-2, 3, 60).reshape(20, 3))
    with pytest.raises(DataError, match=r"value_range=\[0, 1\].*min -2 and max 3"):
        data.load(floats, value_range=(0, 1))
    with pytest.raises(DataError, match="non-integer values"):
        data.load(floats, num_levels=4)
    with pytest.raises(DataError, match=r"\[0, 9\] for num_levels=10.*max 16"):
        data.load("digits", num_levels=10)
    with pytest.raises(DataError, match=r"value_range=\(1, 0\)"):
        data.load("digits", value_range=(1, 0))


@pytest.mark.parametrize("shape", [(5,), (2, 2, 2, 2, 2)])
def test_wrong_dimensionality_names_the_shape(tmp_path, shape):
    path = _save(tmp_path / "d.npy", x=np.zeros(shape))
    with pytest.raises(DataError, match=rf"ndim 2, 3 or 4.*ndim {len(shape)}"):
        data.load(path)


def test_too_few_examples_to_split(tmp_path):
    path = _save(tmp_path / "few.npy", x=np.random.default_rng(0).normal(size=(2, 3)))
    with pytest.raises(DataError, match=r"few\.npy'.*too few examples.*2 training.*at least 3"):
        data.load(path)


def test_bad_arguments_name_the_argument():
    with pytest.raises(DataError, match="validation_fraction=0.7"):
        data.load("moons", validation_fraction=0.7)
    with pytest.raises(DataError, match="num_samples=0"):
        data.load("moons", num_samples=0)
    with pytest.raises(DataError, match="continuous|num_levels"):
        data.load("moons", num_levels=4)


# --- tf.data pipelines --------------------------------------------------------------------------
def _epoch(ds) -> np.ndarray:
    return np.concatenate([b.numpy() for b in ds])


def test_training_dequantization_is_fresh_each_epoch_and_within_x_to_x_plus_1():
    s = data.load("digits")
    x = s.validation
    ds = data.as_dataset(x, s.spec, batch_size=64, training=True, seed=3)
    assert ds.element_spec.shape.as_list() == [None, 8, 8, 1]
    first, second = _epoch(ds), _epoch(ds)
    assert first.dtype == np.float32 and first.shape == x.shape
    assert not np.array_equal(first, second)
    for epoch in (first, second):
        # Shuffled, so compare as multisets of rows: floor(y) recovers the raw examples.
        np.testing.assert_array_equal(_sorted_rows(np.floor(epoch)), _sorted_rows(x))
        frac = epoch - np.floor(epoch)
        assert frac.min() >= 0 and frac.max() < 1 and frac.std() > 0.2
    assert epoch.max() < s.spec.num_levels
    lens = [len(b) for b in ds]
    assert lens == [64] * 4 + [14]  # no drop_remainder


def test_evaluation_dequantization_is_fixed_and_keeps_order():
    s = data.load("digits")
    ds = data.as_dataset(s.test, s.spec, batch_size=100, training=False, seed=5)
    first, second = _epoch(ds), _epoch(ds)
    np.testing.assert_array_equal(first, second)
    assert np.all(first >= s.test) and np.all(first < s.test + 1)
    other_batching = _epoch(data.as_dataset(s.test, s.spec, batch_size=7, training=False, seed=5))
    np.testing.assert_array_equal(first, other_batching)
    assert not np.array_equal(
        first, _epoch(data.as_dataset(s.test, s.spec, batch_size=100, training=False, seed=6)))


def test_continuous_data_passes_unchanged_and_training_reshuffles():
    s = data.load("moons", num_samples=256)
    evaluation = _epoch(data.as_dataset(s.test, s.spec, 32, training=False))
    np.testing.assert_array_equal(evaluation, s.test)
    ds = data.as_dataset(s.train, s.spec, 256, training=True)
    a, b = _epoch(ds), _epoch(ds)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(_sorted_rows(a), _sorted_rows(s.train))
    with pytest.raises(DataError, match=r"x.shape=\[4, 3\]"):
        data.as_dataset(np.zeros((4, 3)), s.spec, 2, training=False)
    with pytest.raises(DataError, match="batch_size=0"):
        data.as_dataset(s.test, s.spec, 0, training=False)


# --- TFDS (mocked: never downloads) --------------------------------------------------------------
def test_tfds_mnist_through_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        s = data.load("tfds:mnist", seed=0)
    assert s.spec == DataSpec("tfds:mnist", (28, 28, 1), 256, 0.0, 255.0)
    assert (s.train.shape, s.validation.shape, s.test.shape) == (
        (17, 28, 28, 1), (3, 28, 28, 1), (20, 28, 28, 1))
    assert s.train.dtype == np.float32 and s.train.max() <= 255


def test_tfds_failures_are_wrapped(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="Could not load TFDS dataset 'no_such_dataset_xyz'"):
        data.load("tfds:no_such_dataset_xyz")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection: no internet")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(DataError, match=r"'mnist' \(ConnectionError\).*no internet.*offline"):
        data.load("tfds:mnist")
    with pytest.raises(DataError, match="needs a dataset name"):
        data.load("tfds:")


def test_float64_values_beyond_float32_are_reported(tmp_path):
    x = np.ones((20, 3))
    x[2, 2] = 1e300
    with pytest.raises(DataError, match="1 value.*exceed the float32 range"):
        data.load(_save(tmp_path / "huge.npy", x=x))


# --- labels, levels ----------------------------------------------------------------------------
def test_digits_come_with_their_labels_in_the_same_order():
    s = data.load("digits")
    assert s.has_labels and s.num_classes == 10
    from sklearn.datasets import load_digits

    bunch = load_digits()
    lookup = {img.astype(np.uint8).tobytes(): t for img, t in zip(bunch.images, bunch.target)}
    for x, y in ((s.train, s.train_labels), (s.test, s.test_labels)):
        assert y.dtype == np.int64 and len(y) == len(x)
        assert [lookup[img[..., 0].astype(np.uint8).tobytes()] for img in x[:50]] == list(y[:50])


def test_npz_labels_are_carved_with_their_examples(tmp_path):
    x = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1).repeat(2, axis=1)
    y = np.arange(100) % 7
    np.savez(tmp_path / "l.npz", x=x, y=y)
    s = data.load(str(tmp_path / "l.npz"), seed=3)
    assert s.num_classes == 7 and s.spec.event_shape == (2, 1, 1)
    for xs, ys in ((s.train, s.train_labels), (s.validation, s.validation_labels),
                   (s.test, s.test_labels)):
        np.testing.assert_array_equal(xs[:, 0, 0, 0].astype(int) % 7, ys)
    np.savez(tmp_path / "t.npz", x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    s = data.load(str(tmp_path / "t.npz"))
    np.testing.assert_array_equal(s.test_labels, y[80:])


_X = np.random.default_rng(0).random((20, 2))


def test_labels_for_only_some_splits_are_dropped_with_a_warning_and_refused_when_required(
        tmp_path):
    """Unconditional models ignore labels, so a file with y for some splits still loads (with
    a warning naming them); anything that needs labels gets the reason."""
    np.savez(tmp_path / "part.npz", x_train=_X, y_train=np.arange(20) % 3, x_test=_X[:5])
    with pytest.warns(UserWarning, match=r"labels are given for the train, validation "
                      r"split\(s\) but not for test.*Loading without labels"):
        s = data.load(str(tmp_path / "part.npz"))
    assert not s.has_labels and s.num_classes is None
    assert (s.train_labels, s.validation_labels, s.test_labels) == (None, None, None)
    assert len(s.train) == 17 and len(s.test) == 5
    with pytest.raises(DataError, match=r"--conditional needs class labels for every split: "
                       r".*part.npz'?: labels are given for the train, validation split\(s\) "
                       r"but not for test"):
        s.require_labels()


@pytest.mark.parametrize("arrays, message", [
    (dict(x=_X, y=np.full(20, 0.5)), "must be integers"),
    (dict(x=_X, y=-np.ones(20, int)), "class indices >= 0; found -1"),
    (dict(x=_X, y=np.zeros(19, int)), "19 training labels for 20"),
    (dict(x=_X, y=np.zeros((20, 2), int)), "one integer per example"),
])
def test_bad_labels_are_one_line_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        data.load(str(tmp_path / "bad.npz"))


def test_bool_data_has_two_levels_and_huge_integers_are_refused(tmp_path):
    np.save(tmp_path / "b.npy", np.random.default_rng(0).random((40, 4)) > 0.5)
    s = data.load(str(tmp_path / "b.npy"))
    assert s.spec.num_levels == 2 and (s.spec.low, s.spec.high) == (0.0, 1.0)
    np.save(tmp_path / "big.npy", np.arange(40, dtype=np.int64).reshape(20, 2) + 2**24)
    with pytest.raises(DataError, match=r"more than 2\*\*24 levels"):
        data.load(str(tmp_path / "big.npy"))
    with pytest.raises(DataError, match="num_levels=16777217"):
        data.load("digits", num_levels=2**24 + 1)


def test_labelled_pipelines_yield_pairs_in_order():
    s = data.load("digits")
    ds = data.as_dataset(s.test, s.spec, 100, training=False, labels=s.test_labels)
    x, y = next(iter(ds))
    assert x.shape == (100, 8, 8, 1) and y.dtype.name == "int32"
    np.testing.assert_array_equal(y.numpy(), s.test_labels[:100])
    assert np.all(np.floor(x.numpy()) == s.test[:100])
    with pytest.raises(DataError, match="`labels` must be 270 integers"):
        data.as_dataset(s.test, s.spec, 10, training=True, labels=s.test_labels[:5])
