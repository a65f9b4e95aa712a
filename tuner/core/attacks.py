"""ℓ∞ attacks in [0, 1] pixel space: PGD, and APGD (Croce & Hein, ICML 2020), registered by name.

Every attack runs the model in eval mode (BatchNorm uses running statistics and moves none of
them) and hands it back in the mode the caller had; gradients are taken with respect to the
input only, so no parameter gradient is created or accumulated.

Registered attacks share one signature, `attack(model, x, y, *, epsilon, **options) -> x_adv`,
and return one point of the ε-ball (intersected with [0, 1]) per example: for APGD the point of
lowest margin z_y − max_{i≠y} z_i seen, hence a misclassified one whenever one was found.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tuner.errors import ConfigError
from tuner.registry import Registry

Start = Literal["uniform", "normal", "none"]
# Maps the attacked logits to a per-example loss to maximize.
AttackLoss = Callable[[torch.Tensor], torch.Tensor]
# attack(model, x, y, *, epsilon, **options) -> x_adv, by name
ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack")
register_attack = ATTACKS.register
list_attacks = ATTACKS.names
get_attack = ATTACKS.get

APGD_STEPS = 100
APGD_TARGETS = 9
MOMENTUM = 0.75  # APGD's α: weight of the new step, 1 − α that of the previous move
OSCILLATION = 0.75  # APGD's ρ: halve the step when at most this share of a period's steps raised the loss
# Checkpoints sit at ⌈p_j·N⌉: p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), in hundredths.
FIRST_PERIOD, PERIOD_SHRINK, LEAST_PERIOD = 22, 3, 6


@dataclass(frozen=True)
class AttackResult:
    x_adv: torch.Tensor
    # Per example, the largest ℓ1 norm (dual of ℓ∞) of the loss gradient over the iterates:
    # the local Lipschitz probe of REFERENCE.md section 3 when the loss is the TRADES KL.
    max_grad_l1: torch.Tensor


@contextmanager
def eval_mode(model: nn.Module):
    """Put `model` in eval mode for the block and restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def linf_box(x: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the bounds of the ℓ∞ ball of radius `epsilon` around `x` intersected with [0, 1]."""
    return (x - epsilon).clamp(0.0, 1.0), (x + epsilon).clamp(0.0, 1.0)


def pgd_linf(model: nn.Module, x: torch.Tensor, loss_fn: AttackLoss, *, epsilon: float, step_size: float,
             steps: int, start: Start | torch.Tensor = "uniform") -> AttackResult:
    """Maximize `loss_fn(model(x'))` over the ℓ∞ ball of radius `epsilon` around `x`, intersected with [0, 1].

    `start`: "uniform" in the ball (Madry et al., PGD evaluation), "normal" for x + 0.001·N(0, 1)
    (TRADES), "none" for x itself, or a tensor: that point (where an earlier attack stopped). Each
    step moves by `step_size`·sign(gradient), projects to the ball, then clamps to [0, 1].
    """
    x = x.detach()
    lower, upper = linf_box(x, epsilon)
    if isinstance(start, torch.Tensor):
        x_adv = start.detach()
    elif start == "uniform":
        x_adv = x + torch.empty_like(x).uniform_(-epsilon, epsilon)
    elif start == "normal":
        x_adv = x + 0.001 * torch.randn_like(x)
    else:
        x_adv = x.clone()
    x_adv = torch.clamp(x_adv, lower, upper)
    max_grad_l1 = torch.zeros(len(x), device=x.device)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            max_grad_l1 = torch.maximum(max_grad_l1, grad.abs().flatten(1).sum(1))
            x_adv = torch.clamp(x_adv.detach() + step_size * grad.sign(), lower, upper)
    return AttackResult(x_adv.detach(), max_grad_l1)


@register_attack("pgd")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int = 20,
        step_size: float | None = None) -> torch.Tensor:
    """PGD on cross-entropy with the true labels from a uniform random start (REFERENCE.md section 3); step ε/4 by default."""
    return pgd_linf(model, x, lambda logits: ce_loss(logits, y), epsilon=epsilon,
                    step_size=epsilon / 4 if step_size is None else step_size, steps=steps, start="uniform").x_adv


# APGD losses: (logits, y, target) -> per-example loss to maximize; `target` is unused by the untargeted ones.
ApgdLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{i≠y} z_i per example: negative exactly when another class scores higher than y."""
    return logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -math.inf).amax(1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12), π sorting the logits down."""
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: −(z_y − z_t) / (z_π1 − ½(z_π3 + z_π4) + 1e-12)."""
    top = logits.topk(4, dim=1).values
    gap = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]
    return -gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def checkpoint_schedule(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step: 22, 41, 57, 70, 80, 87, 93, 99 for 100 steps.

    The first period is ⌈0.22·N⌉ and each next one max(previous − 0.03·N, 0.06·N), the
    checkpoints being rounded up from their exact fractions of N.
    """
    points, at, period = [], FIRST_PERIOD, FIRST_PERIOD
    while at <= 100:
        points.append(-(-at * steps // 100))
        period = max(period - PERIOD_SHRINK, LEAST_PERIOD)
        at += period
    return sorted(set(points))


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: ApgdLoss, epsilon: float,
         steps: int = APGD_STEPS, target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run maximizing `loss` from a random start; returns the lowest-margin point per example and its margin.

    Sign steps of size η (2ε at first) with momentum α = 0.75 (none on the first step); at each
    checkpoint, η halves for the examples where at most ρ = 0.75 of the steps since the last one
    raised the loss, or where η was not halved last time and the best loss did not improve, and
    these restart from their best-loss point (with its gradient, no momentum). An example leaves
    the run once misclassified: the rest of the run cannot change that answer.
    """
    x = x.detach()
    n = len(x)
    best_x, best_margin = x.clone(), torch.full((n,), math.inf, device=x.device)
    checkpoints = set(checkpoint_schedule(steps))
    lower, upper = linf_box(x, epsilon)
    direction = 2 * torch.rand_like(x) - 1  # random start on the boundary of the ε-ball
    scale = epsilon / direction.flatten(1).abs().amax(1).clamp_min(1e-12)
    start = torch.clamp(x + view(scale, x) * direction, lower, upper)

    def evaluate(point: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None):
        point.requires_grad_(True)
        logits = model(point)
        value = loss(logits, y, target)
        (grad,) = torch.autograd.grad(value.sum(), point)
        return value.detach(), grad, margin(logits.detach(), y).float()  # the margins kept are float32, whatever the logits

    with eval_mode(model), torch.enable_grad():
        value, grad, point_margin = evaluate(start, y, target)
        state = {"index": torch.arange(n, device=x.device), "y": y, "lower": lower, "upper": upper,
                 "x": start.detach(), "previous": start.detach(), "grad": grad, "value": value,
                 "best": start.detach(), "best_grad": grad, "best_value": value, "best_at_check": value,
                 "step": torch.full((n,), 2 * epsilon, device=x.device), "rises": torch.zeros(n, device=x.device),
                 "halved": torch.zeros(n, dtype=torch.bool, device=x.device)}
        if target is not None:
            state["target"] = target
        last_check = 0
        for iteration in range(steps + 1):
            if iteration:
                a = 1.0 if iteration == 1 else MOMENTUM
                z = torch.clamp(state["x"] + view(state["step"], x) * state["grad"].sign(), state["lower"], state["upper"])
                moved = torch.clamp(state["x"] + a * (z - state["x"]) + (1 - a) * (state["x"] - state["previous"]),
                                    state["lower"], state["upper"])
                value, grad, point_margin = evaluate(moved, state["y"], state.get("target"))
                state["previous"], state["x"], state["grad"] = state["x"], moved.detach(), grad
                state["rises"] += value > state["value"]
                state["value"] = value
                better = value > state["best_value"]
                for key, new in (("best", state["x"]), ("best_grad", grad), ("best_value", value)):
                    state[key] = torch.where(view(better, state[key]), new, state[key])
            index = state["index"]
            lower_margin = point_margin < best_margin[index]
            best_x[index[lower_margin]] = state["x"][lower_margin]
            best_margin[index[lower_margin]] = point_margin[lower_margin]
            if iteration in checkpoints:
                halve = (state["rises"] <= OSCILLATION * (iteration - last_check)) | (
                    ~state["halved"] & (state["best_value"] <= state["best_at_check"]))
                state["step"] = torch.where(halve, state["step"] / 2, state["step"])
                for key, source in (("x", "best"), ("previous", "best"), ("grad", "best_grad"), ("value", "best_value")):
                    state[key] = torch.where(view(halve, state[key]), state[source], state[key])
                state["halved"], state["best_at_check"], last_check = halve, state["best_value"], iteration
                state["rises"] = torch.zeros_like(state["rises"])
            alive = point_margin >= 0
            if not alive.all():
                state = {key: tensor[alive] for key, tensor in state.items()}
                if not len(state["index"]):
                    break
    return best_x, best_margin


def view(per_example: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`per_example` (N,) shaped to broadcast against `like` (N, ...)."""
    return per_example.view(-1, *[1] * (like.dim() - 1))


@register_attack("apgd-ce")
def apgd_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int = APGD_STEPS) -> torch.Tensor:
    """APGD on cross-entropy, one run."""
    return apgd(model, x, y, loss=ce_loss, epsilon=epsilon, steps=steps)[0]


@register_attack("apgd-dlr")
def apgd_dlr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int = APGD_STEPS) -> torch.Tensor:
    """APGD on the (untargeted) DLR loss, one run."""
    with torch.no_grad(), eval_mode(model):
        require_classes("apgd-dlr", model(x[:1]).shape[1], 3)
    return apgd(model, x, y, loss=dlr_loss, epsilon=epsilon, steps=steps)[0]


@register_attack("apgd-t")
def apgd_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int = APGD_STEPS,
           targets: int = APGD_TARGETS) -> torch.Tensor:
    """APGD on the targeted DLR loss, one run per target on the examples still correctly classified.

    The targets are the `targets` classes other than y that score highest on the clean input
    (the 2nd … (k+1)-th most likely when x is classified correctly), at most classes − 1.
    """
    with torch.no_grad(), eval_mode(model):
        clean_logits = model(x)
    classes = clean_logits.shape[1]
    require_classes("apgd-t", classes, 4)
    ranked = clean_logits.scatter(1, y[:, None], -math.inf).argsort(1, descending=True)[:, :min(targets, classes - 1)]
    best_x, best_margin = x.detach().clone(), torch.full((len(x),), math.inf, device=x.device)
    for k in range(ranked.shape[1]):
        todo = (best_margin >= 0).nonzero()[:, 0]
        if not len(todo):
            break
        found_x, found_margin = apgd(model, x[todo], y[todo], loss=targeted_dlr_loss, epsilon=epsilon, steps=steps,
                                     target=ranked[todo, k])
        lower = found_margin < best_margin[todo]
        best_x[todo[lower]], best_margin[todo[lower]] = found_x[lower], found_margin[lower]
    return best_x


def require_classes(attack: str, classes: int, least: int) -> None:
    """The DLR losses compare the 3rd (targeted: 4th) largest logit: refuse models with fewer classes."""
    if classes < least:
        raise ConfigError(f"attack {attack} needs at least {least} classes, the model has {classes}: use apgd-ce or pgd")
