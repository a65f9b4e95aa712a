"""The project's TRADES step against a reference-style step and against its floor, side by side in one process.

- project: `objectives.trades`, backward and the SGD step, as `training.train_one_epoch` runs them;
- reference-style: the step of the TRADES reference code (Zhang et al. 2019, `trades.py`), which
  recomputes the natural logits at every attack step and twice in the loss (its start
  x + 0.001·N is clamped to [0, 1] here, as the project's is, so that both take the same step:
  the reference code clamps it only after the first step);
- floor: the sum of the step's essential passes, each timed alone: one no-grad forward of x
  (eval mode), K input-gradient attack steps (forward, KL, gradient to the input), and the
  training forward of x and x', backward and SGD step.

From the same start (parameters, buffers, optimizer state, random state) the project's and the
reference step's parameter updates must agree to `--tolerance` (the reference's extra natural
forwards move BatchNorm's running statistics once more, so buffers are not compared).
The three are timed in rounds, interleaved, after a warm-up round; medians are reported. The
clock is this process's CPU time by default (with one thread, the computation's own time, which
other busy processes on the machine barely change); `--clock wall` for wall time on a quiet machine.

    python benchmarks/trades_step.py                      # the four configurations of issue 14
    python benchmarks/trades_step.py --configs wrn-10-2:k10 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import models
from tuner.core.attacks import eval_mode
from tuner.core.objectives import AttackSettings, get_objective, kl_to

LAM = 6.0
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass(frozen=True)
class Setup:
    name: str
    model: str
    depth: int | None
    width: int
    shape: tuple[int, int, int]  # one input image, C × H × W
    batch: int
    attack: AttackSettings


CONFIGS = {
    "cnn-w4:k5": Setup("cnn w4, K=5 (quick: 8×8 digits)", "cnn", None, 4, (1, 8, 8), 64, AttackSettings(0.1, 0.03, 5)),
    "wrn-10-2:k10": Setup("WRN-10-2, K=10", "wrn", 10, 2, (3, 32, 32), 64, AttackSettings(8 / 255, 2 / 255, 10)),
    "wrn-16-4:k3": Setup("WRN-16-4, K=3", "wrn", 16, 4, (3, 32, 32), 32, AttackSettings(8 / 255, 3 / 255, 3)),
    "wrn-16-4:k10": Setup("WRN-16-4, K=10", "wrn", 16, 4, (3, 32, 32), 32, AttackSettings(8 / 255, 2 / 255, 10)),
}


def project_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 attack: AttackSettings) -> None:
    value = get_objective("trades")(model, x, y, lam=LAM, attack=attack)
    optimizer.zero_grad(set_to_none=True)
    value.loss.backward()
    optimizer.step()


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   attack: AttackSettings) -> None:
    """The TRADES reference code's `trades_loss` step (ℓ∞), written with today's PyTorch."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = torch.clamp(x.detach() + 0.001 * torch.randn_like(x), 0.0, 1.0)
    for _ in range(attack.steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + attack.step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - attack.epsilon), x + attack.epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    optimizer.zero_grad()
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    (loss_natural + LAM * loss_robust).backward()
    optimizer.step()


def floor_parts(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                attack: AttackSettings, clock: Callable[[], float]) -> dict[str, float]:
    """Seconds of each essential pass of one TRADES step, timed alone."""
    seconds = {}
    started = clock()
    with torch.no_grad(), eval_mode(model):
        clean = model(x)
    seconds["clean forward"] = clock() - started
    loss_fn = kl_to(clean)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    started = clock()
    with eval_mode(model):
        for _ in range(attack.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(model(x_adv)).sum(), x_adv)
            x_adv = (x_adv.detach() + attack.step_size * grad.sign()).clamp(0, 1)
    seconds["attack steps"] = clock() - started
    started = clock()
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, y) + LAM * F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1),
                                                       reduction="batchmean")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    seconds["training forward/backward"] = clock() - started
    return seconds


def fresh(setup: Setup) -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """The same start every time: model, SGD with momentum state after one plain step, a batch."""
    torch.manual_seed(0)
    model = models.create_model(setup.model, width=setup.width, num_classes=10, in_channels=setup.shape[0],
                                depth=setup.depth)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = torch.rand(setup.batch, *setup.shape)
    y = torch.randint(0, 10, (setup.batch,))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return model, optimizer, x, y


def same_start_difference(setup: Setup) -> float:
    """Largest |parameter difference| after one project step and one reference step from the same start."""
    after = []
    for step in (project_step, reference_step):
        model, optimizer, x, y = fresh(setup)
        torch.manual_seed(1)
        step(model, optimizer, x, y, setup.attack)
        after.append([p.detach().clone() for p in model.parameters()])
    return max((a - b).abs().max().item() for a, b in zip(*after))


def timed(step: Callable[..., None]) -> Callable[..., dict[str, float]]:
    """`step` as a function returning its seconds, like `floor_parts`."""

    def run(*args: object, clock: Callable[[], float]) -> dict[str, float]:
        started = clock()
        step(*args)
        return {"step": clock() - started}

    return run


def measure(setup: Setup, repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """Median seconds of the project step, the reference step, the floor and each of its passes."""
    model, _, x, y = fresh(setup)
    runners = {"project": timed(project_step), "reference": timed(reference_step), "floor": floor_parts}
    state = {name: copy.deepcopy(model) for name in runners}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in state.items()}
    seconds: dict[str, list[float]] = {}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, run in runners.items():
            parts = run(state[name], optimizers[name], x, y, setup.attack, clock=clock)
            if round_:
                seconds.setdefault(name, []).append(sum(parts.values()))
                if name == "floor":
                    for part, value in parts.items():
                        seconds.setdefault(f"floor: {part}", []).append(value)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest |parameter difference| allowed")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu", help="cpu: this process's CPU time; wall: elapsed time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, λ = {LAM:g}, {args.clock} time")
    print(f"{'configuration':<34} {'batch':>5} {'project s':>9} {'reference s':>11} {'floor s':>8} "
          f"{'ref/project':>11} {'project/floor':>13} {'max |Δparam|':>12}")
    failed = False
    for key in args.configs.split(","):
        setup = CONFIGS[key]
        difference = same_start_difference(setup)
        failed |= difference > args.tolerance
        t = measure(setup, args.repeats, CLOCKS[args.clock])
        print(f"{setup.name:<34} {setup.batch:>5} {t['project']:>9.3f} {t['reference']:>11.3f} {t['floor']:>8.3f} "
              f"{t['reference'] / t['project']:>11.2f} {t['project'] / t['floor']:>13.2f} {difference:>12.1e}", flush=True)
        print("    floor = " + " + ".join(f"{k.removeprefix('floor: ')} {v:.3f}" for k, v in t.items() if k.startswith("floor: ")))
    if failed:
        print(f"FAILED: the project's and the reference step's updates differ by more than {args.tolerance:g}")
        sys.exit(1)


if __name__ == "__main__":
    main()
