"""Record ViT-PCM golden numbers from the official TensorFlow code (deepplants/ViT-PCM).

Runs the official functions of ``model.py`` (label merge, MCE, CCE = L_ET, the L2 term through
``compute_reg_loss``, the HV-BiLSTM layer) on fixed inputs and writes their outputs and gradients
as JSON; ``tests/golden/test_vit_pcm.py`` compares tagseg with that JSON and needs nothing else.

Needs TensorFlow (CPU is enough) and ``tf_keras`` (the Keras 2 API the official code was written
for) in a separate environment -- never a tagseg dependency -- and a checkout of the official
repository at the pinned commit (this script fetches nothing):

    python -m venv tfenv && tfenv/bin/pip install tensorflow-cpu tf-keras
    git clone https://github.com/deepplants/ViT-PCM && git -C ViT-PCM checkout 1fea66f
    TF_USE_LEGACY_KERAS=1 tfenv/bin/python benchmarks/golden/record_vit_pcm.py \
        --official ViT-PCM --out tests/golden/vit_pcm.json

Inputs follow the golden conventions (benchmarks/golden/README.md): float32 ``offset + scale * draw``
from ``numpy.random.default_rng(seed)``, stored as their spec plus the sha256 of dtype, shape and
little-endian bytes, so a test regenerates them and checks they are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

OFFICIAL_REPO = "deepplants/ViT-PCM"
PINNED_COMMIT = "1fea66f02c86022b70ae7a8b62355cc67b977cfb"


def checksum(array: np.ndarray) -> str:
    """sha256 of dtype, shape and little-endian bytes (the golden convention)."""
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()).hexdigest()


def draw(seed: int, shape: list[int], dist: str = "normal", scale: float = 1.0) -> tuple[np.ndarray, dict]:
    """A float32 input ``scale * draw`` from default_rng(seed) and its spec."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(shape)) if dist == "normal" else rng.random(tuple(shape))
    x = (0.0 + float(scale) * x).astype(np.float32)
    return x, {"seed": seed, "shape": list(shape), "dist": dist, "scale": scale, "sha256": checksum(x)}


def given(array: np.ndarray) -> dict:
    """A spec holding its values (labels, transform rows)."""
    a = np.asarray(array, dtype=np.float32)
    return {"value": a.tolist(), "dtype": "float32", "sha256": checksum(a)}


def stub_modules() -> None:
    """The official modules import packages its losses never use (tensorflow_addons, vit_keras,
    omegaconf, plotting and image libraries): empty stand-ins let ``import model`` succeed."""

    class _Anything(types.ModuleType):
        def __getattr__(self, name):  # any attribute: a harmless placeholder
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything(name)

        def __call__(self, *a, **k):
            return _Anything("call")

    for name in ("tensorflow_addons", "vit_keras", "omegaconf", "skimage", "PIL", "tqdm", "matplotlib",
                 "matplotlib.pyplot", "sklearn", "sklearn.metrics"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = _Anything(name)


USED_FILES = ("model.py", "utils.py")


def check_commit(path: Path) -> str:
    """HEAD must be the pinned commit and the files this recorder runs unmodified."""
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if head != PINNED_COMMIT:
        raise SystemExit(f"{path} is at {head}, not the pinned {PINNED_COMMIT}")
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--", *USED_FILES],
                           capture_output=True, text=True, check=True).stdout.strip()
    if dirty:
        raise SystemExit(f"{path}: {', '.join(USED_FILES)} must be unmodified")
    return head


def lines_of(path: Path, needle: str) -> str:
    """'file:first-last' of the function or class ``needle`` in the official file (for the record)."""
    text = path.read_text().splitlines()
    start = next(i for i, l in enumerate(text) if l.startswith(needle))
    end = next((j for j in range(start + 1, len(text)) if text[j] and not text[j][0].isspace()
                and not text[j].startswith(("#", ")"))), len(text))
    return f"{path.name}:{start + 1}-{end}"


def keras_version() -> str:
    try:
        import tf_keras

        return f"tf_keras {tf_keras.__version__}"
    except ImportError:
        import keras

        return f"keras {keras.__version__}"


def tolist(x) -> list:
    return np.asarray(x, dtype=np.float64).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="checkout of deepplants/ViT-PCM at the pinned commit")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    commit = check_commit(args.official)
    stub_modules()
    sys.path.insert(0, str(args.official.resolve()))
    import tensorflow as tf
    import model as official  # the official model.py (imports the official utils.py)

    tf.keras.utils.set_random_seed(0)
    model_py = args.official / "model.py"
    cases: list[dict] = []

    # ---- label merge: merge_class_labels(preds (B, H, W, K), labels (B, K)) ----
    logits, s_logits = draw(1, [2, 5, 6, 7], scale=2.0)
    labels = np.array([[1, 0, 1, 0, 0, 1, 0], [1, 1, 0, 0, 1, 0, 1]], dtype=np.float32)
    merged = official.merge_class_labels(tf.nn.softmax(logits, axis=-1), tf.constant(labels))
    cases.append({
        "name": "label_merge", "official": [lines_of(model_py, "def merge_class_labels")],
        "inputs": {"logits": s_logits, "labels": given(labels)}, "params": {},
        "notes": "preds = softmax(logits, axis=-1), channels last",
        "outputs": {"merged": tolist(merged)},
    })

    # ---- patch classifier PC -> MCE (compute_mce_loss) and L2 (compute_reg_loss), with gradients ----
    feats, s_feats = draw(2, [2, 4, 5, 12])
    kernel, s_kernel = draw(3, [12, 7], scale=0.3)
    labels = np.array([[1, 1, 0, 0, 0, 0, 1], [1, 0, 0, 1, 1, 0, 0]], dtype=np.float32)
    inp = tf.keras.Input(shape=(4, 5, 12))
    pc = official.PC(num_categories=7, dropout=0.2, name="patch_classifier")
    net = tf.keras.Model(inputs=inp, outputs=pc(inp, training=False))
    pc.layer.kernel.assign(kernel)
    f = tf.Variable(feats)
    with tf.GradientTape() as tape:
        out = net(f, training=False)
        mce = official.compute_mce_loss(out, tf.constant(labels))["bce_loss"]
        reg = official.compute_reg_loss(net)["reg_loss"]
        total = mce + reg
    g_feat, g_kernel = tape.gradient(total, [f, pc.layer.kernel])
    cases.append({
        "name": "mce_l2",
        "official": [lines_of(model_py, "class PC"), lines_of(model_py, "def compute_mce_loss"),
                     lines_of(model_py, "def compute_reg_loss")],
        "inputs": {"features": s_feats, "kernel": s_kernel, "labels": given(labels)}, "params": {"l2": 0.01},
        "notes": "PC in inference mode (no dropout): logits = features @ kernel, softmax, global max pool; "
                 "total = bce_loss + reg_loss; grads of that total",
        "outputs": {"pooled_preds": tolist(out["pooled_preds"]), "bce_loss": float(mce), "reg_loss": float(reg)},
        "grads": {"features": tolist(g_feat), "kernel": tolist(g_kernel)},
    })

    # ---- CCE = L_ET: compute_cce_loss(outputs, outputs_t, affine, affine_t, labels, 16, scale) ----
    size, patch, scale = 128, 16, 64  # view A 128 px (8x8 cells); view B 64 px (4x4 cells)
    b, k = 8, 6
    logits_a, s_la = draw(4, [b, size // patch, size // patch, k], scale=1.5)
    logits_t, s_lt = draw(5, [b // 4, 2 * scale // patch, 2 * scale // patch, k], scale=1.5)
    labels = np.zeros((b, k), dtype=np.float32)
    labels[:, 0] = 1
    for i in range(b):
        labels[i, 1 + (i % (k - 1))] = 1
        labels[i, 1 + ((3 * i + 2) % (k - 1))] = 1
    # affine rows: [fliplr, flipud, transpose, y1, x1, y2, x2, resize_h, resize_w] in pixels
    flips = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    affine = np.array([list(flips[(3 * i) % 8]) + [0] * 6 for i in range(b)], dtype=np.float32)
    crops = [None, (16, 32, 48), None, (0, 0, 48), (80, 48, 48), None, (32, 80, 48), (48, 16, 80)]
    affine_t = []
    for i in range(b):
        c = crops[i]
        bbox = [0, 0, 0, 0] if c is None else [c[0], c[1], c[0] + c[2], c[1] + c[2]]
        affine_t.append(list(flips[i]) + bbox + [scale, scale])
    affine_t = np.array(affine_t, dtype=np.float32)
    lt = tf.Variable(logits_t)
    with tf.GradientTape() as tape:
        outputs = {"preds": tf.nn.softmax(logits_a, axis=-1)}
        outputs_t = {"preds": tf.nn.softmax(lt, axis=-1)}
        cce = official.compute_cce_loss(outputs, outputs_t, tf.constant(affine), tf.constant(affine_t),
                                        tf.constant(labels), patch, scale)["cce_loss"]
    g_lt = tape.gradient(cce, lt)
    cases.append({
        "name": "cce",
        "official": [lines_of(model_py, "def compute_cce_loss"), "utils.py: affine_patch_level, "
                     "apply_affine_transform_batch, revert_affine_transform_batch, extract_nonoverlapping_patches"],
        "inputs": {"logits_a": s_la, "logits_mosaic": s_lt, "labels": given(labels), "affine": given(affine),
                   "affine_t": given(affine_t)},
        "params": {"patch_size": patch, "scale_size": scale, "image_size": size},
        "notes": "preds = softmax(logits, axis=-1) channels last; affine rows [fliplr, flipud, transpose, y1, x1, "
                 "y2, x2, resize_h, resize_w] (pixels); mosaic i holds samples 4i..4i+3 row-major; "
                 "grads of cce_loss w.r.t. the mosaic logits",
        "outputs": {"cce_loss": float(cce)},
        "grads": {"logits_mosaic": tolist(g_lt)},
    })

    # ---- HV-BiLSTM (inference mode) with weights drawn in Keras layout ----
    d, hid, g = 10, 6, 4  # a square grid: the official layer builds both LSTMs for one grid shape
    grid, s_grid = draw(6, [2, g, g, d])
    cot, s_cot = draw(7, [2, g, g, 4 * hid])
    layer = official.HVBiLSTM(hidden_dim=hid, dropout=0.2, name="patch_conditioning")
    layer.build(tf.TensorShape([None, g, g, d]))
    weight_specs, fresh = {}, {}
    seed = 100
    for direction in ("rows", "cols"):
        bi = (layer.HBiLSTM if direction == "rows" else layer.VBiLSTM).layer
        for side, lstm in (("forward", bi.forward_layer), ("backward", bi.backward_layer)):
            cell = lstm.cell
            fresh[f"{direction}_{side}"] = tolist(cell.bias)
            for name, var, sc in (("kernel", cell.kernel, 0.3), ("recurrent_kernel", cell.recurrent_kernel, 0.3),
                                  ("bias", cell.bias, 0.2)):
                w, spec = draw(seed, list(var.shape), scale=sc)
                seed += 1
                var.assign(w)
                weight_specs[f"{direction}_{side}_{name}"] = spec
    x = tf.Variable(grid)
    with tf.GradientTape() as tape:
        y = layer(x, training=False)
        obj = tf.reduce_sum(y * cot)
    g_x = tape.gradient(obj, x)
    cases.append({
        "name": "hv_bilstm",
        "official": [lines_of(model_py, "class HVBiLSTM"), "Keras LSTM: gates i, f, c, o; kernel (D, 4H), "
                     "recurrent_kernel (H, 4H), one bias (4H); tanh / sigmoid"],
        "inputs": {"grid": s_grid, "cotangent": s_cot, **weight_specs},
        "params": {"hidden": hid},
        "notes": "layer(grid, training=False) -> (B, Gh, Gw, 4H) = [rows fwd, rows bwd, cols fwd, cols bwd]; "
                 "grads of sum(output * cotangent) w.r.t. the grid; keras_fresh_bias: each LSTM's bias "
                 "as Keras initialises it (unit_forget_bias)",
        "outputs": {"features": tolist(y), "keras_fresh_bias": fresh},
        "grads": {"grid": tolist(g_x)},
    })

    # ---- utils.resize: the official bilinear resize (tf.compat.v1, align_corners=True) ----
    import utils as official_utils

    grid, s_up = draw(20, [1, 6, 7, 3])
    photo, s_down = draw(21, [1, 40, 30, 3], dist="uniform")
    up = official_utils.resize(tf.constant(grid), (17, 23))
    down = official_utils.resize(tf.constant(photo), (16, 16))
    cases.append({
        "name": "resize", "official": ["utils.py: resize (tf.image.resize of tensorflow.compat.v1, align_corners=True)"],
        "inputs": {"grid": s_up, "photo": s_down}, "params": {"up": [17, 23], "down": [16, 16]},
        "notes": "channels last; the resize of view B, of the test image to its input size and of the "
                 "predictions to the image size",
        "outputs": {"up": tolist(up), "down": tolist(down)},
    })

    # ---- HV-BiLSTM input dropout in training: where the official layer draws its masks ----
    # Every LSTM made memoryless (recurrent kernel 0, input gate 1, forget gate 0, output gate 1) and
    # fed a constant grid, so each output depends only on that step's dropped input: equal outputs
    # along a sequence mean one mask for the sequence, unequal ones a mask per step.
    d, hid, g = 3, 2, 6
    layer = official.HVBiLSTM(hidden_dim=hid, dropout=0.5, name="dropout_probe")
    layer.build(tf.TensorShape([None, g, g, d]))
    fused = []
    for bi in (layer.HBiLSTM.layer, layer.VBiLSTM.layer):
        for lstm in (bi.forward_layer, bi.backward_layer):
            kernel = np.zeros((d, 4 * hid), np.float32)
            kernel[:, 2 * hid:3 * hid] = 1.0
            bias = np.zeros(4 * hid, np.float32)
            bias[:hid], bias[hid:2 * hid], bias[3 * hid:] = 100.0, -100.0, 100.0
            lstm.cell.kernel.assign(kernel)
            lstm.cell.recurrent_kernel.assign(np.zeros((hid, 4 * hid), np.float32))
            lstm.cell.bias.assign(bias)
            fused.append(bool(lstm._could_use_gpu_kernel))
    rows = layer.HBiLSTM(tf.ones((4, g, g, d)), training=True).numpy()  # (B, Gh, Gw, 2H)
    fwd, bwd = rows[..., :hid], rows[..., hid:]
    varies = bool(np.any(np.abs(fwd - fwd[:, :, :1]) > 1e-6))
    cases.append({
        "name": "lstm_input_dropout",
        "official": [lines_of(model_py, "class HVBiLSTM"), "tf_keras LSTM.call: fused path drops "
                     "inputs * dropout_mask[0] with a mask of the whole (N, T, D) input"],
        "inputs": {}, "params": {"dropout": 0.5, "hidden": hid, "grid": g},
        "notes": "training=True on a constant grid with memoryless LSTMs (see the recorder)",
        "outputs": {"fused_lstm_path": fused, "mask_varies_over_steps": varies,
                    "directions_share_a_mask": bool(np.allclose(fwd, bwd))},
    })

    record = {
        "source": {"repo": OFFICIAL_REPO, "commit": commit,
                   "files": {c["name"]: c.pop("official") for c in cases}},
        "recorder": "benchmarks/golden/record_vit_pcm.py",
        "environment": {"tensorflow": tf.__version__, "keras": keras_version(), "numpy": np.__version__,
                        "python": sys.version.split()[0]},
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: " + ", ".join(c["name"] for c in cases))


if __name__ == "__main__":
    main()
