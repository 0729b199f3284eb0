#!/usr/bin/env python3
"""The torchvision GPU baseline of `marlin bench vision`: the same batch (default 32 decoded
1920x1080 RGB images, u8 HWC as decoders give them, already on the GPU) through

  vit:     torchvision v2 resize(224x224, bilinear, antialias=True) + to float + ImageNet normalize
  qwen2vl: Transformers' Qwen2VLImageProcessor (torchvision backend) on the GPU, when installed;
           else the same steps by hand (smart_resize, bicubic antialias, normalize, patchify)

and prints images/s per pipeline, to set beside `marlin bench vision` run on the same machine.

    pip install torch torchvision transformers
    python3 tools/bench_vision_torch.py [--batch 32] [--height 1080] [--width 1920] [--iters 20]
"""
import argparse
import math

import torch
from torchvision.transforms.v2 import functional as tvF

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def synthetic_batch(n, h, w, device):
    """The pattern bench_vision.cpp makes: (x*(c+1) + 2y + ((x^y)&15)*5) mod 256, HWC."""
    y = torch.arange(h, device=device).view(h, 1, 1)
    x = torch.arange(w, device=device).view(1, w, 1)
    c = torch.arange(3, device=device).view(1, 1, 3)
    img = ((x * (c + 1) + y * 2 + ((x ^ y) & 15) * 5) & 255).to(torch.uint8)
    return img.unsqueeze(0).expand(n, h, w, 3).contiguous()


def vit(batch_hwc):
    chw = batch_hwc.permute(0, 3, 1, 2)  # a view, as torchvision receives decoded images
    resized = tvF.resize(chw, [224, 224], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
    return tvF.normalize(tvF.to_dtype(resized, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


def smart_resize(h, w, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280):
    h_bar, w_bar = round(h / factor) * factor, round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar, w_bar = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return h_bar, w_bar


def qwen2vl_by_hand(batch_hwc, patch=14, merge=2, temporal=2):
    n, h, w, _ = batch_hwc.shape
    rh, rw = smart_resize(h, w)
    x = tvF.resize(batch_hwc.permute(0, 3, 1, 2), [rh, rw], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    x = tvF.normalize(x.float(), [m * 255 for m in CLIP_MEAN], [s * 255 for s in CLIP_STD])
    gh, gw = rh // patch, rw // patch
    x = x.reshape(n, 3, gh // merge, merge, patch, gw // merge, merge, patch).permute(0, 2, 5, 3, 6, 1, 4, 7)
    x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, temporal, -1, -1)
    return x.reshape(n * gh * gw, 3 * temporal * patch * patch)


def qwen2vl_processor():
    try:
        from transformers import Qwen2VLImageProcessor
    except ImportError:
        return None
    proc = Qwen2VLImageProcessor()
    return lambda batch_hwc: proc(images=list(batch_hwc.permute(0, 3, 1, 2)), return_tensors="pt",
                                  device="cuda")["pixel_values"]


def time_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    batch = synthetic_batch(a.batch, a.height, a.width, "cuda")
    print(f"torchvision {__import__('torchvision').__version__} on {torch.cuda.get_device_name()}: "
          f"{a.batch} images of {a.width}x{a.height} u8 HWC, {a.iters} timed runs (median)")
    print(f"{'pipeline':<30} {'ms':>10} {'images/s':>12}")
    rows = [("vit (torchvision)", lambda: vit(batch)), ("qwen2vl (by hand, torchvision)", lambda: qwen2vl_by_hand(batch))]
    proc = qwen2vl_processor()
    if proc is not None:
        rows.append(("qwen2vl (Transformers, cuda)", lambda: proc(batch)))
    for name, fn in rows:
        ms = time_ms(fn, a.iters)
        print(f"{name:<30} {ms:10.3f} {a.batch / (ms * 1e-3):12.1f}")


if __name__ == "__main__":
    main()
