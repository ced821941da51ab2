"""Overfit the first N VOC train_aug images with the segmentation stage's own pieces (dataset,
DeepLab v3+ on Lite0 ImageNet weights, optimizer, loss, poly schedule); print the loss and the
train mIoU on the whole images and on crop-sized tiles of them (the training input size).

A sound pipeline memorises a handful of images quickly; a gap between the whole-image and the
tiled score shows a train/test mismatch of the input size. Results: benchmarks/results/segment_voc.md.

    python benchmarks/segment_overfit.py --voc ../shared/data/voc12-subset --n 8 --steps 40 --batch 4 \
        --rates "[2,4,6]" --opt adamw --lr 2e-4
"""
import argparse
import os
import time
import torch, numpy as np
torch.set_num_threads(1)
from tagseg.segment.config import load_segment_config
from tagseg.segment.models import build_segmenter
from tagseg.segment.data import SegmentationTrainSet, resolve_mask_paths
from tagseg.segment.trainer import build_optimizer, segmentation_loss, freeze_batchnorm
from tagseg.engine.schedule import PolySchedule
from tagseg.data.build import build_index
p = argparse.ArgumentParser()
p.add_argument("--voc", default=os.environ.get("TAGSEG_VOC_ROOT", "../shared/data/voc12-subset"))
p.add_argument("--n", type=int, default=8); p.add_argument("--steps", type=int, default=60)
p.add_argument("--lr", type=float, default=0.007); p.add_argument("--mult", type=float, default=10)
p.add_argument("--crop", type=int, default=160); p.add_argument("--batch", type=int, default=8)
p.add_argument("--freeze-bn", action="store_true"); p.add_argument("--os", type=int, default=16)
p.add_argument("--opt", default="sgd"); p.add_argument("--scale", default="[0.5,1.5]")
p.add_argument("--poly", type=float, default=0.9); p.add_argument("--rates", default="[]")
a = p.parse_args()
cfg = load_segment_config("segment_voc", ["model.head=deeplabv3plus","model.encoder=tf_efficientnet_lite0","model.weights=lite",
  "model.pretrained=false",f"model.output_stride={a.os}",f"data.root={a.voc}",f"data.max_images={a.n}",
  f"augment.crop_size={a.crop}",f"augment.scale_range={a.scale}",f"train.lr={a.lr}",f"train.head_lr_mult={a.mult}",
  f"train.optimizer={a.opt}","train.weight_decay=1e-4","train.momentum=0.9", f"model.aspp_rates={a.rates}"])
torch.manual_seed(0)
index = build_index(cfg.data, "train_aug")
net = build_segmenter(cfg.model, 21, a.crop)
ds = SegmentationTrainSet(index, resolve_mask_paths(index, "gt"), cfg.augment, pad_value=net.backbone.mean.flatten().tolist())
frozen = freeze_batchnorm(net.backbone) if a.freeze_bn else []
opt = build_optimizer(net, cfg.train)
sched = PolySchedule(a.lr, a.steps, a.poly, frozen)
rng = np.random.default_rng(0)
t0 = time.time()
for step in range(a.steps):
    net.train(); [m.eval() for m in frozen]
    ds.set_epoch(step)
    idx = rng.choice(len(ds), size=min(a.batch, len(ds)), replace=False)
    items = [ds[i] for i in idx]
    x = torch.stack([it["image"] for it in items]); y = torch.stack([it["mask"] for it in items])
    sched.step(step, opt)
    loss = segmentation_loss(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 10 == 0 or step == a.steps - 1:
        print(f"step {step} loss {loss.item():.3f} ({time.time()-t0:.0f}s)", flush=True)
# train mIoU on full images and on crop-sized tiles, through the one predict-and-score loop
from tagseg.metrics.predict_and_score import predict_and_score
from tagseg.metrics.scorer import Scorer
from tagseg.data.views import image_to_tensor
from tagseg.utils.io import read_image
net.eval(); sc = Scorer(21, index.class_names, contour=False, per_image=False); sc2 = Scorer(21, index.class_names, contour=False, per_image=False)
gt_masks = dict(zip((r.id for r in index.records), resolve_mask_paths(index, "gt")))


def whole_and_tiled(rec, gt):
    x = image_to_tensor(read_image(rec.image_path))[None]; H, W = x.shape[-2:]; c = a.crop
    out = torch.zeros(H, W, dtype=torch.long)
    for t in range(0, H, c):
        for l in range(0, W, c):
            out[t:t+c, l:l+c] = net(x[..., t:t+c, l:l+c]).argmax(1)[0]
    return {"whole": net(x).argmax(1)[0].numpy().astype(np.uint8), "tiled": out.numpy().astype(np.uint8)}


with torch.no_grad():
    predict_and_score(index.records, whole_and_tiled, {"whole": sc, "tiled": sc2}, 21, gt_path=lambda r: gt_masks[r.id])
s2 = sc2.summary(); print("tiled train mIoU", round(100*s2["miou"],1), "pixacc", round(100*s2["pixel_accuracy"],1))
s = sc.summary(); print("train mIoU", round(100*s["miou"],1), "pixacc", round(100*s["pixel_accuracy"],1), "classes", [index.class_names[c] for c in s["miou_classes"]] if isinstance(s["miou_classes"][0], int) else s["miou_classes"])
