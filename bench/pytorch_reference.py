"""PyTorch's time per iteration for the seed's algorithm, for `easel bench` to be compared
with in the same session (run by hand; PyTorch is never a dependency of easel).

    python3 bench/pytorch_reference.py --weights weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        [--sizes 400x300,512x512] [--iters 3] [--threads 2] [--device cpu|cuda]

Same network (VGG-19 to conv5_1 with average pooling, real Keras weights), same costs
(alpha 10, beta 40, conv4_2, five style layers), Adam lr 2.0 on the pixels.
"""
import argparse
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEANS = np.array([123.68, 116.779, 103.939], dtype=np.float32)
BLOCKS = [2, 2, 4, 4, 4]
STYLE = [0, 2, 4, 8, 12]  # conv1_1 conv2_1 conv3_1 conv4_1 conv5_1
CONTENT = 9  # conv4_2


def weights(path, device):
    convs = []
    with h5py.File(path, "r") as f:
        for b, n in enumerate(BLOCKS, 1):
            for c in range(1, n + 1):
                g = f"block{b}_conv{c}"
                w = np.array(f[g][f"{g}_W_1:0"]).transpose(3, 2, 0, 1)
                if not convs:
                    w = w[:, ::-1]
                convs.append((torch.tensor(np.ascontiguousarray(w), device=device),
                              torch.tensor(np.array(f[g][f"{g}_b_1:0"]), device=device)))
    return convs


def forward(convs, x):
    out = []
    for i, (w, b) in enumerate(convs[:13]):
        x = F.relu(F.conv2d(x, w, b, padding=1))
        out.append(x)
        if i in (1, 3, 7, 11):
            x = F.avg_pool2d(x, 2)
    return out


def gram(a):
    c = a.shape[1]
    m = a.reshape(c, -1)
    return m @ m.t()


def image(path, w, h, device):
    a = np.asarray(Image.open(path).convert("RGB").resize((w, h), Image.LANCZOS), dtype=np.float32) - MEANS
    return torch.tensor(a.transpose(2, 0, 1)[None].copy(), device=device)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--sizes", default="400x300,512x512")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    convs = weights(a.weights, dev)
    print(f"pytorch {torch.__version__} on {a.device} ({a.threads} threads)")
    for s in a.sizes.split(","):
        w, h = map(int, s.split("x"))
        c = image("presets/images/chelsea.png", w, h, dev)
        st = image("presets/images/starry_night.jpg", w, h, dev)
        with torch.no_grad():
            ac = forward(convs, c)[CONTENT]
            gs = [gram(t) for i, t in enumerate(forward(convs, st)) if i in STYLE]
        x = (0.6 * (torch.rand_like(c) * 40 - 20) + 0.4 * c).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=2.0, eps=1e-8)
        times = []
        for k in range(a.iters + 1):
            t = time.perf_counter()
            opt.zero_grad()
            acts = forward(convs, x)
            ag = acts[CONTENT]
            _, cc, hh, ww = ag.shape
            j = 10 * ((ac - ag) ** 2).sum() / (4 * cc * hh * ww)
            for g, i in zip(gs, STYLE):
                a_ = acts[i]
                _, cc, hh, ww = a_.shape
                j = j + 40 * 0.2 * ((g - gram(a_)) ** 2).sum() / (4 * cc * cc * (hh * ww) ** 2)
            j.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if k > 0:
                times.append(time.perf_counter() - t)
        print(f"{s:>10} {sum(times) / len(times):12.3f} s/iteration")


if __name__ == "__main__":
    main()
