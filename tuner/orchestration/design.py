"""How a search spends its budget: which λ and seed each trial gets, and when a trial stops early.

Shared by the Ray Tune searcher and scheduler (`tuner.orchestration.trials`) and by simulated
searches (`benchmarks/fit_calibration.py`), so a simulation spends its budget exactly as a real
search does. No Ray here: numbers, Optuna studies and the rule of successive halving.

The design, per width (the README's "How the search spends its budget" says why):

- `trials` distinct λ values, each trained with `seeds` replicate seeds. A replicate is a trial of
  its own (its own Optuna trial, Parquet row and MLflow run); every λ uses the same seeds
  (common random numbers), so differences between λ are not differences between seeds.
- The first `startup` λ values cover [low, high] evenly in log λ: a regular grid shifted by a
  random fraction of its step, drawn for each width from the search's seed, so two widths are
  not given the same λ values (unless the preset asks for a `paired` design, which shares the
  grid and the sampler seed). Values given with --lam-start come first.
- Then the width's sampler (GP or TPE, seeded per width) proposes each new λ from the finished
  trials; the replicates of a λ follow it.
- Widths run side by side: the next trial goes to the width with the fewest trials running (then
  the fewest asked, then the narrowest), so each study has seen most of its results when it
  proposes again, whatever the concurrency.
- Early stopping is ASHA's rule applied within each width (trials are never compared across
  widths): at each rung epoch grace·η^k (below the last epoch) a trial stops when its value is
  below the (1 − 1/η) quantile of the values recorded at that rung so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tuner.plan import SearchPlan

STATUS = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "early_stopped", TrialState.FAIL: "error"}

@dataclass(frozen=True)
class Budget:
    """The budget logic's settings (a search plan's, or a simulation's)."""

    widths: tuple[int, ...]
    trials: int  # distinct λ values per width
    seeds: int  # replicate seeds per λ
    startup: int  # λ values spread evenly before the sampler adapts (--lam-start values count)
    lam_low: float
    lam_high: float
    sampler: str
    epochs: int
    grace_period: int
    reduction_factor: int
    seed: int
    paired: bool = False
    initial_lams: tuple[float, ...] = ()

    @classmethod
    def of(cls, plan: SearchPlan) -> Budget:
        return cls(widths=tuple(plan.widths), trials=plan.trials, seeds=plan.seeds, startup=plan.startup,
                   lam_low=plan.lam_low, lam_high=plan.lam_high, sampler=plan.sampler, epochs=plan.trial.epochs,
                   grace_period=plan.grace_period, reduction_factor=plan.reduction_factor, seed=plan.seed,
                   paired=plan.paired, initial_lams=tuple(plan.initial_lams))

    @property
    def trials_per_width(self) -> int:
        return self.trials * self.seeds

    def trial_seeds(self) -> list[int]:
        """The seeds every λ is trained with, one per replicate."""
        return [self.seed + r for r in range(self.seeds)]

    def study_seed(self, width: int) -> int:
        """The seed of a width's sampler and start-up grid: the search's, mixed with the width unless paired."""
        if self.paired:
            return self.seed
        return int(np.random.SeedSequence([self.seed, width]).generate_state(1)[0])

    def startup_lams(self, width: int) -> list[float]:
        """The --lam-start values, then a shifted log-grid filling the start-up count."""
        given = list(self.initial_lams)[:self.startup]
        n = self.startup - len(given)
        if n <= 0:
            return given
        low, high = math.log(self.lam_low), math.log(self.lam_high)
        shift = np.random.default_rng(self.study_seed(width)).uniform()
        return given + [math.exp(low + (i + shift) * (high - low) / n) for i in range(n)]

    def make_sampler(self, width: int) -> optuna.samplers.BaseSampler:
        """The width's sampler; it starts modelling as soon as it has two (GP) or three (TPE) finished trials."""
        seed = self.study_seed(width)
        if self.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=2, warn_independent_sampling=False)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)

    def rungs(self) -> Rungs:
        return Rungs(grace_period=self.grace_period, reduction_factor=self.reduction_factor, epochs=self.epochs)

    @property
    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.lam_low, self.lam_high, log=True)


class Rungs:
    """ASHA's stopping rule for the trials of one width (as Ray Tune's ASHAScheduler applies it).

    Rungs are at grace·η^k epochs below the last epoch (stopping at the last epoch saves nothing).
    """

    def __init__(self, *, grace_period: int, reduction_factor: int, epochs: int) -> None:
        self.reduction_factor = reduction_factor
        self.epochs = [grace_period * reduction_factor ** k for k in range(64)
                       if grace_period * reduction_factor ** k < epochs]
        self.recorded: dict[int, dict[str, float]] = {epoch: {} for epoch in self.epochs}

    def should_stop(self, key: str, epoch: int, value: float) -> bool:
        """Record `value` at the highest rung `epoch` has reached that `key` has not passed yet; True to stop."""
        for rung in reversed(self.epochs):
            if epoch < rung or key in self.recorded[rung]:
                continue
            recorded = self.recorded[rung]
            cutoff = (np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100)
                      if recorded else None)
            recorded[key] = value
            return cutoff is not None and value < cutoff
        return False


@dataclass(frozen=True)
class Proposal:
    """One trial to run: its width, λ, seed and Optuna trial."""

    width: int
    lam: float
    seed: int
    replicate: int  # 0 .. seeds - 1
    number: int  # the Optuna trial number in the width's study


class Proposer:
    """The Optuna studies of a search (one per width) and the order in which they get trials.

    `studies` maps width → an Optuna study (journal storage in a search, in-memory in a
    simulation). Trials asked and not yet told are kept as live Optuna trials by (width, number).
    Trials marked `orphaned` (asked, or only enqueued, by a driver that died before any trial ran them) do not
    count.
    """

    def __init__(self, budget: Budget, studies: dict[int, optuna.Study]) -> None:
        self.budget, self.studies = budget, studies
        for study in studies.values():
            self._orphan_waiting(study)
        self.asked = {width: len(self._counted(width)) for width in studies}
        self.live: dict[tuple[int, int], optuna.Trial] = {}

    @staticmethod
    def _orphan_waiting(study: optuna.Study) -> None:
        """Close the trials enqueued but never asked (a driver killed between the two) as orphaned FAIL trials:
        left WAITING, they would count against the budget and the next ask would pop them with a stale λ."""
        for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = study.ask()  # pops the oldest waiting trial (Optuna cannot tell a WAITING trial directly)
            trial.set_user_attr("orphaned", True)
            study.tell(trial, state=TrialState.FAIL)

    def _counted(self, width: int) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.studies[width].get_trials(deepcopy=False) if not t.user_attrs.get("orphaned")]

    def adopt(self, proposal: Proposal) -> None:
        """Take back a trial asked before a resume, still to be reported and told."""
        frozen = self.studies[proposal.width].get_trials(deepcopy=False)[proposal.number]
        self.live[(proposal.width, proposal.number)] = optuna.Trial(self.studies[proposal.width], frozen._trial_id)

    def orphan(self, width: int, number: int) -> None:
        """Close a trial that no one will run as FAIL, marked `orphaned` so it does not count against the budget."""
        frozen = self.studies[width].get_trials(deepcopy=False)[number]
        optuna.Trial(self.studies[width], frozen._trial_id).set_user_attr("orphaned", True)
        self.studies[width].tell(number, state=TrialState.FAIL)
        self.asked[width] -= 1

    def remaining(self, width: int) -> int:
        return self.budget.trials_per_width - self.asked[width]

    def next_width(self, running: dict[int, int], caps: dict[int, int] | None = None) -> int | None:
        """The width the next trial goes to, or None if every width is done or at its cap of running trials."""
        open_widths = [w for w in self.budget.widths
                       if self.remaining(w) > 0 and (caps is None or running.get(w, 0) < caps[w])]
        if not open_widths:
            return None
        return min(open_widths, key=lambda w: (running.get(w, 0), self.asked[w], w))

    def ask(self, width: int, **user_attrs: object) -> Proposal:
        """The next trial of `width`: a start-up λ, a replicate of the current λ, or the sampler's next λ."""
        budget, study = self.budget, self.studies[width]
        index, replicate = divmod(self.asked[width], budget.seeds)
        startup = budget.startup_lams(width)
        lam = startup[index] if index < len(startup) else None
        if replicate > 0:  # the λ of this index's first replicate, whatever chose it (if it is known)
            lam = next((t.params["lam"] for t in self._counted(width)
                        if t.user_attrs.get("lam_index") == index and t.user_attrs.get("replicate") == 0), lam)
        if lam is not None:
            study.enqueue_trial({"lam": lam})
        trial = study.ask({"lam": budget.distribution})
        seed = budget.trial_seeds()[replicate]
        for key, value in {"width": width, "seed": seed, "lam_index": index, "replicate": replicate,
                           **user_attrs}.items():
            trial.set_user_attr(key, value)
        self.asked[width] += 1
        self.live[(width, trial.number)] = trial
        return Proposal(width, trial.params["lam"], seed, replicate, trial.number)

    def report(self, proposal: Proposal, epoch: int, value: float) -> None:
        """An epoch's value (the best-so-far validation robust accuracy) as the trial's intermediate value."""
        trial = self.live.get((proposal.width, proposal.number))
        if trial is not None and epoch not in self.studies[proposal.width].get_trials(
                deepcopy=False)[proposal.number].intermediate_values:
            trial.report(value, epoch)

    def tell(self, proposal: Proposal, state: TrialState, value: float | None = None) -> None:
        """Close the trial: COMPLETE with its selected value, PRUNED when stopped early, FAIL on an error.

        Its `status` user attribute says the same in the words of the Parquet results.
        """
        trial = self.live.pop((proposal.width, proposal.number), None)
        study = self.studies[proposal.width]
        if study.get_trials(deepcopy=False)[proposal.number].state.is_finished():
            return
        if trial is not None:
            trial.set_user_attr("status", STATUS[state])
        study.tell(proposal.number, value if state == TrialState.COMPLETE else None, state=state)
