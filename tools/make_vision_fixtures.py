#!/usr/bin/env python3
"""Writes the vision fixtures of tests/vision: inputs made here (seeded), the outputs torchvision
and Transformers' image processors give for them, and a manifest.json that the C++ tests read.

    pip install torch torchvision transformers pillow
    python3 tools/make_vision_fixtures.py            # writes tests/fixtures/vision/

Outputs that are 8-bit by construction (a u8 resize; a processor that rounds to 8 bits before
normalizing) are stored as u8 and checked here to decode back to the reference exactly, which
keeps the fixtures small (docs/VISION.md).
"""
import json
import math
import pathlib
import shutil

import numpy as np
import PIL.Image
import torch
import torchvision
import transformers
from torchvision.transforms.v2 import functional as tvF
from transformers import Qwen2VLImageProcessor

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vision"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BILINEAR = tvF.InterpolationMode.BILINEAR
BICUBIC = tvF.InterpolationMode.BICUBIC

manifest = {"versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "transformers": transformers.__version__, "pillow": PIL.__version__},
            "ops": [], "qwen2vl": [], "vit": [], "files": []}


def save(name, array):
    np.save(OUT / name, np.ascontiguousarray(array))
    return name


def pattern(h, w, c, seed):
    """Gradients, a sinusoid, sharp edges and noise: every filter tap matters, nothing is flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for k in range(c):
        p = 255 * (x / max(w - 1, 1)) * (0.3 + 0.2 * k) + 200 * (y / max(h - 1, 1)) * (0.5 - 0.15 * k)
        p += 40 * np.sin((x * (0.7 + k) + y * 0.45) / 2.3)
        p += 60 * (((x // (3 + k)) + (y // 4)) % 2)  # checkerboard edges
        p += rng.normal(0, 12, (h, w))
        planes.append(p)
    img = np.stack(planes, 0)
    if c == 4:  # a smooth alpha with fully opaque and fully transparent corners
        img[3] = np.clip(255 * (x + y) / (w + h - 2) * 1.4 - 40, 0, 255)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)  # [C, H, W]


def photo(h, w, seed):
    """A photo-like RGB image: a sky gradient, soft discs, a horizon and mild sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    img[..., 0] = 90 + 80 * y / h
    img[..., 1] = 140 + 60 * y / h
    img[..., 2] = 230 - 50 * y / h
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 10, h / 4)
        color = rng.uniform(20, 240, 3)
        mask = np.clip(r - np.hypot(y - cy, x - cx), 0, 2) / 2
        img = img * (1 - mask[..., None]) + color * mask[..., None]
    ground = y > h * 0.7 + 6 * np.sin(x / 9)
    img[ground] = img[ground] * 0.4 + np.array([70, 110, 40]) * 0.6
    img += rng.normal(0, 3, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)  # [H, W, 3]


def op_case(op, input_name, expected, **params):
    manifest["ops"].append({"op": op, "input": input_name, "expected": expected, **params})


def resize_cases(name, img, targets, float_input=False):
    t = torch.from_numpy(img)
    if float_input:
        t = t.float() / 255
    for mode, op in ((BILINEAR, "resize_bilinear"), (BICUBIC, "resize_bicubic")):
        for h, w in targets:
            out = tvF.resize(t, [h, w], interpolation=mode, antialias=True).numpy()
            tag = "f32" if float_input else "u8"
            op_case(op, name if not float_input else name, save(f"{op}_{name}_{tag}_{h}x{w}.npy", out),
                    size=[h, w], float_input=float_input)


def qwen_pixels(pv):
    """The 8-bit pixels behind Qwen2-VL pixel_values (columns are (c, t, ph, pw)), checked to
    give the processor's floats back exactly."""
    per_c = pv.shape[1] // 3
    mean = np.repeat(np.array(CLIP_MEAN, np.float32), per_c)
    std = np.repeat(np.array(CLIP_STD, np.float32), per_c)
    pixels = np.rint((pv * std + mean) * 255)
    assert pixels.min() >= 0 and pixels.max() <= 255
    pixels = pixels.astype(np.uint8)
    back = (pixels.astype(np.float32) / 255 - mean) / std
    assert np.abs(back - pv).max() < 1e-5, np.abs(back - pv).max()
    return pixels


def qwen_case(name, images, **kwargs):
    """images: list of [C, H, W] u8 arrays (or a stored file's PIL image)."""
    proc = Qwen2VLImageProcessor(**kwargs)
    inputs = [torch.from_numpy(i) for i in images]
    out = proc(images=inputs, return_tensors="pt")
    pv = out["pixel_values"].numpy()
    grid = out["image_grid_thw"].numpy().astype(np.int64)
    pixels = qwen_pixels(pv)
    case = {"name": name, "inputs": [save(f"qwen_in_{name}_{k}.npy", i) for k, i in enumerate(images)],
            "pixels": save(f"qwen_out_{name}.npy", pixels), "grid_thw": save(f"qwen_grid_{name}.npy", grid),
            "shape": list(pv.shape), "head": [float(v) for v in pv.reshape(-1)[:8]],
            "min_pixels": proc.size["shortest_edge"], "max_pixels": proc.size["longest_edge"]}
    manifest["qwen2vl"].append(case)
    return pv


def vit_case(name, img, size):
    """torchvision: resize the u8 image (antialias), to float in [0, 1], ImageNet normalize."""
    t = torch.from_numpy(img)
    resized = tvF.resize(t, list(size), interpolation=BILINEAR, antialias=True)
    ref = tvF.normalize(tvF.to_dtype(resized, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
    back = (resized.float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert (back - ref).abs().max() < 1e-5
    manifest["vit"].append({"name": name, "input": save(f"vit_in_{name}.npy", img), "size": list(size),
                            "pixels": save(f"vit_out_{name}.npy", resized.numpy())})


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    torch.manual_seed(0)

    a = pattern(37, 53, 3, 1)
    b = pattern(61, 29, 3, 2)
    gray = pattern(33, 45, 1, 3)
    rgba = pattern(29, 41, 4, 4)
    for name, img in (("a", a), ("b", b), ("gray", gray), ("rgba", rgba)):
        save(f"in_{name}.npy", img)
    # Down, up, mixed, identity, extreme down, single-row outputs.
    resize_cases("in_a.npy", a, [(19, 20), (81, 67), (9, 106), (37, 53), (4, 5), (1, 3)])
    resize_cases("in_b.npy", b, [(30, 14), (64, 31), (200, 7)])
    resize_cases("in_gray.npy", gray, [(16, 50), (47, 23)])
    resize_cases("in_rgba.npy", rgba, [(14, 60)])
    resize_cases("in_a.npy", a, [(19, 20), (81, 67)], float_input=True)

    ta = torch.from_numpy(a)
    for h, w in ((20, 30), (36, 52), (35, 51), (40, 60), (20, 60), (37, 53)):
        op_case("center_crop", "in_a.npy", save(f"center_crop_a_{h}x{w}.npy", tvF.center_crop(ta, [h, w]).numpy()),
                size=[h, w])
    for n in (1, 3):
        op_case("rgb_to_grayscale", "in_a.npy", save(f"gray_a_u8_{n}.npy", tvF.rgb_to_grayscale(ta, n).numpy()),
                channels=n, float_input=False)
    op_case("rgb_to_grayscale", "in_a.npy", save("gray_a_f32.npy", tvF.rgb_to_grayscale(ta.float() / 255).numpy()),
            channels=1, float_input=True)
    op_case("normalize", "in_a.npy", save("normalize_a.npy", tvF.normalize(ta.float() / 255, CLIP_MEAN, CLIP_STD).numpy()),
            mean=list(CLIP_MEAN), std=list(CLIP_STD))
    proc = Qwen2VLImageProcessor()
    for name in ("gray", "rgba"):
        img = torch.from_numpy(np.load(OUT / f"in_{name}.npy"))
        op_case("to_rgb", f"in_{name}.npy", save(f"to_rgb_{name}.npy", proc.convert_to_rgb(img).numpy()))

    # Qwen2-VL: the min_pixels branch (a), the plain rounding branch with halves (42x70 rounds
    # to even), the max_pixels branch, a long strip, gray and RGBA, a batch of two.
    qwen_case("a", [a])
    qwen_case("half", [pattern(42, 70, 3, 5)])
    big = np.ascontiguousarray(photo(96, 128, 6).transpose(2, 0, 1))
    qwen_case("photo", [big])
    qwen_case("photo_max", [big], max_pixels=28 * 28 * 4)
    qwen_case("strip", [pattern(30, 900, 3, 7)])
    qwen_case("gray", [gray])
    qwen_case("rgba", [rgba])
    qwen_case("batch", [a, np.ascontiguousarray(a[:, ::-1, :])])
    # The PIL backend (Qwen2VLImageProcessorPil) rounds between its two passes: how far it is.
    pil = transformers.Qwen2VLImageProcessorPil()
    for name, img in (("a", a), ("photo", big)):
        ref = Qwen2VLImageProcessor()(images=[torch.from_numpy(img)], return_tensors="np")["pixel_values"]
        got = pil(images=[PIL.Image.fromarray(img.transpose(1, 2, 0))], return_tensors="np")["pixel_values"]
        steps = np.abs(qwen_pixels(ref).astype(int) - qwen_pixels(got).astype(int))
        manifest.setdefault("pil_backend_max_diff_in_8bit_steps", {})[name] = int(steps.max())

    vit_case("photo", np.ascontiguousarray(photo(240, 300, 8).transpose(2, 0, 1)), (224, 224))
    vit_case("a_up", a, (64, 48))

    # Files: PNG decodes exactly; JPEG decoders may differ by a few levels (stb vs libjpeg).
    files = [("photo.png", photo(97, 131, 9), "PNG", {}), ("photo.jpg", photo(97, 131, 9), "JPEG", {"quality": 90}),
             ("gray.png", photo(40, 50, 10)[..., 1], "PNG", {}), ("gray.jpg", photo(40, 50, 10)[..., 1], "JPEG", {"quality": 92}),
             ("rgba.png", pattern(45, 67, 4, 11).transpose(1, 2, 0), "PNG", {})]
    for fname, pixels, fmt, opts in files:
        PIL.Image.fromarray(pixels).save(OUT / fname, fmt, **opts)
        decoded = np.array(PIL.Image.open(OUT / fname))
        if decoded.ndim == 2:
            decoded = decoded[..., None]
        manifest["files"].append({"file": fname, "decoded": save(f"decoded_{fname}.npy", decoded),
                                  "exact": fmt == "PNG"})
    # The pipelines on a decoded file, as a user would run them (Transformers opens with PIL).
    png = np.array(PIL.Image.open(OUT / "photo.png")).transpose(2, 0, 1)
    qwen_case("file_png", [np.ascontiguousarray(png)])

    with open(OUT / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1e6:.2f} MB, to {OUT}")
    print("PIL backend vs torchvision backend (8-bit steps):", manifest["pil_backend_max_diff_in_8bit_steps"])


if __name__ == "__main__":
    main()
