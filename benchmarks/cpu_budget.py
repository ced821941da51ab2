"""CPU budget levers, each measured as a before/after ratio within one run (img/s).

Scoring (CAM-family pseudo-mask maps, multi-scale + flip, EfficientNet-Lite0 CAM network):

    loop       one image at a time, per scale one forward of the image and its mirror (today)
    batched    ``cam_maps_batch``: per scale all --batch images and their mirrors in one forward
    +NHWC      the batched path with channels-last weights and inputs

Training (the segmentation network, one SGD step per batch at --crop px):

    default    NCHW, eager
    NHWC       channels-last weights and inputs
    compile    ``torch.compile`` of the network (compilation time reported separately)

Decoding: JPEG decode + tensor conversion per image against tensor conversion of the decoded
uint8 image held in memory (what a decoded-image cache saves per epoch).

Rows are measured in interleaved rounds; the best round counts. The machine's load average is
printed with the table, since other processes on a shared CPU move these rates.

    python benchmarks/cpu_budget.py --voc ../shared/data/voc12-subset --images 16 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tagseg.data.views import image_to_tensor
from tagseg.utils.io import read_image, write_text


def timed(fn, n_images: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - t0)


def cam_network():
    from tagseg.models.cam_net import CAMNet
    from tagseg.models.encoder import PatchEncoder

    return CAMNet(PatchEncoder("tf_efficientnet_lite0", image_size=320), 21).eval()


def segmenter(crop: int):
    from tagseg.segment.config import load_segment_config
    from tagseg.segment.models import build_segmenter

    cfg = load_segment_config("segment_voc", ["model.head=deeplabv3plus", "model.encoder=tf_efficientnet_lite0",
                                              "model.pretrained=false", "model.output_stride=16"])
    return build_segmenter(cfg.model, 21, crop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path(os.environ.get("TAGSEG_VOC_ROOT", "../shared/data/voc12-subset")))
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--batch", type=int, default=8, help="images per batched scoring forward")
    p.add_argument("--size", type=int, default=320, help="pseudo.image_size of the scoring rows")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5])
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile for training")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from tagseg.inference.cam import cam_maps, cam_maps_batch

    ids = sorted((args.voc / "JPEGImages").glob("*.jpg"))[: args.images]
    if not ids:
        sys.exit(f"no images in {args.voc / 'JPEGImages'}")
    images = [image_to_tensor(read_image(f)) for f in ids]
    n = len(images)
    net = cam_network()
    scales = tuple(args.scales)

    def score_loop():
        return [cam_maps(net, im, args.size, scales, True) for im in images]

    def score_batched(model=net):
        out = []
        for i in range(0, n, args.batch):
            out += cam_maps_batch(model, images[i:i + args.batch], args.size, scales, True)
        return out

    a, b = score_loop(), score_batched()  # warm-up and the equality check
    max_diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    net_cl = cam_network()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=torch.channels_last)

    seg = segmenter(args.crop).train()
    opt = torch.optim.SGD(seg.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(args.train_batch, 3, args.crop, args.crop)
    y = torch.randint(0, 21, (args.train_batch, args.crop, args.crop))

    def train_steps(model, inputs):
        for _ in range(args.train_steps):
            loss = torch.nn.functional.cross_entropy(model(inputs), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()

    seg_cl = segmenter(args.crop).train().to(memory_format=torch.channels_last)
    opt_cl = torch.optim.SGD(seg_cl.parameters(), lr=1e-3, momentum=0.9)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def train_cl():
        for _ in range(args.train_steps):
            loss = torch.nn.functional.cross_entropy(seg_cl(x_cl), y, ignore_index=255)
            opt_cl.zero_grad()
            loss.backward()
            opt_cl.step()

    rows: dict[str, list[float]] = {}
    steps_imgs = args.train_steps * args.train_batch
    compile_s = None
    if args.compile:
        seg_c = torch.compile(segmenter(args.crop).train())
        t0 = time.perf_counter()
        train_steps(seg_c, x)
        compile_s = time.perf_counter() - t0
    cached = [read_image(f) for f in ids]  # decoded uint8 arrays, as an image cache holds them
    for _ in range(args.rounds):
        rows.setdefault("decode: JPEG decode + to tensor", []).append(
            timed(lambda: [image_to_tensor(read_image(f)) for f in ids], n))
        rows.setdefault("decode: from the in-memory cache", []).append(timed(lambda: [image_to_tensor(c) for c in cached], n))
        rows.setdefault("scoring: per-image loop (today)", []).append(timed(score_loop, n))
        rows.setdefault(f"scoring: batched, {args.batch} images per forward", []).append(timed(score_batched, n))
        rows.setdefault("scoring: batched + channels-last", []).append(timed(lambda: score_batched(net_cl), n))
        rows.setdefault("training: NCHW eager (today)", []).append(timed(lambda: train_steps(seg, x), steps_imgs))
        rows.setdefault("training: channels-last", []).append(timed(train_cl, steps_imgs))
        if args.compile:
            rows.setdefault("training: torch.compile", []).append(timed(lambda: train_steps(seg_c, x), steps_imgs))
    base = {"decode": rows["decode: JPEG decode + to tensor"], "scoring": rows["scoring: per-image loop (today)"],
            "training": rows["training: NCHW eager (today)"]}
    load = os.getloadavg()
    lines = ["| row | img/s (best of rounds) | all rounds | vs today |", "|---|---:|---|---:|"]
    for name, rates in rows.items():
        ref = max(base[name.split(":")[0]])
        lines.append(f"| {name} | {max(rates):.2f} | {', '.join(f'{r:.2f}' for r in rates)} | {max(rates) / ref:.2f}× |")
    lines += ["", f"Scoring: {n} VOC images, pseudo.image_size {args.size}, scales {list(scales)}, flip on; "
              f"largest |batched − loop| over all maps: {max_diff:.2e}. Training: batch {args.train_batch}, "
              f"{args.crop}-px crops, {args.train_steps} steps per round, DeepLab v3+ on Lite0 (random init)."
              + (f" torch.compile's first steps (compilation): {compile_s:.0f} s." if compile_s else ""),
              f"Threads {args.threads}; load average at the end (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / "
              f"{load[2]:.1f} on {os.cpu_count()} cores; {platform.machine()}, torch {torch.__version__}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
