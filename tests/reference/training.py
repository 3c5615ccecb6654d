"""PyTorch transcription of the fine-tuning recipe, written from the formulas (the SAM paper,
appendix A, and the issue), independently of sam_jax: the reference of the training parity tests
and of the training benchmark. Shapes as in sam_jax.train."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -2


# ------------------------------------------------------------------------------------ loss
def focal(logits, targets, alpha=0.25, gamma=2.0):
    """Mean over the last two axes of alpha_t (1 - p_t)^gamma BCE."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=(-2, -1))


def dice(logits, targets):
    p = torch.sigmoid(logits)
    num = 2 * (p * targets).sum(dim=(-2, -1)) + 1
    return 1 - num / (p.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) + 1)


def actual_iou(logits, targets):
    pred, gt = logits > 0, targets > 0.5
    return (pred & gt).sum(dim=(-2, -1)).float() / (pred | gt).sum(dim=(-2, -1)).float().clamp(min=1.0)


def loss_terms(logits, iou_pred, targets, candidates=None, wf=20.0, wd=1.0, l1=False, all_iou=False, alpha=0.25, gamma=2.0,
               sizes=None):
    """Per object: focal, dice, iou term and the supervised index (loops over objects, plainly).
    sizes (P, 2): each object's image (h, w) at the top left of the padded square; the terms are
    computed on that crop alone (None: the whole square)."""
    P, M = iou_pred.shape
    if candidates is None:
        candidates = torch.ones(P, M, dtype=torch.bool, device=logits.device)
    out = {"focal": [], "dice": [], "iou": [], "best": []}
    for i in range(P):
        lg, t = logits[i], targets[i]
        if sizes is not None:
            h, w = int(sizes[i][0]), int(sizes[i][1])
            lg, t = lg[:, :h, :w], t[:h, :w]
        t = t.expand_as(lg)
        f, d = focal(lg, t, alpha, gamma), dice(lg, t)
        a = actual_iou(lg, t).detach()
        e = (iou_pred[i] - a).abs() if l1 else (iou_pred[i] - a) ** 2
        idx = [m for m in range(M) if candidates[i, m]]
        combo = [float((wf * f[m] + wd * d[m]).detach()) for m in idx]
        best = idx[combo.index(min(combo))]  # first on ties
        out["focal"].append(f[best])
        out["dice"].append(d[best])
        out["iou"].append(torch.stack([e[m] for m in idx]).mean() if all_iou else e[best])
        out["best"].append(best)
    return {k: (torch.stack(v) if k != "best" else v) for k, v in out.items()}


def total_loss(terms, valid, num_objects, wf=20.0, wd=1.0, wi=1.0):
    n = max(int(num_objects), 1)
    v = valid.float()
    return (wf * (terms["focal"] * v).sum() + wd * (terms["dice"] * v).sum() + wi * (terms["iou"] * v).sum()) / n


# ------------------------------------------------------------------------ prompt sampling
def sample_point(gt, pred, noise, inside):
    """One click per object from the error region: (P, H, W) bool gt, pred, inside; noise (P, H, W)."""
    P, H, W = gt.shape
    points, labels = [], []
    for i in range(P):
        fn = gt[i] & ~pred[i] & inside[i]
        fp = ~gt[i] & pred[i] & inside[i]
        region = fn | fp
        if not region.any():  # already right: a negative click in the background
            region = ~gt[i] & inside[i]
        score = torch.where(region, noise[i], torch.full_like(noise[i], -1.0)).flatten()
        k = int(torch.argmax(score))  # first maximum, as jnp.argmax
        y, x = divmod(k, W)
        points.append([float(x), float(y)])
        labels.append(int(fn[y, x]))
    return torch.tensor(points, device=gt.device), torch.tensor(labels, dtype=torch.int32, device=gt.device)


def noisy_box(gt, noise, input_sizes, scale=0.1, bound=20.0, kind="normal"):
    """Box of each mask with each coordinate moved by its noise (normal: std scale*side clipped to
    +-bound; uniform: noise in [-1, 1] times min(scale*side, bound)), clamped to the image, sorted."""
    out = []
    for i in range(gt.shape[0]):
        ys, xs = torch.nonzero(gt[i], as_tuple=True)
        dev = gt.device
        box = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float() if len(xs) else torch.zeros(4, device=dev)
        side = torch.stack([box[2] - box[0], box[3] - box[1]] * 2)
        if kind == "normal":
            d = (noise[i] * scale * side).clamp(-bound, bound)
        else:
            d = noise[i] * torch.minimum(scale * side, torch.tensor(bound, device=dev))
        box = box + d
        h, w = float(input_sizes[i][0]), float(input_sizes[i][1])
        hi = torch.tensor([w - 1, h - 1, w - 1, h - 1], device=dev)
        box = torch.minimum(torch.maximum(box, torch.zeros(4, device=dev)), hi)
        out.append(torch.stack([torch.minimum(box[0], box[2]), torch.minimum(box[1], box[3]),
                                torch.maximum(box[0], box[2]), torch.maximum(box[1], box[3])]))
    return torch.stack(out)


# ----------------------------------------------------------------- the simulated rollout
def rollout(official, embeddings, gt, valid, input_sizes, is_box, box_noise, first_noise, mask_only, step_noise,
            num_objects, box_kind="normal", grad_through_masks=False):
    """Summed loss of the interactive rounds with the official prompt encoder and mask decoder,
    one object at a time. embeddings (P, C, h, w) under autograd; gt (P, S, S) bool; mask_only
    (T - 1, P) bool; step_noise: T - 1 arrays (P, S, S). Returns the loss and each object's clicks."""
    P, S = gt.shape[0], gt.shape[-1]
    r = torch.arange(S, device=gt.device)
    inside = (r[None, :, None] < input_sizes[:, 0, None, None]) & (r[None, None, :] < input_sizes[:, 1, None, None])
    boxes = noisy_box(gt, box_noise, input_sizes, kind=box_kind)
    pts, labs = sample_point(gt, torch.zeros_like(gt), first_noise, inside)
    clicks = [[] if is_box[i] else [(pts[i], int(labs[i]))] for i in range(P)]
    feedback = [None] * P
    pred = torch.zeros_like(gt)
    total = 0.0
    dense_pe = official.prompt_encoder.get_dense_pe()
    for t in range(len(step_noise) + 1):
        if t > 0:
            pts, labs = sample_point(gt, pred, step_noise[t - 1], inside)
            for i in range(P):
                if not mask_only[t - 1, i]:
                    clicks[i].append((pts[i], int(labs[i])))
        ups, ious, preds = [], [], []
        for i in range(P):
            points = None
            if clicks[i]:
                points = (torch.stack([c for c, _ in clicks[i]])[None], torch.tensor([[l for _, l in clicks[i]]], device=gt.device))
            sparse, dense = official.prompt_encoder(points=points, boxes=boxes[i : i + 1] if is_box[i] else None, masks=feedback[i])
            multi = len(clicks[i]) == 1 and not is_box[i]
            low, iou = official.mask_decoder(image_embeddings=embeddings[i : i + 1], image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                                             dense_prompt_embeddings=dense, multimask_output=multi)
            up = F.interpolate(low, (S, S), mode="bilinear", align_corners=False)
            sel = int(torch.argmax(iou[0]))
            feedback[i] = low[:, sel : sel + 1] if grad_through_masks else low[:, sel : sel + 1].detach()
            preds.append(up[0, sel] > 0)
            ups.append(up[0])
            ious.append(iou[0])
        terms = {"focal": [], "dice": [], "iou": []}
        for i in range(P):
            ti = loss_terms(ups[i][None], ious[i][None], gt[i : i + 1].float(), sizes=input_sizes[i : i + 1])
            for k in terms:
                terms[k].append(ti[k][0])
        total = total + total_loss({k: torch.stack(v) for k, v in terms.items()}, valid, num_objects)
        pred = torch.stack(preds)
    return total, clicks


# ------------------------------------------------------------------------------------ LoRA
class LoraLinear(torch.nn.Module):
    """`base(x) + scale * (x A) B` with A (in, r) and B (r, out): the LoRA update of a frozen
    nn.Linear, written from the paper's formula."""

    def __init__(self, base: torch.nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.scale = base, scale
        self.lora_a, self.lora_b = torch.nn.Parameter(a), torch.nn.Parameter(b)

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.lora_a) @ self.lora_b
