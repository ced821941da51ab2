"""Dense CRF: lattice against a plain reference, mean field against pydensecrf2, bad input."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from tagseg.errors import ConfigError, TagsegError
from tagseg.inference.crf import CRF_PRESETS, CRFParams, PermutohedralLattice, dense_crf, get_preset
from tagseg.inference.crf.torch_backend import clear_lattice_cache, crf_torch, pixel_features

torch.set_num_threads(1)


def _needs_pydensecrf():
    return pytest.importorskip("pydensecrf.densecrf")


def _random_case(h: int, w: int, k: int, seed: int, lo: int = 0, hi: int = 256):
    rng = np.random.default_rng(seed)
    image = rng.integers(lo, hi, (h, w, 3), dtype=np.uint8)
    probs = rng.random((k, h, w)).astype(np.float32)
    probs /= probs.sum(0)
    return image, probs


# ---------------------------------------------------------------- plain reference lattice


def _plain_lattice_filter(features: np.ndarray, values: np.ndarray, pad_multiple: int = 4) -> np.ndarray:
    """Point-by-point permutohedral filter (Adams et al. 2010) in float32, written as plainly
    as possible with a dict as hash table; includes the zero-feature padding points."""
    f32 = np.float32
    n, d = features.shape
    inv_std = f32(math.sqrt(2.0 / 3.0) * (d + 1))
    scale = [f32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
    table: dict[tuple[int, ...], int] = {}
    vertices = np.zeros((n, d + 1), dtype=np.int64)
    weights = np.zeros((n, d + 1), dtype=np.float32)
    padded = n + (-n) % pad_multiple
    for p in range(padded):
        f = features[p] if p < n else np.zeros(d, np.float32)
        el = [f32(0)] * (d + 1)
        acc = f32(0)
        for j in range(d, 0, -1):
            cf = f32(f[j - 1] * scale[j - 1])
            el[j] = f32(acc - f32(j) * cf)
            acc = f32(acc + cf)
        el[0] = acc
        rem0 = [f32(np.rint(f32(el[i] * f32(1.0 / (d + 1)))) * (d + 1)) for i in range(d + 1)]
        total = int(sum(np.rint(r / (d + 1)) for r in rem0))
        rank = [0] * (d + 1)
        for i in range(d):
            for j in range(i + 1, d + 1):
                if f32(el[i] - rem0[i]) < f32(el[j] - rem0[j]):
                    rank[i] += 1
                else:
                    rank[j] += 1
        for i in range(d + 1):
            rank[i] += total
            if rank[i] < 0:
                rank[i] += d + 1
                rem0[i] += d + 1
            elif rank[i] > d:
                rank[i] -= d + 1
                rem0[i] -= d + 1
        bary = [f32(0)] * (d + 2)
        for i in range(d + 1):
            v = f32(f32(el[i] - rem0[i]) * f32(1.0 / (d + 1)))
            bary[d - rank[i]] = f32(bary[d - rank[i]] + v)
            bary[d - rank[i] + 1] = f32(bary[d - rank[i] + 1] - v)
        bary[0] = f32(bary[0] + f32(1 + bary[d + 1]))
        for r in range(d + 1):
            key = tuple(int(rem0[i]) + (r if rank[i] <= d - r else r - (d + 1)) for i in range(d))
            idx = table.setdefault(key, len(table))
            if p < n:
                vertices[p, r] = idx
                weights[p, r] = bary[r]
    keys = list(table)
    m = len(keys)
    lattice = np.zeros((m + 1, values.shape[1]), dtype=np.float64)  # slot m: missing neighbour
    for p in range(n):
        for r in range(d + 1):
            lattice[vertices[p, r]] += weights[p, r] * values[p]
    for j in range(d + 1):
        new = lattice.copy()
        for idx, key in enumerate(keys):
            n1 = [k - 1 for k in key]
            n2 = [k + 1 for k in key]
            if j < d:
                n1[j] = key[j] + d
                n2[j] = key[j] - d
            a = lattice[table.get(tuple(n1), m)]
            b = lattice[table.get(tuple(n2), m)]
            new[idx] = lattice[idx] + 0.5 * (a + b)
        lattice = new
    alpha = 1.0 / (1.0 + 2.0 ** (-d))
    out = np.zeros((n, values.shape[1]))
    for p in range(n):
        for r in range(d + 1):
            out[p] += weights[p, r] * lattice[vertices[p, r]] * alpha
    return out


@pytest.mark.parametrize("n, d, scale", [(37, 2, 1.0), (40, 3, 0.7), (53, 5, 0.5), (16, 5, 3.0)])
def test_lattice_matches_plain_reference(n, d, scale):
    gen = torch.Generator().manual_seed(n * d)
    feats = torch.rand(n, d, generator=gen) * 4 * scale
    values = torch.rand(n, 3, generator=gen)
    ours = PermutohedralLattice(feats).filter(values).numpy()
    ref = _plain_lattice_filter(feats.numpy(), values.numpy().astype(np.float64))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_lattice_padding_points_change_the_blur():
    # zero-feature padding vertices (N % 4 != 0) must be part of the lattice, as in the reference
    gen = torch.Generator().manual_seed(3)
    feats = torch.rand(13, 2, generator=gen) * 2 + 0.6  # near, but not at, the origin
    values = torch.rand(13, 1, generator=gen)
    padded = PermutohedralLattice(feats, pad_multiple=4).filter(values).numpy()
    plain = _plain_lattice_filter(feats.numpy(), values.numpy().astype(np.float64), pad_multiple=4)
    unpadded = PermutohedralLattice(feats, pad_multiple=1).filter(values).numpy()
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-6)
    assert np.abs(padded - unpadded).max() > 1e-4


@pytest.mark.parametrize("d, min_corr", [(2, 0.995), (5, 0.95)])
def test_lattice_approximates_gaussian(d, min_corr):
    gen = torch.Generator().manual_seed(d)
    feats = torch.rand(1500, d, generator=gen) * 6
    values = torch.rand(1500, 1, generator=gen)
    out = PermutohedralLattice(feats).filter(values)[:, 0]
    exact = (torch.exp(-torch.cdist(feats, feats) ** 2 / 2) @ values)[:, 0]
    assert np.corrcoef(out.numpy(), exact.numpy())[0, 1] > min_corr


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 9])
def test_packed_channel_filter_equals_one_channel_at_a_time(channels):
    gen = torch.Generator().manual_seed(channels)
    image = torch.randint(0, 256, (23, 29, 3), generator=gen, dtype=torch.uint8)
    lattice = PermutohedralLattice(pixel_features(image, 5.0, 10.0))
    values = torch.rand(23 * 29, channels, generator=gen)
    together = lattice.filter(values)
    apart = torch.cat([lattice.filter(values[:, c : c + 1]) for c in range(channels)], 1)
    torch.testing.assert_close(together, apart, rtol=1e-6, atol=1e-6)


def test_lattice_rejects_bad_features():
    with pytest.raises(TagsegError, match="NaN or inf"):
        PermutohedralLattice(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TagsegError, match="shape"):
        PermutohedralLattice(torch.zeros(0, 2))


# ---------------------------------------------------------------- mean field


def _plain_mean_field(image: np.ndarray, probs: np.ndarray, params: CRFParams, clip: float = 1e-5) -> np.ndarray:
    """Mean field that filters every class (no last-class shortcut), in float64 outside the lattice."""
    k, h, w = probs.shape
    img = torch.from_numpy(image)
    unary = -np.log(np.clip(probs.reshape(k, -1), clip, None)).astype(np.float64)
    terms = []
    for feats, weight in (
        (pixel_features(img, params.gauss_sxy, None), params.gauss_compat),
        (pixel_features(img, params.bilateral_sxy, params.bilateral_srgb), params.bilateral_compat),
    ):
        lat = PermutohedralLattice(feats)
        norm = 1.0 / np.sqrt(lat.filter(torch.ones(h * w, 1)).numpy()[:, 0] + 1e-20)
        terms.append((lat, norm, weight))

    def softmax(x):
        e = np.exp(x - x.max(0))
        return e / e.sum(0)

    q = softmax(-unary)
    for _ in range(params.iterations):
        logits = -unary.copy()
        for lat, norm, weight in terms:
            filtered = lat.filter(torch.from_numpy((q * norm).T.astype(np.float32))).numpy().T
            logits += weight * norm * filtered
        q = softmax(logits)
    return q.reshape(k, h, w)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_torch_mean_field_matches_plain_mean_field(k):
    image, probs = _random_case(18, 21, k, seed=k)
    params = CRF_PRESETS["patch"]
    ours = crf_torch(torch.from_numpy(image), torch.from_numpy(probs), params).numpy()
    ref = _plain_mean_field(image, probs, params)
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("preset", sorted(CRF_PRESETS))
@pytest.mark.parametrize("h, w, k", [(7, 9, 2), (20, 30, 3), (33, 41, 5)])
def test_torch_backend_matches_pydensecrf(preset, h, w, k):
    _needs_pydensecrf()
    image, probs = _random_case(h, w, k, seed=h * w + k)
    params = CRF_PRESETS[preset]
    ours = dense_crf(image, probs, params, backend="torch")
    ref = dense_crf(image, probs, params, backend="pydensecrf")
    np.testing.assert_allclose(ours, ref, atol=5e-4)
    assert (ours.argmax(0) == ref.argmax(0)).all()


@pytest.mark.parametrize(
    "params",
    [
        CRFParams(1, 0, 5, 120, 1, 1),  # bilateral only: the padding vertices matter here
        CRFParams(1, 0, 50, 250, 1, 1),
        CRFParams(2, 1, 5, 20, 0, 1),  # Gaussian only
        CRFParams(3, 3, 80, 13, 10, 0),  # zero iterations: softmax of the clipped unary
    ],
)
def test_conventions_match_pydensecrf_on_single_kernels(params):
    # one iteration isolates one filter pass: normalisation, Potts sign, self term, padding
    _needs_pydensecrf()
    image, probs = _random_case(7, 9, 3, seed=5, lo=100, hi=150)  # N = 63, not a multiple of 4
    ours = dense_crf(image, probs, params, backend="torch")
    ref = dense_crf(image, probs, params, backend="pydensecrf")
    np.testing.assert_allclose(np.log(ours), np.log(ref), atol=1e-5)


def test_gaussian_lattice_cache_gives_identical_results():
    image, probs = _random_case(16, 12, 3, seed=11)
    params = CRF_PRESETS["cam"]
    clear_lattice_cache()
    cold = dense_crf(image, probs, params)
    warm = dense_crf(image, probs, params)
    np.testing.assert_array_equal(cold, warm)


# ---------------------------------------------------------------- dispatcher behaviour


def test_presets_are_the_method_parameter_sets():
    assert CRF_PRESETS["patch"] == CRFParams(1, 3, 67, 3, 4, 10)
    assert CRF_PRESETS["cam"] == CRFParams(3, 3, 80, 13, 10, 10)
    assert CRF_PRESETS["segmentation"] == CRFParams(3, 3, 32, 13, 10, 1)
    assert get_preset("cam") is CRF_PRESETS["cam"]
    with pytest.raises(ConfigError, match="unknown CRF preset"):
        get_preset("nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gauss_sxy=0), "gauss_sxy"),
        (dict(bilateral_srgb=-1), "bilateral_srgb"),
        (dict(bilateral_compat=float("nan")), "bilateral_compat"),
        (dict(iterations=-1), "iterations"),
        (dict(iterations=2.5), "iterations"),
    ],
)
def test_params_validation(kwargs, match):
    base = dict(gauss_sxy=1, gauss_compat=3, bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4, iterations=10)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        CRFParams(**base)


def test_present_only_keeps_absent_classes_at_zero_and_equals_the_subset_run():
    image, sub = _random_case(15, 17, 3, seed=2)
    probs = np.zeros((6, 15, 17), np.float32)
    probs[[0, 2, 5]] = sub
    params = CRF_PRESETS["patch"]
    full = dense_crf(image, probs, params)
    assert full.shape == (6, 15, 17) and full.dtype == np.float32
    assert (full[[1, 3, 4]] == 0).all()
    np.testing.assert_allclose(full[[0, 2, 5]], dense_crf(image, sub, params), atol=1e-6)
    np.testing.assert_allclose(full.sum(0), 1.0, atol=1e-5)
    all_classes = dense_crf(image, probs, params, present_only=False)
    assert (all_classes[[1, 3, 4]] > 0).all()  # clipped unary, but still in the CRF
    explicit = dense_crf(image, probs, params, classes=[0, 2, 5])
    np.testing.assert_allclose(explicit, full, atol=1e-6)


def test_single_selected_class_is_certain():
    image, _ = _random_case(5, 6, 2, seed=0)
    probs = np.zeros((3, 5, 6), np.float32)
    probs[1] = 1
    out = dense_crf(image, probs, CRF_PRESETS["cam"])
    assert (out[1] == 1).all() and (out[[0, 2]] == 0).all()


def test_tensor_in_tensor_out():
    image, probs = _random_case(9, 8, 3, seed=4)
    out = dense_crf(torch.from_numpy(image), torch.from_numpy(probs).double(), CRF_PRESETS["segmentation"])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 9, 8)
    np.testing.assert_allclose(out.numpy(), dense_crf(image, probs, CRF_PRESETS["segmentation"]), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_matches_cpu():
    image, probs = _random_case(40, 50, 4, seed=8)
    cpu = dense_crf(image, probs, CRF_PRESETS["patch"])
    gpu = dense_crf(image, probs, CRF_PRESETS["patch"], device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


def _bad_inputs():
    image, probs = _random_case(6, 7, 3, seed=1)
    not_normalised = probs.copy()
    not_normalised[:, 2, 3] *= 1.01
    with_nan = probs.copy()
    with_nan[1, 0, 0] = np.nan
    with_inf = probs.copy()
    with_inf[0, 5, 6] = np.inf
    negative = probs.copy()
    negative[0, 1, 1] = -0.2
    negative[1, 1, 1] += 0.2
    return [
        (image, not_normalised, "sum to 1.*row 2, col 3"),
        (image, with_nan, "NaN or inf"),
        (image, with_inf, "NaN or inf"),
        (image, negative, "negative"),
        (image, probs[:, :5], "does not match image size"),
        (image, probs[0], r"shape \(K, H, W\)"),
        (image, (probs * 1000).astype(np.int64), "floating point"),
        (image.astype(np.float32), probs, "uint8"),
        (image[..., :2], probs, r"\(H, W, 3\)"),
        (np.concatenate([image, image[..., :1]], 2), probs, r"\(H, W, 3\)"),
        (image.tolist(), probs, "numpy array or torch tensor"),
    ]


@pytest.mark.parametrize("image, probs, match", _bad_inputs())
def test_bad_input_raises_clear_error(image, probs, match):
    with pytest.raises(TagsegError, match=match):
        dense_crf(image, probs, CRF_PRESETS["patch"])


def test_bad_arguments():
    image, probs = _random_case(6, 7, 3, seed=1)
    with pytest.raises(ConfigError, match="unknown CRF backend"):
        dense_crf(image, probs, CRF_PRESETS["patch"], backend="cuda-magic")
    with pytest.raises(ConfigError, match="CRFParams"):
        dense_crf(image, probs, (1, 3, 67, 3, 4, 10))
    with pytest.raises(TagsegError, match="out of range"):
        dense_crf(image, probs, CRF_PRESETS["patch"], classes=[0, 3])
    with pytest.raises(TagsegError, match="empty"):
        dense_crf(image, probs, CRF_PRESETS["patch"], classes=[])
    with pytest.raises(ConfigError, match="CPU only"):
        dense_crf(image, probs, CRF_PRESETS["patch"], backend="pydensecrf", device="cuda")


def test_missing_pydensecrf_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, probs = _random_case(6, 7, 3, seed=1)
    with pytest.raises(TagsegError, match=r'pip install "tagseg\[crf\]"'):
        dense_crf(image, probs, CRF_PRESETS["patch"], backend="pydensecrf")


# ---------------------------------------------------------------- real images

VOC_IDS = ("2007_000175", "2008_004760", "2009_001016", "2010_000545", "2010_004052")


def _noisy_probs(gt: np.ndarray, seed: int, sigma: float = 15.0, noise: float = 0.7) -> np.ndarray:
    """Ground truth (255 -> background) one-hot over its classes, blurred, mixed with uniform
    noise, renormalised; 0 for classes absent from the image. Same recipe as benchmarks/crf.py."""
    labels = gt.copy()
    labels[labels == 255] = 0
    present = np.unique(labels)
    onehot = (labels[None] == present[:, None, None]).astype(np.float32)
    blurred = gaussian_filter(onehot, sigma=(0, sigma, sigma))
    rng = np.random.default_rng(seed)
    mixed = (1 - noise) * blurred + noise * rng.random(onehot.shape, dtype=np.float32)
    mixed /= mixed.sum(0, keepdims=True)
    probs = np.zeros((21,) + gt.shape, dtype=np.float32)
    probs[present] = mixed
    return probs


def _miou(conf: np.ndarray) -> float:
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    return float((tp[union > 0] / union[union > 0]).mean() * 100)


def _confusion(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    valid = gt != 255
    return np.bincount(gt[valid].astype(np.int64) * 21 + pred[valid], minlength=441).reshape(21, 21)


@pytest.mark.slow
def test_agreement_with_pydensecrf_on_voc_images(voc_root):
    _needs_pydensecrf()
    ids = [i for i in VOC_IDS if (voc_root / "JPEGImages" / f"{i}.jpg").is_file()]
    if len(ids) < 3:
        ids = sorted(p.stem for p in (voc_root / "JPEGImages").glob("*.jpg"))[:: 260][:5]
    params = CRF_PRESETS["patch"]
    agree = total = changed = 0
    conf = {"torch": np.zeros((21, 21), np.int64), "pydensecrf": np.zeros((21, 21), np.int64)}
    for image_id in ids:
        image = np.asarray(Image.open(voc_root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(voc_root / "SegmentationClassAug" / f"{image_id}.png"))
        probs = _noisy_probs(gt, int(image_id.replace("_", "")))
        masks = {b: dense_crf(image, probs, params, backend=b).argmax(0) for b in conf}
        agree += int((masks["torch"] == masks["pydensecrf"]).sum())
        changed += int((masks["pydensecrf"] != probs.argmax(0)).sum())
        total += gt.size
        for b in conf:
            conf[b] += _confusion(gt, masks[b])
    assert changed / total > 0.05  # the CRF does real work on these inputs
    assert agree / total >= 0.97
    assert abs(_miou(conf["torch"]) - _miou(conf["pydensecrf"])) <= 0.3


def test_neighbour_search_paths_agree():
    from tagseg.inference.crf.permutohedral import _find_neighbours

    gen = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.randint(0, 400, (300,), generator=gen))
    deltas = [1, 7, -3, 50]
    fast = _find_neighbours(codes, deltas, torch.int32, use_numpy=True)
    plain = _find_neighbours(codes, deltas, torch.int32, use_numpy=False)
    position = {int(c): i for i, c in enumerate(codes)}
    m = codes.numel()
    for delta, (n1, n2), (p1, p2) in zip(deltas, fast, plain):
        assert torch.equal(n1, p1) and torch.equal(n2, p2)
        expect1 = [position.get(int(c) + delta, m) for c in codes]
        expect2 = [position.get(int(c) - delta, m) for c in codes]
        assert n1.tolist() == expect1 and n2.tolist() == expect2


@pytest.mark.parametrize("duplicate", ["absent", "present"])
def test_identical_classes_are_merged_without_changing_the_result(duplicate):
    image, sub = _random_case(14, 19, 3, seed=9)
    probs = np.zeros((7, 14, 19), np.float32)
    if duplicate == "absent":  # four classes of probability 0: one group of 4 identical unaries
        probs[[1, 4, 6]] = sub
    else:  # two present classes with the same probabilities, plus absent ones
        probs[[0, 3]] = sub[0] / 2
        probs[[1, 2]] = sub[1:]
        probs[[0, 3, 1, 2]] /= probs[[0, 3, 1, 2]].sum(0)
    params = CRF_PRESETS["patch"]
    ours = dense_crf(image, probs, params, present_only=False)
    ref = _plain_mean_field(image, probs, params)
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    if duplicate == "present":
        np.testing.assert_array_equal(ours[0], ours[3])
