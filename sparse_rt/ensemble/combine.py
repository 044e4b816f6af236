"""How member outputs [M, B, C] (class scores on the last dimension) become one prediction."""

import itertools

import torch

COMBINE_RULES = ("mean_prob", "mean_logit", "vote")


def check_rule(rule):
    if rule not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {', '.join(COMBINE_RULES)}, got {rule!r}")
    return rule


def combine(outputs, rule="mean_prob"):
    """mean_prob: the mean of the members' softmax probabilities (FreeTickets' rule; members that
    return log-softmax give the same probabilities, since softmax(log_softmax(z)) = softmax(z)).
    mean_logit: the mean of the raw outputs. vote: the fraction of members whose top-1 class is
    each class (argmax breaks ties towards the lower class index)."""
    check_rule(rule)
    if rule == "mean_prob":
        return torch.softmax(outputs.float(), dim=-1).mean(0).to(outputs.dtype)
    if rule == "mean_logit":
        return outputs.mean(0)
    votes = torch.nn.functional.one_hot(outputs.argmax(-1), outputs.shape[-1])
    return votes.to(outputs.dtype).mean(0)


def uncertainty(outputs):
    """{"entropy": predictive entropy of the mean probabilities (nats), "disagreement": fraction of
    member pairs whose top-1 predictions differ (FreeTickets' prediction disagreement, per
    sample)}, each shaped like the batch."""
    probs = torch.softmax(outputs.float(), dim=-1).mean(0)
    entropy = -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(-1)
    top1 = outputs.argmax(-1)
    pairs = list(itertools.combinations(range(outputs.shape[0]), 2))
    if pairs:
        disagreement = torch.stack([(top1[i] != top1[j]).float() for i, j in pairs]).mean(0)
    else:
        disagreement = torch.zeros_like(entropy)
    return {"entropy": entropy, "disagreement": disagreement}
