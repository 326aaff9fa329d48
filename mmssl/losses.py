"""Pure loss functions. Each is tested against a loop-based reference written
from its paper's pseudocode (tests/unit/test_losses.py, tests/unit/test_losses_contrastive.py)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmssl import dist


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Softmax in fp32 under bf16/fp16 autocast; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def info_nce(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE (arXiv:1807.03748): -log softmax of the positive among positive + negatives.

    Args:
        query: (N, D); key: (N, D), the positive of each query.
        negatives: (N, M, D) per query, or (M, D) shared by all queries.
        temperature: logits are dot products divided by it.
    Returns: the mean loss over the N queries (scalar).
    """
    return positive_first_loss(info_nce_logits(query, key, negatives, temperature))


def info_nce_logits(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """(N, 1 + M) logits of ``info_nce`` (arguments as there), the positive in column 0, at least fp32."""
    pos = (query * key).sum(-1, keepdim=True)  # (N, 1)
    if negatives.dim() == 2:
        neg = query @ negatives.t()  # (N, M)
    else:
        neg = torch.einsum("nd,nmd->nm", query, negatives)
    return _at_least_fp32(torch.cat([pos, neg], dim=1) / temperature)


def positive_first_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, 1 + M) logits whose column 0 is the positive."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def positive_ranked_first(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of the rows of (N, 1 + M) logits whose positive (column 0) beats every negative."""
    return (logits[:, 0] > logits[:, 1:].max(dim=1).values).float().mean()


def cpc_info_nce(
    pred: torch.Tensor, pool: torch.Tensor, pos_index: torch.Tensor, neg_index: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CPC's InfoNCE for K prediction steps at once, negatives shared across steps.

    Args:
        pred: (K, N, D) predictions W_k c_t for N positions.
        pool: (P, D) the frames z that positives and negatives index into
            (all frames of all sequences on all processes).
        pos_index: (K, N) index in ``pool`` of z_{t+k}, the positive.
        neg_index: (N, M) indices in ``pool`` of the M negatives of each position.
            A negative that is the positive itself is masked out.
        valid: optional (K, N) bool, the (step, position) pairs scored; the others (a context whose
            target k steps on lies past the sequence's end) are left out of both means; every step
            needs at least one.
    Returns: (loss per step (K,), accuracy of the positive per step (K,)).
    """
    pos = torch.einsum("knd,knd->kn", pred, pool[pos_index])[..., None]  # (K, N, 1)
    neg = torch.einsum("knd,nmd->knm", pred, pool[neg_index])  # (K, N, M)
    neg = neg.masked_fill(neg_index[None] == pos_index[..., None], float("-inf"))
    logits = _at_least_fp32(torch.cat([pos, neg], dim=-1))  # (K, N, 1 + M); the positive is class 0
    loss = -logits.log_softmax(dim=-1)[..., 0]  # (K, N)
    hit = (logits.argmax(dim=-1) == 0).float()
    if valid is None:
        return loss.mean(dim=1), hit.mean(dim=1)
    weight = valid.to(loss.dtype)
    count = weight.sum(dim=1)  # at least one per step, which the caller's shapes ensure (no host read here)
    return (loss * weight).sum(dim=1) / count, (hit * weight).sum(dim=1) / count


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.1, return_accuracy: bool = False):
    """NT-Xent, SimCLR's normalised temperature-scaled cross-entropy (arXiv:2002.05709).

    Each of the 2B local embeddings is an anchor whose positive is the other view of
    the same example; every other embedding of BOTH views on ALL processes is a
    negative (2 * world * B - 2 of them). Candidates are gathered with gradients, so
    the mean over local anchors, averaged across processes by DDP, equals one
    process computing the loss on the global batch.

    Args:
        z0, z1: (B, D) the two views' embeddings on this process (normalised here).
        temperature: cosine similarities are divided by it.
        return_accuracy: also return how often the positive scores highest.
    Returns: the mean loss over the 2B local anchors (scalar), and with
        ``return_accuracy`` a detached accuracy (scalar) as well.
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"nt_xent expects two (B, D) tensors of one shape, "
                         f"got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    B, world = z0.shape[0], dist.world_size()
    z0, z1 = F.normalize(z0, dim=-1), F.normalize(z1, dim=-1)
    anchors = torch.cat([z0, z1])  # (2B, D)
    # (2 * world * B, D): view 0 of every process's examples, then view 1
    candidates = torch.cat([dist.all_gather(z0), dist.all_gather(z1)])
    i = torch.arange(B, device=z0.device) + dist.rank() * B  # global index of each local example
    self_index = torch.cat([i, i + world * B])  # where each anchor sits among the candidates
    pos_index = torch.cat([i + world * B, i])
    logits = _at_least_fp32(anchors @ candidates.t()) / temperature  # (2B, 2 * world * B)
    # An anchor is never its own candidate; indexing, not a (2B, 2 * world * B) mask, keeps memory at O(B).
    logits[torch.arange(2 * B, device=z0.device), self_index] = float("-inf")
    loss = F.cross_entropy(logits, pos_index)
    if not return_accuracy:
        return loss
    acc = (logits.detach().argmax(dim=1) == pos_index).float().mean()
    return loss, acc


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stop_grad(z)) (arXiv:2011.10566).

    Args:
        p: (B, D) predictions; z: (B, D) targets, which receive no gradient.
    Returns: the mean over the batch (scalar), in [-1, 1].
    """
    if p.shape != z.shape:
        raise ValueError(f"p and z must have one shape, got {tuple(p.shape)} and {tuple(z.shape)}")
    p, z = _at_least_fp32(p), _at_least_fp32(z.detach())
    return -(F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1).mean()


def _logsumexp_over_samples(x: torch.Tensor) -> torch.Tensor:
    """log sum exp of ``x`` (B, K) over the samples (rows) of all processes: (1, K)."""
    m = dist.all_gather_nograd(x.amax(dim=0, keepdim=True)).amax(dim=0, keepdim=True)  # one max for all processes
    return dist.all_reduce_sum(torch.exp(x - m).sum(dim=0, keepdim=True)).log() + m


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Equipartitioned soft assignments of samples to prototypes (SwAV, arXiv:2006.09882, Alg. 1).

    Q = exp(scores / eps) is scaled alternately so that every prototype gets the
    same total mass and every sample a total mass of 1. Sums over samples cover
    the samples of ALL processes, so the result equals one process running on
    the global batch. The scaling runs on log Q, every sum shifted by its max,
    so no score overflows or underflows exp (Alg. 1's first division by the
    total of Q only shifts log Q by a constant, which the next step removes).

    Args:
        scores: (B, K) prototype scores of this process's samples (no gradient flows).
        eps: entropy regularisation; smaller gives harder assignments.
        iters: number of (prototype, sample) normalisation rounds.
    Returns: (B, K) assignments in at least fp32, each row summing to 1.
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn expects (B, K) scores, got shape {tuple(scores.shape)}")
    if eps <= 0 or iters < 1:
        raise ValueError(f"sinkhorn needs eps > 0 and iters >= 1, got eps={eps}, iters={iters}")
    log_q = _at_least_fp32(scores.detach()) / eps  # (B, K)
    B, K = log_q.shape
    log_k, log_b = math.log(K), math.log(B * dist.world_size())
    for _ in range(iters):
        log_q = log_q - _logsumexp_over_samples(log_q) - log_k  # each prototype: mass 1/K
        log_q = log_q - log_q.logsumexp(dim=1, keepdim=True) - log_b  # each sample: mass 1/B_total
    return torch.exp(log_q + log_b)


def swav_loss(scores: list[torch.Tensor], assignments: list[torch.Tensor], temperature: float = 0.1,
              global_crops: int = 2) -> torch.Tensor:
    """SwAV's swapped prediction (arXiv:2006.09882).

    The assignment q_i of each global crop i is predicted from every other crop j:
    -sum_k q_i[k] log softmax(scores_j / T)[k], averaged over the batch and the
    global_crops * (n_crops - 1) pairs.

    Args:
        scores: n_crops tensors (B, K), prototype scores of each crop (global crops first).
        assignments: global_crops tensors (B, K), the (Sinkhorn) codes of the global crops.
        temperature: softmax temperature of the predictions.
        global_crops: how many leading crops have assignments.
    Returns: the mean loss (scalar).
    """
    if global_crops < 1 or len(assignments) != global_crops or len(scores) < max(2, global_crops):
        raise ValueError(f"swav_loss needs {global_crops} assignments and more than one crop, "
                         f"got {len(assignments)} assignments and {len(scores)} crops")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    log_p = [F.log_softmax(_at_least_fp32(s) / temperature, dim=-1) for s in scores]
    total, pairs = 0.0, 0
    for i, q in enumerate(assignments):
        for j, lp in enumerate(log_p):
            if j != i:
                total = total - (q.detach() * lp).sum(dim=-1).mean()
                pairs += 1
    return total / pairs


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 for x (N, D), y (M, D): (N, M), clamped at 0 against rounding.

    The product runs outside autocast: in bf16 the distances of unit vectors would be off by
    about 0.01, enough to change which negative is semi-hard against a margin of 0.2.
    """
    with torch.autocast(x.device.type, enabled=False):
        x, y = _at_least_fp32(x), _at_least_fp32(y)
        return (x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1)[None] - 2 * x @ y.t()).clamp_min(0)


def triplet_semihard(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, valid: torch.Tensor,
                     margin: float = 0.2, return_distances: bool = False):
    """Triplet loss with semi-hard negative mining (FaceNet, arXiv:1503.03832), as TCN uses it (arXiv:1704.06888).

    Distances are squared Euclidean. For anchor i, d_ap = ||a_i - p_i||^2 and d_an(j) = ||a_i - n_j||^2
    over its valid negatives j. The chosen negative follows TensorFlow's ``triplet_semihard_loss``,
    the implementation the TCN code calls: the closest negative that is farther than the positive
    (smallest d_an > d_ap); when every valid negative is at least as close as the positive, the
    farthest one (largest d_an), the least hard, instead of the hardest, which FaceNet warns can
    collapse the embedding early in training. The loss value equals FaceNet's semi-hard choice
    (d_ap < d_an < d_ap + margin) wherever such a negative exists, and is 0 where the nearest
    farther negative already clears the margin.

    Args:
        anchor, positive: (N, D) embeddings, expected L2-normalised (not normalised here, so the
            margin keeps its meaning on the unit sphere: squared distances lie in [0, 4]).
        negatives: (M, D) candidate negatives shared by all anchors.
        valid: bool (N, M), which candidates are negatives of which anchor.
        margin: alpha in relu(d_ap - d_an + alpha).
        return_distances: also return d_ap (N,) and the chosen d_an (N,), detached.
    Returns: the mean of relu(d_ap - d_an + margin) over the anchors with at least one valid
        negative (scalar; 0 when no anchor has one).
    """
    if anchor.shape != positive.shape or anchor.dim() != 2 or negatives.dim() != 2:
        raise ValueError(f"triplet_semihard expects anchor, positive (N, D) and negatives (M, D), got "
                         f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negatives.shape)}")
    if valid.shape != (anchor.shape[0], negatives.shape[0]) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool mask of shape {(anchor.shape[0], negatives.shape[0])}, "
                         f"got {valid.dtype} {tuple(valid.shape)}")
    anchor, positive, negatives = _at_least_fp32(anchor), _at_least_fp32(positive), _at_least_fp32(negatives)
    d_ap = (anchor - positive).pow(2).sum(-1)  # (N,)
    d_an = _squared_distances(anchor, negatives)  # (N, M)
    farther = valid & (d_an > d_ap[:, None])
    inf = torch.tensor(float("inf"), dtype=d_an.dtype, device=d_an.device)
    semihard = torch.where(farther, d_an, inf).amin(dim=1)  # (N,)
    easiest = torch.where(valid, d_an, -inf).amax(dim=1)
    has_neg = valid.any(dim=1)
    # torch.where, not arithmetic on the +-inf of empty rows: their gradient stays exactly 0.
    chosen = torch.where(farther.any(dim=1), semihard, easiest)
    chosen = torch.where(has_neg, chosen, d_ap.detach())
    loss = (F.relu(d_ap - chosen + margin) * has_neg).sum() / has_neg.sum().clamp_min(1)
    if not return_distances:
        return loss
    return loss, d_ap.detach(), chosen.detach()


def npairs(anchor: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None,
           l2_reg: float = 0.0) -> torch.Tensor:
    """Multi-class N-pair loss (Sohn, NeurIPS 2016), the TCN code's alternative to triplets.

    Anchor i scores every positive by a dot product; its own positive p_i is the target class
    among the positives that are valid negatives of it:
    -log( exp(a_i . p_i) / (exp(a_i . p_i) + sum_{j != i, valid[i, j]} exp(a_i . p_j)) ).

    Args:
        anchor, positive: (N, D) embeddings (not normalised here).
        valid: bool (N, N), whether p_j is a negative of a_i (e.g. False for frames of the same
            video too close in time); the diagonal is ignored, p_i is always the target. None:
            every other positive is a negative.
        l2_reg: lambda of the embedding regulariser lambda / 4 * (mean ||a||^2 + mean ||p||^2), the
            form of TensorFlow's ``npairs_loss``.
    Returns: the mean loss over the N anchors (scalar).
    """
    if anchor.shape != positive.shape or anchor.dim() != 2:
        raise ValueError(f"npairs expects anchor and positive of one shape (N, D), got "
                         f"{tuple(anchor.shape)} and {tuple(positive.shape)}")
    N = anchor.shape[0]
    if valid is not None and (valid.shape != (N, N) or valid.dtype != torch.bool):
        raise ValueError(f"valid must be a bool mask of shape {(N, N)}, got {valid.dtype} {tuple(valid.shape)}")
    anchor, positive = _at_least_fp32(anchor), _at_least_fp32(positive)
    with torch.autocast(anchor.device.type, enabled=False):  # fp32 logits, as the distances of triplet_semihard
        logits = anchor @ positive.t()  # (N, N)
    eye = torch.eye(N, dtype=torch.bool, device=anchor.device)
    if valid is not None:
        logits = logits.masked_fill(~(valid | eye), float("-inf"))
    loss = F.cross_entropy(logits, torch.arange(N, device=anchor.device))
    if l2_reg:
        loss = loss + 0.25 * l2_reg * (anchor.pow(2).sum(-1).mean() + positive.pow(2).sum(-1).mean())
    return loss
