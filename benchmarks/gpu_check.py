"""One check for the first machine with a CUDA GPU: correctness, then speed, as a markdown table.

    python benchmarks/gpu_check.py                      # ~5 min on one H100/H200
    python benchmarks/gpu_check.py --voc-root DATA      # CRF agreement / pseudo-masks on real VOC images

Correctness: the torch dense CRF on the GPU against pydensecrf2 on the CPU (argmax agreement on
the same images and probabilities), a bf16 training step against fp32 (same weights, same
batch), a one-process NCCL DDP step against the plain step. Speed: TKP-PCL training img/s
(ViT-B/16 at 384 px, random init, every block trained) in fp32 / bf16 / bf16 + torch.compile,
with FLOPs per image counted by ``torch.utils.flop_counter`` and the fraction of the GPU's dense
bf16 peak; pseudo-mask img/s at 960 px with flip (batches of equal-size inputs, no host sync
inside the timed loop), with and without the GPU CRF; CRF ms/image GPU vs pydensecrf2 CPU.
The pseudo-mask path is assembled here from the library's pieces (the family's network,
``label_merge``, ``dense_crf``) in the batched form the targets need; the CRF itself runs one
image at a time (its lattice is built per image).

The table goes to stdout and to ``benchmarks/results/gpu_<device>.md``. Without CUDA the script
says so, runs the same code path at tiny sizes on the CPU (seconds), prints that table (no
result file unless ``--out``) and exits 0; its numbers are not GPU numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/crf.py: the shared noisy-probability inputs

from crf import load as load_voc_image, noisy_probs  # noqa: E402

from tagseg.config import load_config  # noqa: E402
from tagseg.engine import precision as P  # noqa: E402
from tagseg.engine.distributed import DistInfo  # noqa: E402
from tagseg.engine.loop import seed_everything  # noqa: E402
from tagseg.methods.families import get_family  # noqa: E402
from tagseg.methods.label_merge import label_merge  # noqa: E402
from tagseg.classify.trainer import classifier_task  # noqa: E402

try:  # the CRF's home after the inference layer landed; before, under pseudo/
    from tagseg.inference.crf import CRF_PRESETS, dense_crf, pydensecrf_available  # noqa: E402
except ImportError:  # pragma: no cover
    from tagseg.inference.crf import CRF_PRESETS, dense_crf, pydensecrf_available  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendor's data sheets, matched
# against torch.cuda.get_device_name(); the sparse figures are twice these.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0, "H100 80GB HBM3": 989.0,  # the SXM part reports itself as "H100 80GB HBM3"
    "H100 PCIe": 756.0, "H100 NVL": 835.0,
    "A100": 312.0,
}
NUM_VOC_CLASSES = 21


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the tiny CPU run."""

    encoder: str
    train_size: int
    batch: int
    steps: int
    warmup_steps: int
    pseudo_size: int
    pseudo_batch: int
    pseudo_images: int
    crf_images: int
    crf_max_side: int  # CRF inputs are downscaled to this longest side (0 = full size)
    compile: bool


GPU = Sizes("vit_base_patch16_384", 384, 32, 10, 3, 960, 8, 32, 8, 0, True)
TINY = Sizes("test_vit", 64, 2, 2, 1, 64, 2, 2, 1, 64, False)  # no torch.compile on the CPU unless --compile


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(name: str) -> Optional[float]:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


# ----------------------------------------------------------------------------- training

def training_task(sizes: Sizes, data_root: Path, device: torch.device, seed: int = 0):
    """The TKP-PCL task (random init, every block trained, synthetic images) and one batch of
    ``sizes.batch`` items on ``device`` (4 distinct items tiled)."""
    cfg = load_config("tkpcl_voc", [
        "data.dataset=synthetic", f"data.root={data_root}", "data.train_split=train", "data.synthetic_train=4",
        "data.synthetic_val=0", f"data.synthetic_size={sizes.train_size}", f"data.image_size={sizes.train_size}",
        "data.num_workers=0", f"model.encoder={sizes.encoder}", "model.pretrained=false",
        "train.warmup_epochs=0", "train.unfreeze_blocks=-1", f"method.et_crop_size={min(128, sizes.train_size)}",
        f"seed={seed}"])
    seed_everything(seed)
    task = classifier_task(cfg)(DistInfo(), device)
    task.schedule.epoch_start(0, 0, task.optimizer)
    items = [task.dataset[i] for i in range(len(task.dataset))]
    reps = -(-sizes.batch // len(items))
    batch = {k: torch.stack([it[k] for it in items] * reps)[: sizes.batch].to(device)
             for k in items[0] if torch.is_tensor(items[0][k])}
    return task, batch


def train_steps(task, batch: dict, device: torch.device, precision: str, steps: int,
                model: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """``steps`` optimizer steps on ``batch`` (as the engine's loop does them); the losses stay on
    the device (no host sync inside the loop). Returns them (steps,)."""
    core = task.model
    model = core if model is None else model
    scaler = P.grad_scaler(precision, device)
    losses = []
    core.train()
    for _ in range(steps):
        with P.autocast(precision, device):
            loss, _ = task.loss(model, core, batch, 0)
        task.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(task.optimizer)
        scaler.update()
        losses.append(loss.detach())
    return torch.stack(losses)


def first_loss(sizes: Sizes, root: Path, device: torch.device, precision: str) -> float:
    task, batch = training_task(sizes, root, device)
    torch.manual_seed(1)  # the same dropout masks for every precision
    with torch.no_grad(), P.autocast(precision, device):
        loss, _ = task.loss(task.model, task.model, batch, 0)
    return float(loss)


def training_flops(sizes: Sizes, root: Path, device: torch.device) -> float:
    """FLOPs of one training step (forward + backward of the TKP-PCL objective) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    task, batch = training_task(sizes, root, device)
    with FlopCounterMode(display=False) as counter:
        loss, _ = task.loss(task.model, task.model, batch, 0)
        loss.backward()
    return counter.get_total_flops() / sizes.batch


def training_speed(sizes: Sizes, root: Path, device: torch.device, precision: str, compile: bool) -> float:
    """Training images per second (warm-up steps excluded; compile time excluded)."""
    task, batch = training_task(sizes, root, device)
    model = P.compiled(task.model, compile)
    train_steps(task, batch, device, precision, sizes.warmup_steps, model)
    sync(device)
    t0 = time.perf_counter()
    losses = train_steps(task, batch, device, precision, sizes.steps, model)
    sync(device)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(losses).all():
        raise RuntimeError(f"non-finite training loss under {precision}")
    return sizes.steps * sizes.batch / seconds


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_step_difference(sizes: Sizes, root: Path, device: torch.device) -> tuple[str, float]:
    """A one-process DDP step (NCCL on CUDA, gloo on CPU) against the plain step from the same
    weights and batch: (backend, largest absolute weight difference)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if device.type == "cuda" else "gloo"
    plain, batch = training_task(sizes, root, device)
    torch.manual_seed(1)
    train_steps(plain, batch, device, "fp32", 1)
    task, batch = training_task(sizes, root, device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(task.model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(1)
        train_steps(task, batch, device, "fp32", 1, ddp)
        sync(device)
    finally:
        dist.destroy_process_group()
    a, b = plain.model.state_dict(), task.model.state_dict()
    return backend, max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ----------------------------------------------------------------------------- inputs

def sample_images(voc_root: Optional[Path], n: int, max_side: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, uint8 RGB (H, W, 3), uint8 ground truth (H, W)): VOC subset images when given, else
    rendered synthetic ones; downscaled to ``max_side`` when > 0."""
    from PIL import Image

    out = []
    if voc_root is not None:
        ids = sorted(p.stem for p in (voc_root / "SegmentationClassAug").glob("*.png"))[:n]
        for image_id in ids:
            image, gt = load_voc_image(voc_root, image_id)
            out.append((image_id, image, gt))
    else:
        from tagseg.data.synthetic import render_sample

        for i in range(n):
            image, gt = render_sample(i, seed=0, size=max(max_side, 64) if max_side else 320)
            out.append((f"synthetic_{i}", image, gt))
    if max_side:
        small = []
        for image_id, image, gt in out:
            h, w = gt.shape
            scale = max_side / max(h, w)
            size = (max(8, round(w * scale)), max(8, round(h * scale)))
            small.append((image_id, np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
                          np.asarray(Image.fromarray(gt).resize(size, Image.NEAREST))))
        out = small
    return out


def image_seed(image_id: str) -> int:
    return int(re.sub(r"\D", "", image_id) or 0)


# ----------------------------------------------------------------------------- CRF

def crf_check(images, device: torch.device) -> dict:
    """Argmax agreement torch-CRF (``device``) vs pydensecrf2 (CPU) and ms/image of each."""
    params = CRF_PRESETS["patch"]
    agree = pixels = 0
    t_torch = t_ref = 0.0
    have_ref = pydensecrf_available()
    for n, (image_id, image, gt) in enumerate(images):
        probs = noisy_probs(gt, image_seed(image_id))
        probs_dev, image_dev = torch.from_numpy(probs).to(device), torch.from_numpy(image.copy()).to(device)
        if n == 0:  # warm-up (CUDA kernels, allocator) outside the timing
            dense_crf(image_dev, probs_dev, params, backend="torch")
        sync(device)
        t0 = time.perf_counter()
        q = dense_crf(image_dev, probs_dev, params, backend="torch")
        sync(device)
        t_torch += time.perf_counter() - t0
        if have_ref:
            t0 = time.perf_counter()
            ref = dense_crf(image, probs, params, backend="pydensecrf")
            t_ref += time.perf_counter() - t0
            agree += int((q.argmax(0).cpu().numpy() == ref.argmax(0)).sum())
            pixels += gt.size
    n = len(images)
    return {"agreement": agree / pixels if pixels else None, "ms_torch": 1000 * t_torch / n,
            "ms_ref": 1000 * t_ref / n if have_ref else None, "images": n}


# ----------------------------------------------------------------------------- pseudo-masks

def pseudo_speed(sizes: Sizes, images, device: torch.device, precision: str, with_crf: bool) -> float:
    """Pseudo-mask images/s at ``sizes.pseudo_size`` with flip: every image resized to the same
    square, forwarded in batches with its flip, label merge, upsampled to the image, argmax (and
    the GPU CRF on the merged probabilities). Decoding is done before the clock starts; the masks
    come back to the host once, at the end (PNG writing is not timed)."""
    cfg = load_config("tkpcl_voc", [f"model.encoder={sizes.encoder}", "model.pretrained=false",
                                    f"data.image_size={sizes.pseudo_size}", "method.et_weight=0"])
    seed_everything(0)
    core = get_family(cfg.model.family).build(cfg, NUM_VOC_CLASSES).to(device)
    speed = P.InferenceSpeed(precision, device)
    net = speed.prepare(core)
    tensors = [torch.from_numpy(image.copy()).to(device) for _, image, _ in images]
    labels = []
    for _, _, gt in images:
        present = np.unique(gt[gt != 255])
        t = torch.zeros(NUM_VOC_CLASSES, device=device)
        t[torch.from_numpy(present.astype(np.int64)).to(device)] = 1.0
        t[0] = 1.0
        labels.append(t)
    params = CRF_PRESETS["patch"]

    def run() -> list[torch.Tensor]:
        masks = []
        side = sizes.pseudo_size
        for start in range(0, len(tensors), sizes.pseudo_batch):
            chunk = tensors[start:start + sizes.pseudo_batch]
            x = torch.stack([F.interpolate(img.permute(2, 0, 1)[None].float() / 255, size=(side, side),
                                           mode="bilinear", align_corners=False, antialias=True)[0]
                             for img in chunk])
            with speed.context():
                z = net(speed.input(torch.cat([x, x.flip(-1)]))).probs.permute(0, 3, 1, 2).float()
            z = (z[: len(chunk)] + z[len(chunk):].flip(-1)) / 2  # (b, K, c, c)
            merged = label_merge(z, torch.stack(labels[start:start + len(chunk)]))
            for j, img in enumerate(chunk):
                probs = F.interpolate(merged[j:j + 1], size=img.shape[:2], mode="bilinear",
                                      align_corners=False)[0].clamp_min(0)
                probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-12)
                if with_crf:
                    probs = dense_crf(img, probs, params, backend="torch")
                masks.append(probs.argmax(0).to(torch.uint8))
        return [m.cpu() for m in masks]

    run()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    return len(tensors) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- report

def fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc-root", type=Path, default=os.environ.get("TAGSEG_VOC_ROOT"),
                        help="VOC 2012 layout (JPEGImages/, SegmentationClassAug/); default: synthetic images")
    parser.add_argument("--out", type=Path, help="markdown file (default on CUDA: benchmarks/results/gpu_<device>.md)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores on a GPU machine, 1 on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--compile", action="store_true",
                        help="measure the torch.compile row on the CPU path too (compiling takes minutes there)")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    torch.set_num_threads(args.threads or ((os.cpu_count() or 1) if cuda else 1))
    sizes = GPU if cuda else TINY
    if args.no_compile:
        sizes.compile = False
    elif args.compile:
        sizes.compile = True
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    if not cuda:
        print("no CUDA device: running the tiny CPU path only (same code, tiny sizes); these are not GPU numbers")
    voc = args.voc_root if args.voc_root and (Path(args.voc_root) / "JPEGImages").is_dir() else None
    started = time.perf_counter()
    rows: list[tuple[str, str, str]] = []

    def timed(label: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        fn()
        print(f"  {label}: {time.perf_counter() - t0:.1f}s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synthetic"

        def correctness() -> None:
            crf_images = sample_images(voc, sizes.crf_images, sizes.crf_max_side)
            crf = crf_check(crf_images, device)
            rows.append(("CRF torch (%s) vs pydensecrf2 (CPU), argmax agreement" % device.type,
                         fmt(None if crf["agreement"] is None else 100 * crf["agreement"], ".3f") + " %",
                         f"{crf['images']} {'VOC' if voc else 'synthetic'} images, preset patch"))
            rows.append(("CRF ms/image: torch on %s / pydensecrf2 on CPU" % device.type,
                         f"{fmt(crf['ms_torch'])} / {fmt(crf['ms_ref'])}",
                         "speed-up " + fmt(crf["ms_ref"] / crf["ms_torch"] if crf["ms_ref"] else None, ".1f")
                         + "x (target >= 50x on GPU)"))
            l32, l16 = first_loss(sizes, root, device, "fp32"), first_loss(sizes, root, device, "bf16")
            rows.append(("TKP-PCL loss bf16 vs fp32 (same weights and batch)", f"{l16:.4f} vs {l32:.4f}",
                         f"relative difference {abs(l16 - l32) / abs(l32):.2e}"))
            backend, diff = ddp_step_difference(sizes, root, device)
            rows.append((f"1-process DDP step ({backend}) vs plain step", f"max abs weight difference {diff:.2e}",
                         "same weights and batch, fp32"))

        def training() -> None:
            if cuda:
                torch.cuda.empty_cache()
            flops = training_flops(sizes, root, device)
            peak = peak_tflops(name) if cuda else None
            variants = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if sizes.compile else [])
            if not sizes.compile and not cuda and not args.no_compile:
                rows.append((f"training img/s, {sizes.encoder} at {sizes.train_size} px, bf16 + compile", "skipped",
                             "not compiled on the CPU path (minutes of compiling for a tiny model); pass --compile"))
            for precision, compile in variants:
                ips = training_speed(sizes, root, device, precision, compile)
                achieved = ips * flops / 1e12
                frac = f", {100 * achieved / peak:.1f}% of the dense bf16 peak {peak:.0f}" if peak else ""
                rows.append((f"training img/s, {sizes.encoder} at {sizes.train_size} px, {precision}"
                             + (" + compile" if compile else ""), f"{ips:.1f}",
                             f"{flops / 1e9:.1f} GFLOP/img -> {achieved:.2f} TFLOP/s{frac}; batch {sizes.batch}"))

        def pseudo() -> None:
            images = sample_images(voc, sizes.pseudo_images, 0 if cuda else sizes.crf_max_side)
            for with_crf in (False, True):
                ips = pseudo_speed(sizes, images, device, "auto", with_crf)
                rows.append((f"pseudo-mask img/s at {sizes.pseudo_size} px + flip" + (" + CRF" if with_crf else ""),
                             f"{ips:.1f}", f"{len(images)} images, batch {sizes.pseudo_batch}, "
                             f"precision {P.resolve_precision('auto', device, section='pseudo')}"
                             + ("; target >= 50 img/s with CRF" if with_crf else "")))

        timed("correctness", correctness)
        timed("training", training)
        timed("pseudo-masks", pseudo)

    lines = [f"# GPU check: {name}", "",
             f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, "
             f"{time.perf_counter() - started:.0f} s in all. "
             + ("" if cuda else "No CUDA device: tiny sizes on the CPU, not GPU numbers. "),
             "", "| check | value | notes |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out
    if out is None and cuda:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()
        out = HERE / "results" / f"gpu_{slug}.md"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_text(text)
        os.replace(tmp_out, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
