"""Picture quality of easel's options, measured: runs `easel run` for each pair of images
and each variant (a list of `--set` overrides on presets/default.yaml), then prints a
Markdown table with, per run:

  border   the dark frame: luminance (0.299 R + 0.587 G + 0.114 B, 0..255) of the outer
           8-pixel frame against the interior's, as the mean of |mean_frame -
           mean_interior| and |std_frame - std_interior|. The content photo's own figure
           is printed as the reference: a result near it has no frame of its own.
  ssim     SSIM (scikit-image, data_range 255) of the result's luminance against the
           content's at the same size: how much of the subject's structure survives.
  axis     the share of gradient energy (Sobel) whose direction lies within 7.5 degrees
           of horizontal or vertical; 0.167 for directions spread evenly. Straight-edged
           rectangles raise it; the style image's own figure at the same size is printed
           as the reference.
  J_style  the final style cost (unweighted sum over layers with their lambdas, as
           losses.jsonl has it), and J, and the run's time in seconds.

Needs numpy, pillow and scikit-image (pip install them; they are not easel's
dependencies). Example, from the repository root:

    python3 bench/quality.py --size 512x512 --pairs chelsea:starry_night \\
        --variants seed replicate --out /tmp/quality
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(ROOT, "presets", "images")
FRAME = 8

# crowsonkb's style-transfer-pytorch weights its style layers 256:64:16:4:1, normalised.
CROWSON = [256, 64, 16, 4, 1]
CROWSON_SETS = [
    f"style_layers.{layer}={w / sum(CROWSON):.6g}"
    for layer, w in zip(["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"], CROWSON)
]

VARIANTS = {
    "seed": [],
    "replicate": ["padding=replicate"],
    "init-content": ["init.kind=content"],
    "layers-256:1": CROWSON_SETS,
    "coarse-to-fine": ["scales.min_side=128"],
    "ema": ["ema=0.99"],
    "max-pooling": ["pooling=max"],
    "lr-1": ["optimizer.lr=1.0"],
    "no-conv5_1": ["style_layers.conv5_1=0"],
    "style-scale-1.5": ["style_scale=1.5"],
    "tv": ["tv_weight=10"],
}


def luminance(img):
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    return a @ np.array([0.299, 0.587, 0.114])


def border(y):
    inner = np.zeros(y.shape, dtype=bool)
    inner[FRAME:-FRAME, FRAME:-FRAME] = True
    f, i = y[~inner], y[inner]
    return (abs(f.mean() - i.mean()) + abs(f.std() - i.std())) / 2


def axis_share(y, tolerance=7.5):
    gx = np.zeros_like(y)
    gy = np.zeros_like(y)
    # Sobel, interior only.
    gx[1:-1, 1:-1] = (y[:-2, 2:] + 2 * y[1:-1, 2:] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[1:-1, :-2] + y[2:, :-2])
    gy[1:-1, 1:-1] = (y[2:, :-2] + 2 * y[2:, 1:-1] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[:-2, 1:-1] + y[:-2, 2:])
    energy = gx**2 + gy**2
    angle = np.degrees(np.arctan2(gy, gx)) % 90.0  # 0 and 90 are the axes
    near = (angle <= tolerance) | (angle >= 90.0 - tolerance)
    return float(energy[near].sum() / energy.sum())


def resized(name, size):
    return Image.open(os.path.join(IMAGES, name)).convert("RGB").resize(size, Image.LANCZOS)


def image_file(stem):
    for ext in (".png", ".jpg"):
        if os.path.exists(os.path.join(IMAGES, stem + ext)):
            return stem + ext
    sys.exit(f"no image {stem}.png or {stem}.jpg in {IMAGES}")


def run(args, pair, variant, sets):
    content, style = pair
    out = os.path.join(args.out, f"{content.split('.')[0]}-{style.split('.')[0]}-{variant}")
    final = None
    if os.path.isdir(out):
        for d in sorted(os.listdir(out)):
            f = os.path.join(out, d, "final.png")
            if os.path.exists(f):
                final = os.path.join(out, d)
    if final is None:
        w, h = args.size
        cmd = [args.easel, "run", os.path.join(ROOT, "presets", "default.yaml"), "--ui", "plain", "-q"]
        cmd += ["--out", out, "--backend", args.backend]
        if args.weights:
            cmd += ["--weights", args.weights]
        base = [f"content=images/{content}", f"style=images/{style}", f"size.width={w}", f"size.height={h}"]
        base += [f"iterations={args.iterations}", f"save_every={args.iterations}"]
        for s in base + sets:
            cmd += ["--set", s]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        t = time.time()
        subprocess.run(cmd, check=True)
        print(f"  {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        final = os.path.join(out, sorted(os.listdir(out))[-1])
    with open(os.path.join(final, "losses.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    result = Image.open(os.path.join(final, "final.png")).convert("RGB")
    y = luminance(result)
    c = luminance(resized(content, result.size))
    return {
        "pair": f"{content} + {style}",
        "variant": variant,
        "sets": sets,
        "border": border(y),
        "ssim": float(structural_similarity(y, c, data_range=255.0)),
        "axis": axis_share(y),
        "J_style": last["J_style"],
        "J": last["J"],
        "seconds": last["elapsed_s"],
        "run": final,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--easel", default=os.path.join(ROOT, "target", "release", "easel"))
    p.add_argument("--weights", help="a VGG-19 weights file (easel's default otherwise)")
    p.add_argument("--backend", default="cpu")
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--pairs", default="chelsea:starry_night", help="content:style,...")
    p.add_argument("--variants", nargs="+", default=["seed"], help=f"of {', '.join(VARIANTS)}, or NAME=KEY=VALUE;KEY=VALUE")
    p.add_argument("--out", default="quality-runs", help="run directories (reused when finished)")
    p.add_argument("--json", help="also write the rows here, one JSON object per line")
    args = p.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    pairs = [tuple(image_file(s) for s in pair.split(":")) for pair in args.pairs.split(",")]

    variants = []
    for v in args.variants:
        if "=" in v:
            name, sets = v.split("=", 1)
            variants.append((name, sets.split(";")))
        elif v in VARIANTS:
            variants.append((v, VARIANTS[v]))
        else:
            sys.exit(f"unknown variant {v!r}: give one of {', '.join(VARIANTS)} or NAME=KEY=VALUE;KEY=VALUE")
    rows = [run(args, pair, name, sets) for pair in pairs for name, sets in variants]
    print("| pair | variant | border | SSIM | axis | J_style | J | time s |")
    print("|---|---|---|---|---|---|---|---|")
    for content, style in pairs:
        y = luminance(resized(content, args.size))
        s = luminance(resized(style, args.size))
        print(f"| {content} + {style} | *content photo* | {border(y):.2f} | 1 | {axis_share(y):.3f} | | | |")
        print(f"| | *style image* | {border(s):.2f} | | {axis_share(s):.3f} | | | |")
        for r in rows:
            if r["pair"] == f"{content} + {style}":
                print(
                    f"| | {r['variant']} | {r['border']:.2f} | {r['ssim']:.3f} | {r['axis']:.3f} "
                    f"| {r['J_style']:.3g} | {r['J']:.3g} | {r['seconds']:.0f} |"
                )
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
