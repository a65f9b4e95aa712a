"""The budget design: even, width-specific start-up λ, replicate seeds, ASHA's rule per width, width order."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tuner.orchestration.design import Budget, Proposer, Rungs

optuna.logging.set_verbosity(optuna.logging.WARNING)


def budget(**changes) -> Budget:
    settings = dict(widths=(1, 4, 10), trials=6, seeds=2, startup=3, lam_low=0.3, lam_high=30.0, sampler="tpe",
                    epochs=5, grace_period=3, reduction_factor=2, seed=0)
    return Budget(**{**settings, **changes})


def proposer(b: Budget) -> Proposer:
    return Proposer(b, {w: optuna.create_study(direction="maximize", sampler=b.make_sampler(w)) for w in b.widths})


def run_all(p: Proposer, value=lambda proposal: 0.5) -> list:
    """Ask every trial of the budget one at a time, telling each COMPLETE before the next."""
    done = []
    while (width := p.next_width({})) is not None:
        proposal = p.ask(width)
        p.report(proposal, 1, value(proposal))
        p.tell(proposal, TrialState.COMPLETE, value(proposal))
        done.append(proposal)
    return done


def test_start_up_covers_the_log_range_evenly_and_differs_between_widths():
    b = budget(startup=4)
    grids = {w: np.log(b.startup_lams(w)) for w in b.widths}
    step = (math.log(30) - math.log(0.3)) / 4
    for grid in grids.values():
        assert len(grid) == 4 and np.allclose(np.diff(grid), step)  # one value in each quarter of the range
        assert math.log(0.3) <= grid[0] < math.log(0.3) + step and grid[-1] <= math.log(30)
    assert len({round(g[0], 9) for g in grids.values()}) == 3, "every width gets its own grid"
    paired = budget(startup=4, paired=True)
    assert paired.startup_lams(1) == paired.startup_lams(10), "a paired design shares the grid"


def test_given_start_values_come_first_and_count_as_start_up():
    b = budget(initial_lams=(6.0, 18.0), startup=3)
    lams = b.startup_lams(4)
    assert lams[:2] == [6.0, 18.0] and len(lams) == 3


def test_two_widths_are_proposed_different_lambda_values():
    done = run_all(proposer(budget()))
    by_width = {w: {round(p.lam, 9) for p in done if p.width == w} for w in (1, 4, 10)}
    assert all(len(lams) == 6 for lams in by_width.values())
    assert by_width[1].isdisjoint(by_width[4]) and by_width[4].isdisjoint(by_width[10])


def test_replicates_share_the_lambda_and_carry_distinct_seeds_in_optuna():
    p = proposer(budget(seeds=3))
    done = run_all(p)
    for width in (1, 4, 10):
        trials = p.studies[width].trials
        assert len(trials) == 18
        for index in range(6):
            group = [t for t in trials if t.user_attrs["lam_index"] == index]
            assert sorted(t.user_attrs["seed"] for t in group) == [0, 1, 2]
            assert len({t.params["lam"] for t in group}) == 1
    assert {(p.seed, p.replicate) for p in done} == {(0, 0), (1, 1), (2, 2)}


def test_the_sampler_adapts_after_the_start_up():
    """On a sharp optimum at λ = 3 the sampler's proposals move towards it once the start-up is done."""
    b = budget(widths=(1,), trials=12, seeds=1, startup=3)
    done = run_all(proposer(b), value=lambda p: -abs(math.log(p.lam) - math.log(3.0)))
    start, adaptive = done[:3], done[3:]
    assert [p.lam for p in start] == pytest.approx(b.startup_lams(1))
    distance = lambda ps: np.median([abs(math.log(p.lam / 3.0)) for p in ps])  # noqa: E731
    assert distance(adaptive) < distance(start)


def test_the_next_trial_goes_to_the_width_with_fewest_running_then_fewest_asked():
    p = proposer(budget())
    assert p.next_width({}) == 1
    p.ask(1)
    assert p.next_width({1: 1}) == 4
    assert p.next_width({1: 1, 4: 1}) == 10
    assert p.next_width({1: 1, 4: 1, 10: 1}) == 4, "fewest asked among equally busy widths"
    assert p.next_width({1: 2}, caps={1: 2, 4: 0, 10: 0}) is None, "every width at its cap"


def test_an_orphaned_trial_does_not_count_against_the_budget():
    p = proposer(budget(widths=(1,), trials=2, seeds=1))
    first = p.ask(1)
    p.orphan(1, first.number)
    assert p.remaining(1) == 2
    again = p.ask(1)
    assert again.lam == pytest.approx(first.lam), "the start-up value is asked again"
    assert p.studies[1].trials[first.number].state == TrialState.FAIL


def test_a_trial_enqueued_but_never_asked_before_a_kill_does_not_use_up_the_budget():
    """The driver died between enqueue_trial and ask: a resumed proposer neither counts nor pops that trial."""
    b = budget(widths=(1,), trials=2, seeds=1)
    study = optuna.create_study(direction="maximize", sampler=b.make_sampler(1))
    first = Proposer(b, {1: study})
    done = first.ask(1)
    first.tell(done, TrialState.COMPLETE, 0.5)
    study.enqueue_trial({"lam": 29.0})  # the stale λ of the dead driver
    resumed = Proposer(b, {1: study})
    assert resumed.remaining(1) == 1
    second = resumed.ask(1)
    assert second.lam == pytest.approx(b.startup_lams(1)[1]) and second.lam != pytest.approx(29.0)
    stale = study.trials[1]
    assert stale.state == TrialState.FAIL and stale.user_attrs["orphaned"] is True
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def ray_asha_decisions(values: list[tuple[str, int, float]], *, grace: int, rf: int, max_t: int) -> list[bool]:
    """Ray Tune's own ASHAScheduler bracket on the same sequence of results (True = stop)."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    bracket = _Bracket(grace, max_t, rf, 0)
    return [bracket.on_result(Trial(key), epoch, value) == "STOP" for key, epoch, value in values]


def test_rungs_stop_exactly_as_rays_asha_below_the_last_epoch():
    rng = np.random.default_rng(0)
    results = [(f"t{i}", epoch, float(rng.uniform())) for i in range(12) for epoch in (1, 2, 3, 4, 5, 6, 7)]
    rng.shuffle(results)
    rungs = Rungs(grace_period=1, reduction_factor=2, epochs=8)
    assert rungs.epochs == [1, 2, 4]
    ours = [rungs.should_stop(key, epoch, value) for key, epoch, value in results]
    assert ours == ray_asha_decisions(results, grace=1, rf=2, max_t=8)
    assert any(ours) and not all(ours)
