"""Mutation check: each plausible science bug below, put into a copy of the repository, must fail the fast tests.

    python tests/mutants.py              every mutant, against the tests it names (make mutants)
    python tests/mutants.py --all        every mutant, against the whole fast suite
    python tests/mutants.py NAME ...     only these mutants
    python tests/mutants.py --list       names, files, reasons and tests; nothing run
    --jobs N                             mutants tested side by side (default: CPUs, at most 4)

The files git lists (tracked, and untracked ones it does not ignore) are copied to a temporary
folder, and the tests the mutants name must pass there. Then each mutant replaces its exact `old`
text, which must occur once in its file, by `new` in a fresh copy and runs
`pytest -m "not slow" -x` on the copy's tests with PYTHONPATH pointing at the copy (one OpenMP
thread per run unless OMP_NUM_THREADS says otherwise). A mutant is killed when the tests fail.
The exit status is 1 if any mutant survives, if its old text or its tests are no longer found
(the code drifted: rewrite the mutant against the new code, never drop it to get a pass), or if
the unmutated copy fails; else 0.

When a science bug is found, add it here, with the fast test that catches it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["-m", "not slow", "-p", "no:cacheprovider"]  # the fast suite, leaving nothing behind
TIMEOUT_S = 1200  # per pytest run; a run that exceeds it is an error, never a kill


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str  # exact text, found exactly once in `file`
    new: str
    why: str  # the bug it stands for
    tests: tuple[str, ...]  # pytest node ids (a test, without parameters, or a whole file) that must fail


ATTACKS = "tests/core/test_attacks.py::"
IN_BALL = ATTACKS + "test_output_stays_in_eps_ball_and_pixel_range"
RAISES_LOSS = ATTACKS + "test_attack_raises_the_loss_over_the_clean_input"
MODEL_UNTOUCHED = ATTACKS + "test_mode_restored_no_parameter_gradient_and_running_stats_untouched"
UNIFORM_START = ATTACKS + "test_uniform_start_is_uniform_in_the_eps_ball"
NORMAL_START = ATTACKS + "test_normal_start_is_x_plus_a_thousandth_of_standard_normal_noise"
PROBE_MAX = ATTACKS + "test_gradient_probe_is_the_maximum_over_the_iterates_not_the_last"
OBJECTIVES = "tests/core/test_objectives.py::"
KL_BY_HAND = OBJECTIVES + "test_kl_to_is_kl_of_clean_to_attacked_on_hand_computed_logits"
TRADES_BY_HAND = OBJECTIVES + "test_trades_loss_is_ce_plus_lambda_times_the_batch_mean_kl_clean_to_attacked"
TRADES_GRADIENT = OBJECTIVES + "test_trades_gradient_matches_a_finite_difference_of_the_formula"
OWN_LOSS = OBJECTIVES + "test_each_objective_attacks_its_own_loss"
BATCHNORM_UPDATES = OBJECTIVES + "test_batchnorm_statistics_move_only_with_the_loss_inputs"
PGD_AT_START = OBJECTIVES + "test_pgd_at_starts_uniformly_in_the_ball"
PGD_AT_LAMBDA_ONE = OBJECTIVES + "test_pgd_at_with_lambda_one_equals_ce_on_the_adversarial_inputs"
METRICS = "tests/core/test_metrics.py::"
HAND_COUNTS = METRICS + "test_counts_on_hand_made_predictions_of_every_clean_and_attacked_case"
UNDEFENDED_FALLS = METRICS + "test_undefended_model_falls_to_near_zero_at_large_epsilon"
EVAL_MODE = METRICS + "test_evaluation_runs_in_eval_mode_and_leaves_train_mode_and_statistics_alone"
PROBE_OF_KL = METRICS + "test_lipschitz_probe_is_the_gradient_of_the_kl_to_the_clean_prediction"
EVAL_START = METRICS + "test_evaluation_attack_starts_uniformly_in_the_eps_ball"
TRAINING = "tests/core/test_training.py::"
SELECTION = TRAINING + "test_best_robust_epoch_is_selected_though_natural_disagrees_and_its_model_is_the_one_tested"
TIES = TRAINING + "test_ties_in_robust_accuracy_select_the_latest_epoch"
SPLITS_ASKED = TRAINING + "test_epoch_is_selected_on_validation_and_only_its_checkpoint_is_tested"
NAMED_SPLIT = TRAINING + "test_evaluate_split_evaluates_the_named_split"
LR_RESUME = TRAINING + "test_learning_rate_schedule_survives_a_resume_across_its_milestone"
RESUME = TRAINING + "test_resume_after_an_interruption_matches_an_uninterrupted_run"
RESUME_AFTER_LAST = TRAINING + "test_a_trial_resumed_after_its_last_epoch_was_saved_only_finishes"
DAMAGED = TRAINING + "test_a_damaged_checkpoint_is_one_error_naming_the_file_and_the_way_out"
DATA = "tests/core/test_data.py::"
DIGITS_OWN = DATA + "test_digits_are_scikit_learns_own_examples"
CROPS = DATA + "test_each_crop_is_a_window_of_its_own_zero_padded_image_at_every_offset"
SPLITS = DATA + "test_digits_in_pixel_range_with_disjoint_fixed_splits"
PNG_ROUND_TRIP = DATA + "test_cifar10_image_folder_round_trips_pixels_and_labels"
MODELS = "tests/models/test_models.py::"
WRN_BLOCK = MODELS + "test_wrn_block_is_the_trades_pre_activation_block"
CNN_CHANNELS = MODELS + "test_cnn_channels_are_base_times_width_doubling_per_stage"
NORMALIZATION = MODELS + "test_normalization_lives_inside_the_model"
APGD = "tests/core/test_apgd.py::"
APGD_BY_HAND = APGD + "test_apgd_iterates_as_the_published_algorithm_and_returns_its_lowest_margin_point"
APGD_START = APGD + "test_random_start_is_on_the_boundary_of_the_eps_ball"
APGD_TARGETS = APGD + "test_targets_are_the_next_most_likely_classes_on_the_clean_input"
DLR_BY_HAND = APGD + "test_dlr_values_on_hand_made_logits"
TARGETED_DLR_BY_HAND = APGD + "test_targeted_dlr_values_on_hand_made_logits"
SUITE_BY_HAND = "tests/core/test_suites.py::test_each_attack_breaks_only_survivors_and_robust_is_the_worst_case_on_hand_made_examples"
SURFACE = "tests/analysis/test_surface.py::"
KNOWN_RULE = SURFACE + "test_recovers_the_exponent_of_a_known_rule_from_noisy_trials"
ASYMMETRIC = SURFACE + "test_noiseless_asymmetric_curves_give_their_peaks_and_shape"
FIDELITY = SURFACE + "test_early_stopped_trials_enter_at_their_fidelity"
SEED_NOISE = SURFACE + "test_replicates_measure_the_seed_noise"
INTERVALS_BY_HAND = SURFACE + "test_intervals_are_the_profile_likelihood_intervals_computed_by_hand"
A_AWAY_FROM_ONE = SURFACE + "test_a_and_the_predictions_follow_the_rule_when_the_narrowest_width_is_not_one"

MUTANTS = [
    # PGD (tuner/core/attacks.py)
    Mutant("attack-in-train-mode", "tuner/core/attacks.py",
           old="    model.eval()\n",
           new="    model.train()\n",
           why="attacks run with BatchNorm in train mode: batch-dependent and moving running statistics",
           tests=(MODEL_UNTOUCHED,)),
    Mutant("attack-no-clamp", "tuner/core/attacks.py",
           old="return (x - epsilon).clamp(0.0, 1.0), (x + epsilon).clamp(0.0, 1.0)",
           new="return x - epsilon, x + epsilon",
           why="adversarial pixels leave [0, 1]",
           tests=(IN_BALL,)),
    Mutant("attack-projects-before-the-step", "tuner/core/attacks.py",
           old="x_adv = torch.clamp(x_adv.detach() + step_size * grad.sign(), lower, upper)",
           new="x_adv = torch.clamp(x_adv.detach(), lower, upper) + step_size * grad.sign()",
           why="the last step leaves the ε-ball",
           tests=(IN_BALL,)),
    Mutant("attack-sign-dropped", "tuner/core/attacks.py",
           old="step_size * grad.sign()",
           new="step_size * grad",
           why="raw gradient steps instead of ℓ∞ sign steps: a far weaker attack",
           tests=(PROBE_MAX,)),
    Mutant("attack-descends", "tuner/core/attacks.py",
           old="x_adv.detach() + step_size",
           new="x_adv.detach() - step_size",
           why="gradient descent on the loss: the attack helps the model",
           tests=(RAISES_LOSS,)),
    Mutant("uniform-start-at-x", "tuner/core/attacks.py",
           old="x_adv = x + torch.empty_like(x).uniform_(-epsilon, epsilon)",
           new="x_adv = x.clone()",
           why="PGD's random start is x itself",
           tests=(UNIFORM_START,)),
    Mutant("uniform-start-one-sided", "tuner/core/attacks.py",
           old="uniform_(-epsilon, epsilon)",
           new="uniform_(0, epsilon)",
           why="the random start covers half the ball",
           tests=(UNIFORM_START,)),
    Mutant("normal-start-scaled-by-epsilon", "tuner/core/attacks.py",
           old="0.001 * torch.randn_like(x)",
           new="epsilon * torch.randn_like(x)",
           why="TRADES' start x + 0.001·N(0, 1) scaled by ε instead",
           tests=(NORMAL_START,)),
    Mutant("probe-takes-the-last-iterate", "tuner/core/attacks.py",
           old="max_grad_l1 = torch.maximum(max_grad_l1, grad.abs().flatten(1).sum(1))",
           new="max_grad_l1 = grad.abs().flatten(1).sum(1)",
           why="Lipschitz probe from the last iterate, not the maximum over iterates",
           tests=(PROBE_MAX,)),
    Mutant("probe-l2-norm", "tuner/core/attacks.py",
           old="grad.abs().flatten(1).sum(1)",
           new="grad.flatten(1).norm(dim=1)",
           why="Lipschitz probe with the ℓ2 norm instead of ℓ1 (the dual of ℓ∞)",
           tests=(PROBE_MAX,)),
    Mutant("attack-accumulates-parameter-gradients", "tuner/core/attacks.py",
           old="(grad,) = torch.autograd.grad(loss, x_adv)",
           new="loss.backward()\n            grad = x_adv.grad",
           why="attack steps leave gradients on the parameters, which the optimizer then applies",
           tests=(MODEL_UNTOUCHED,)),
    # objectives (tuner/core/objectives.py)
    Mutant("trades-kl-reversed", "tuner/core/objectives.py",
           old='F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")',
           new='F.kl_div(F.log_softmax(logits, dim=1), F.softmax(model(x_adv), dim=1), reduction="batchmean")',
           why="TRADES regularizer KL(f(x′) ‖ f(x)) instead of KL(f(x) ‖ f(x′))",
           tests=(TRADES_BY_HAND,)),
    Mutant("trades-kl-mean", "tuner/core/objectives.py",
           old='reduction="batchmean"',
           new='reduction="mean"',
           why="KL averaged over classes too: λ off by the class count",
           tests=(TRADES_BY_HAND,)),
    Mutant("trades-attack-on-ce", "tuner/core/objectives.py",
           old="attack_loss = kl_to(clean_logits)",
           new="attack_loss = cross_entropy_to(y)",
           why="the TRADES attack maximizes CE, not the KL term",
           tests=(OWN_LOSS,)),
    Mutant("trades-attack-kl-reversed", "tuner/core/objectives.py",
           old='return F.kl_div(F.log_softmax(adv_logits, dim=1), clean_probs, reduction="none").sum(1)',
           new='return F.kl_div(clean_probs.log(), F.softmax(adv_logits, dim=1), reduction="none").sum(1)',
           why="the attack (and the probe) maximize the reversed KL",
           tests=(KL_BY_HAND,)),
    Mutant("trades-clean-side-detached", "tuner/core/objectives.py",
           old="F.softmax(logits, dim=1)",
           new="F.softmax(logits.detach(), dim=1)",
           why="no gradient through the clean side of the TRADES KL",
           tests=(TRADES_GRADIENT,)),
    Mutant("trades-natural-loss-on-attacked", "tuner/core/objectives.py",
           old="natural = F.cross_entropy(logits, y)",
           new="natural = F.cross_entropy(model(x_adv), y)",
           why="TRADES' natural term on x′",
           tests=(TRADES_BY_HAND,)),
    Mutant("trades-target-in-train-mode", "tuner/core/objectives.py",
           old="with torch.no_grad(), eval_mode(net):",
           new="with torch.no_grad():",
           why="TRADES' clean target from a train-mode pass: an extra BatchNorm update per step",
           tests=(BATCHNORM_UPDATES,)),
    Mutant("pgd-at-starts-at-x", "tuner/core/objectives.py",
           old='steps=attack.steps, start="uniform")',
           new='steps=attack.steps, start="none")',
           why="PGD-AT's attack starts at x, not uniformly in the ball",
           tests=(PGD_AT_START,)),
    Mutant("pgd-at-attacks-the-kl", "tuner/core/objectives.py",
           old="pgd_linf(bare(model), x, cross_entropy_to(y),",
           new="pgd_linf(bare(model), x, kl_to(model(x)),",
           why="PGD-AT's attack maximizes the KL, not CE",
           tests=(OWN_LOSS,)),
    Mutant("pgd-at-natural-weight", "tuner/core/objectives.py",
           old="(1 - lam) * natural + lam * adversarial",
           new="natural + lam * adversarial",
           why="PGD-AT not in λ form: λ = 1 is no longer Madry's objective",
           tests=(PGD_AT_LAMBDA_ONE,)),
    # metrics (tuner/core/metrics.py)
    Mutant("robust-counts-attacked-only", "tuner/core/metrics.py",
           old="(natural_correct & (adv_pred == labels)).sum()",
           new="(adv_pred == labels).sum()",
           why="an example counts robust when only its attacked prediction is right",
           tests=(HAND_COUNTS,)),
    Mutant("stability-on-correct-only", "tuner/core/metrics.py",
           old="(adv_pred == clean_pred).sum()",
           new="((adv_pred == clean_pred) & natural_correct).sum()",
           why="stability counted on correct examples only",
           tests=(HAND_COUNTS,)),
    Mutant("stability-against-the-label", "tuner/core/metrics.py",
           old="(adv_pred == clean_pred).sum()",
           new="(adv_pred == labels).sum()",
           why="stability compares the attacked prediction with the label",
           tests=(HAND_COUNTS,)),
    Mutant("natural-accuracy-on-attacked", "tuner/core/metrics.py",
           old="outcome_counts(y, clean_pred, adv_pred)",
           new="outcome_counts(y, adv_pred, clean_pred)",
           why="natural and attacked predictions swapped",
           tests=(UNDEFENDED_FALLS,)),
    Mutant("evaluation-in-the-callers-mode", "tuner/core/metrics.py",
           old="    with eval_mode(model):\n        for x, y",
           new="    with torch.enable_grad():\n        for x, y",
           why="evaluation in train mode moves BatchNorm statistics",
           tests=(EVAL_MODE,)),
    Mutant("probe-on-ce", "tuner/core/metrics.py",
           old="probe = pgd_linf(model, x, kl_to(clean_logits),",
           new="probe = pgd_linf(model, x, cross_entropy_to(y),",
           why="Lipschitz probe of CE, not of the TRADES KL term",
           tests=(PROBE_OF_KL,)),
    Mutant("evaluation-attack-starts-at-x", "tuner/core/metrics.py",
           old='steps=eval_attack.steps, start="uniform")',
           new='steps=eval_attack.steps, start="none")',
           why="robust accuracy from PGD without its uniform random start",
           tests=(EVAL_START,)),
    # the trial loop (tuner/core/training.py)
    Mutant("test-the-last-checkpoint", "tuner/core/training.py",
           old="load_checkpoint(work_dir / CHECKPOINT_DIR / BEST)",
           new="load_checkpoint(work_dir / CHECKPOINT_DIR / LAST)",
           why="test metrics of the last epoch, not the selected",
           tests=(SELECTION,)),
    Mutant("select-on-natural", "tuner/core/training.py",
           old='return max(history, key=lambda r: (r["val_robust_acc"], r["epoch"]))',
           new='return max(history, key=lambda r: (r["val_natural_acc"], r["epoch"]))',
           why="epoch selected on validation natural accuracy",
           tests=(SELECTION,)),
    Mutant("best-checkpoint-on-natural", "tuner/core/training.py",
           old="if select_epoch(history) is record:",
           new='if max(history, key=lambda r: r["val_natural_acc"]) is record:',
           why="best.pt chosen on natural accuracy while robust selects the epoch",
           tests=(SELECTION,)),
    Mutant("best-checkpoint-ties-go-to-the-latest", "tuner/core/training.py",
           old='(r["val_robust_acc"], r["epoch"])',
           new='(r["val_robust_acc"], -r["epoch"])',
           why="the earliest of epochs tied on robust accuracy selected: it has trained less (the rule is the latest)",
           tests=(TIES,)),
    Mutant("best-checkpoint-against-the-previous-epoch", "tuner/core/training.py",
           old="if select_epoch(history) is record:",
           new="if True:",
           why="best.pt overwritten every epoch, whichever epoch is selected",
           tests=(SELECTION,)),
    Mutant("epochs-selected-on-test", "tuner/core/training.py",
           old="count_split(prepared, epoch_val)",
           new="count_split(prepared, prepared.data.test[:len(epoch_val)])",
           why="selection on the test split",
           tests=(SELECTION, SPLITS_ASKED,)),
    Mutant("evaluate-split-ignores-its-name", "tuner/core/training.py",
           old="count_split(prepared, getattr(prepared.data, split_name))",
           new="count_split(prepared, prepared.data.val)",
           why="the test metrics are computed on the validation split",
           tests=(NAMED_SPLIT,)),
    Mutant("scheduler-not-restored", "tuner/core/training.py",
           old='            scheduler.load_state_dict(state["scheduler"])\n',
           new="",
           why="a resumed trial restarts its learning-rate schedule",
           tests=(LR_RESUME,)),
    Mutant("optimizer-not-restored", "tuner/core/training.py",
           old='            optimizer.load_state_dict(state["optimizer"])\n',
           new="",
           why="a resumed trial loses its momentum buffers",
           tests=(RESUME,)),
    Mutant("checkpoint-loaded-unsafely", "tuner/core/training.py",
           old='torch.load(path, map_location="cpu", weights_only=True)',
           new='torch.load(path, map_location="cpu", weights_only=False)',
           why="a checkpoint file can run arbitrary code when a trial resumes from it",
           tests=(DAMAGED,)),
    Mutant("waiting-trial-counted-on-resume", "tuner/orchestration/design.py",
           old="        for study in studies.values():\n            self._orphan_waiting(study)\n",
           new="",
           why="a driver killed between enqueue and ask leaves a WAITING trial that uses up its width's budget",
           tests=("tests/orchestration/test_design.py::"
                  "test_a_trial_enqueued_but_never_asked_before_a_kill_does_not_use_up_the_budget",)),
    Mutant("resume-skips-an-epoch", "tuner/core/training.py",
           old="range(len(history) + 1, config.epochs + 1)",
           new="range(len(history) + 2, config.epochs + 1)",
           why="a resumed trial skips the epoch after its checkpoint",
           tests=(RESUME,)),
    Mutant("resume-after-the-last-epoch-never-finishes", "tuner/core/training.py",
           old="    if summary is None:  # resumed after the last epoch was checkpointed\n"
               "        summary = finish_trial(prepared, history, work_dir=Path(work_dir))\n",
           new="",
           why="a trial that died after its last checkpoint never writes metrics.json",
           tests=(RESUME_AFTER_LAST,)),
    # data (tuner/core/data.py)
    Mutant("crop-from-the-first-image", "tuner/core/data.py",
           old="padded[torch.arange(n, device=on)[:, None, None, None],",
           new="padded[torch.zeros(n, dtype=torch.long, device=on)[:, None, None, None],",
           why="every crop taken from image 0",
           tests=(CROPS,)),
    Mutant("crop-offsets-one-sided", "tuner/core/data.py",
           old="dy = torch.randint(0, 2 * padding + 1,",
           new="dy = torch.randint(0, padding + 1,",
           why="crops never shift down",
           tests=(CROPS,)),
    Mutant("crop-same-offset-on-both-axes", "tuner/core/data.py",
           old="dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=on)",
           new="dx = dy",
           why="crops only along the diagonal",
           tests=(CROPS,)),
    Mutant("flip-always", "tuner/core/data.py",
           old="torch.rand(n, generator=generator, device=on) < 0.5",
           new="torch.rand(n, generator=generator, device=on) < 1.0",
           why="every image flipped",
           tests=(CROPS,)),
    Mutant("flip-vertical", "tuner/core/data.py",
           old="out.flip(-1), out)",
           new="out.flip(-2), out)",
           why="upside-down instead of mirrored",
           tests=(CROPS,)),
    Mutant("validation-overlaps-train", "tuner/core/data.py",
           old="val_idx, train_idx = order[:n_val], order[n_val:]",
           new="val_idx, train_idx = order[:n_val], order",
           why="validation examples are also trained on",
           tests=(SPLITS,)),
    Mutant("validation-from-the-test-split", "tuner/core/data.py",
           old="val=Split(train.images[val_idx], train.labels[val_idx])",
           new="val=Split(test.images[:n_val], test.labels[:n_val])",
           why="λ and the epoch selected on test images",
           tests=(SPLITS,)),
    Mutant("digits-labels-shifted", "tuner/core/data.py",
           old="return table[:, :-1], table[:, -1].astype(np.int64)",
           new="return table[:, :-1], np.roll(table[:, -1], 1).astype(np.int64)",
           why="each digit read with its neighbour's label",
           tests=(DIGITS_OWN,)),
    Mutant("digits-pixels-with-the-label-column", "tuner/core/data.py",
           old="return table[:, :-1], table[:, -1].astype(np.int64)",
           new="return table[:, 1:], table[:, -1].astype(np.int64)",
           why="pixel columns off by one: the label read as the last pixel",
           tests=(DIGITS_OWN,)),
    Mutant("image-folder-not-scaled", "tuner/core/data.py",
           old="return Split(images.float().div_(255), labels), classes",
           new="return Split(images.float(), labels), classes",
           why="PNG pixels in [0, 255], ε meant for [0, 1]",
           tests=(PNG_ROUND_TRIP,)),
    # models (models/)
    Mutant("wrn-projection-from-the-raw-input", "models/wrn.py",
           old="(x if self.shortcut is None else self.shortcut(pre))",
           new="(x if self.shortcut is None else self.shortcut(x))",
           why="projection shortcut on x, not on the pre-activated input as in TRADES",
           tests=(WRN_BLOCK,)),
    Mutant("wrn-identity-adds-the-preactivation", "models/wrn.py",
           old="(x if self.shortcut is None else self.shortcut(pre))",
           new="(pre if self.shortcut is None else self.shortcut(pre))",
           why="identity shortcut adds the pre-activated input",
           tests=(WRN_BLOCK,)),
    Mutant("cnn-ignores-width", "models/cnn.py",
           old="channels_out = BASE_CHANNELS * width * 2 ** i",
           new="channels_out = BASE_CHANNELS * 2 ** i",
           why="every width builds the same network",
           tests=(CNN_CHANNELS,)),
    Mutant("normalization-multiplies-by-std", "models/registry.py",
           old="(x - self.mean) / self.std",
           new="(x - self.mean) * self.std",
           why="input normalization inverted",
           tests=(NORMALIZATION,)),
    # APGD (tuner/core/attacks.py)
    Mutant("apgd-momentum-on-the-first-step", "tuner/core/attacks.py",
           old="a = 1.0 if iteration == 1 else MOMENTUM",
           new="a = MOMENTUM",
           why="APGD's first step damped by momentum: it moves 0.75·2ε instead of 2ε",
           tests=(APGD_BY_HAND,)),
    Mutant("apgd-step-never-halves", "tuner/core/attacks.py",
           old='state["step"] = torch.where(halve, state["step"] / 2, state["step"])',
           new='state["step"] = state["step"]',
           why="APGD keeps its first step 2ε to the end: it oscillates instead of converging",
           tests=(APGD_BY_HAND,)),
    Mutant("apgd-halving-condition-inverted", "tuner/core/attacks.py",
           old='halve = (state["rises"] <= OSCILLATION * (iteration - last_check))',
           new='halve = (state["rises"] > OSCILLATION * (iteration - last_check))',
           why="APGD halves its step while the loss keeps rising, not when it stalls",
           tests=(APGD_BY_HAND,)),
    Mutant("apgd-no-restart-from-the-best-point", "tuner/core/attacks.py",
           old='for key, source in (("x", "best"), ("previous", "best"), ("grad", "best_grad"), ("value", "best_value")):',
           new="for key, source in ():",
           why="APGD halves its step but goes on from where it is, not from the best point",
           tests=(APGD_BY_HAND,)),
    Mutant("apgd-keeps-the-last-point", "tuner/core/attacks.py",
           old="lower_margin = point_margin < best_margin[index]",
           new="lower_margin = torch.ones_like(point_margin, dtype=torch.bool)",
           why="APGD returns its last iterate, not the lowest-margin point it saw per example",
           tests=(APGD_BY_HAND,)),
    Mutant("apgd-start-inside-the-ball", "tuner/core/attacks.py",
           old="start = torch.clamp(x + view(scale, x) * direction, lower, upper)",
           new="start = torch.clamp(x + epsilon * direction, lower, upper)",
           why="APGD's random start uniform inside the ε-ball instead of on its boundary",
           tests=(APGD_START,)),
    Mutant("dlr-denominator-second-logit", "tuner/core/attacks.py",
           old="top[:, 0] - top[:, 2] + 1e-12",
           new="top[:, 0] - top[:, 1] + 1e-12",
           why="DLR divided by z_π1 − z_π2 instead of z_π1 − z_π3: unbounded when the top two tie",
           tests=(DLR_BY_HAND,)),
    Mutant("targeted-dlr-denominator-third-logit", "tuner/core/attacks.py",
           old="top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12",
           new="top[:, 0] - top[:, 2] + 1e-12",
           why="targeted DLR divided by z_π1 − z_π3 instead of z_π1 − ½(z_π3 + z_π4)",
           tests=(TARGETED_DLR_BY_HAND,)),
    Mutant("apgd-t-targets-the-predicted-class", "tuner/core/attacks.py",
           old="ranked = clean_logits.scatter(1, y[:, None], -math.inf).argsort(1, descending=True)",
           new="ranked = clean_logits.argsort(1, descending=True)",
           why="APGD-T's targets from the most likely class on: its first run targets y itself",
           tests=(APGD_TARGETS,)),
    # suites (tuner/core/suites.py)
    Mutant("suite-attacks-every-example", "tuner/core/suites.py",
           old="survived = correct_after(model, x, y, robust,",
           new="survived = correct_after(model, x, y, torch.ones_like(robust),",
           why="each attack runs on every example, and an example an earlier attack broke counts robust again",
           tests=(SUITE_BY_HAND,)),
    Mutant("suite-robust-from-the-last-attack", "tuner/core/suites.py",
           old="            for i, (attack, options) in enumerate(attacks):\n"
               "                survived = correct_after(model, x, y, robust,\n",
           new="            natural = robust\n"
               "            for i, (attack, options) in enumerate(attacks):\n"
               "                survived = correct_after(model, x, y, natural,\n",
           why="robust accuracy under the suite's last attack alone, not the worst case over its attacks",
           tests=(SUITE_BY_HAND,)),
    Mutant("suite-counts-clean-wrong-robust", "tuner/core/suites.py",
           old="    result = correct.clone()\n",
           new="    result = torch.ones_like(correct)\n",
           why="an example misclassified on the clean input counts robust when the attack does not change that",
           tests=(SUITE_BY_HAND,)),
    # the λ* estimator (tuner/analysis/surface.py, trials.py)
    Mutant("fit-uses-early-stopped-trials", "tuner/analysis/surface.py",
           old="lower = epochs < reference",
           new="lower = epochs < 0",
           why="fidelity offsets ignored: ASHA's low-fidelity values of early-stopped trials enter λ*(w) as final ones",
           tests=(FIDELITY,)),
    Mutant("lambda-star-on-natural-accuracy", "tuner/analysis/trials.py",
           old='robust=floats("val_robust_acc")',
           new='robust=floats("val_natural_acc")',
           why="λ*(w) maximizes validation natural accuracy instead of robust",
           tests=(KNOWN_RULE,)),
    Mutant("quadratic-peak-sign-flipped", "tuner/analysis/surface.py",
           old="d = self.x[None, :] - h[:, None]",
           new="d = h[:, None] - self.x[None, :]",
           why="the curve's distance to its peak with the wrong sign: the plateau side on the left of the peak",
           tests=(ASYMMETRIC,)),
    Mutant("intervals-of-zero-width", "tuner/analysis/surface.py",
           old="return self.rss <= self.rss_min * (1 + stats.f.ppf(level, 1, self.df) / self.df)",
           new="return self.rss <= self.rss_min",
           why="the confidence region is the best fit alone: intervals of zero width (the bootstrap of the old "
               "estimator resampling nothing)",
           tests=(INTERVALS_BY_HAND,)),
    Mutant("rule-interval-joint-quantile", "tuner/analysis/surface.py",
           old="stats.f.ppf(level, 1, self.df)",
           new="stats.f.ppf(level, 2, self.df)",
           why="b's interval from the joint 2-parameter region (F with 2 degrees of freedom), not b's profile",
           tests=(INTERVALS_BY_HAND,)),
    Mutant("peak-interval-chi2-quantile", "tuner/analysis/surface.py",
           old="sigma2 * stats.f.ppf(LEVEL, 1, df)",
           new="sigma2 * stats.chi2.ppf(LEVEL, 1)",
           why="a width's λ* interval from the χ²₁ quantile though σ² is estimated (F₁,df): too narrow",
           tests=(INTERVALS_BY_HAND,)),
    Mutant("a-with-the-sign-of-b-flipped", "tuner/analysis/surface.py",
           old="math.exp(self.rule.best[0] - self.b * math.log(",
           new="math.exp(self.rule.best[0] + self.b * math.log(",
           why="a = λ*(w_min)·w_min^(+b): λ* = a·w^b wrong wherever the narrowest width is not 1",
           tests=(A_AWAY_FROM_ONE,)),
    Mutant("rule-with-the-sign-of-b-flipped", "tuner/analysis/surface.py",
           old="return u[:, :1] + (u[:, 1:] - u[:, :1]) * t",
           new="return u[:, :1] - (u[:, 1:] - u[:, :1]) * t",
           why="λ*(w) extrapolated from the narrowest width with the exponent's sign flipped",
           tests=(KNOWN_RULE,)),
    Mutant("seed-noise-variance-as-sd", "tuner/analysis/surface.py",
           old="math.sqrt(ss_pe / df_pe)",
           new="ss_pe / df_pe",
           why="the replicates' variance used as their standard deviation (near-optimal bands far too narrow)",
           tests=(SEED_NOISE,)),
]


def tracked_files(root: Path) -> list[str]:
    """What git tracks, and untracked files it does not ignore, as in the working tree (never .venv or outputs)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    return sorted({name for name in listed if name and (root / name).is_file()})


def copy_tree(files: list[str], source: Path, target: Path) -> None:
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)


def environment(copy: Path) -> dict[str, str]:
    """Python imports `copy`; one BLAS/OpenMP thread per pytest unless set (runs go side by side, --jobs)."""
    return {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_from(copy: Path) -> None:
    """The copy, not the checkout or an installed package, is what the tests import."""
    out = subprocess.run([sys.executable, "-c", "import models, tests, tuner; print(tuner.__file__, models.__file__)"],
                         cwd=copy, env=environment(copy), capture_output=True, text=True)
    paths = out.stdout.split()
    if out.returncode or not paths or not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in paths):
        sys.exit(f"mutants: the copy in {copy} is not what Python imports ({out.stdout.strip() or out.stderr.strip()})")


def collected(copy: Path, files: list[str]) -> set[str]:
    """The fast tests pytest finds in `files` of `copy`: node ids without parameters, and the files."""
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *FAST, *files], cwd=copy,
                            env=environment(copy), capture_output=True, text=True).stdout.splitlines()
    ids = {line.split("[")[0] for line in listed if "::" in line}
    return ids | {node.split("::")[0] for node in ids}


def drift(mutant: Mutant, base: Path, tests: set[str]) -> str | None:
    """Why `mutant` cannot be applied to the copy `base` whose fast tests are `tests`, or None."""
    path = base / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    found = path.read_text().count(mutant.old)
    if found != 1:
        first = mutant.old.strip().splitlines()[0]
        return f"old text {'not found' if found == 0 else f'found {found} times'} in {mutant.file}: {first!r}"
    missing = [t for t in mutant.tests if t not in tests]
    return f"test(s) not found: {', '.join(missing)}" if missing else None


RUNNING: set[subprocess.Popen] = set()  # pytest processes to stop if this command is stopped


def run_tests(copy: Path, targets: list[str]) -> tuple[int | None, str, float]:
    """(pytest's exit status, None on timeout; its output; seconds) for the fast tests `targets` of `copy`."""
    started = time.monotonic()
    with subprocess.Popen([sys.executable, "-m", "pytest", "-x", "-q", *FAST, *targets], cwd=copy,
                          env=environment(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        RUNNING.add(proc)
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            output, status = proc.communicate()[0], None
        finally:
            RUNNING.discard(proc)
    return status, output, time.monotonic() - started


def try_mutant(mutant: Mutant, base: Path, work: Path, whole_suite: bool) -> tuple[int | None, str, float]:
    """Apply `mutant` to a fresh copy of `base` and run its tests (or the whole fast suite) there."""
    copy = work / mutant.name
    shutil.copytree(base, copy)
    try:
        path = copy / mutant.file
        path.write_text(path.read_text().replace(mutant.old, mutant.new))
        return run_tests(copy, [] if whole_suite else list(mutant.tests))
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def verdict(output: str) -> str:
    """pytest's first failing test, else its last line ("N passed in ...")."""
    failed = [line.split(" - ")[0].split(" ", 1)[1] for line in output.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    lines = output.strip().splitlines()
    return failed[0] if failed else lines[-1] if lines else "no output"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--all", action="store_true", help="run the whole fast suite against every mutant")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="mutants tested side by side (default: the CPU count, at most 4)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTANTS]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        sys.exit(f"mutants: duplicate mutant names {', '.join(duplicated)}")
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        sys.exit(f"mutants: unknown mutant(s) {', '.join(unknown)}; see --list")
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    if args.list:
        for m in chosen:
            print(f"{m.name} ({m.file}): {m.why}\n    killed by {', '.join(m.tests)}")
        return 0

    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("mutants: terminated"))  # runs the cleanup below
    work = Path(tempfile.mkdtemp(prefix="mutants-"))
    pool = ThreadPoolExecutor(max(1, args.jobs))
    try:
        base = work / "base"
        files = tracked_files(ROOT)
        copy_tree(files, ROOT, base)
        check_imports_from(base)
        tests = collected(base, sorted({t.split("::")[0] for m in chosen for t in m.tests}))
        drifted = {m.name: why for m in chosen if (why := drift(m, base, tests))}
        runnable = [m for m in chosen if m.name not in drifted]
        scope = "the whole fast suite" if args.all else "the tests each names"
        print(f"mutants: {len(chosen)} mutants of {ROOT} ({len(files)} files copied to {work}), against {scope}, "
              f"{args.jobs} at a time", flush=True)
        for name, why in drifted.items():
            print(f"MISSING   {name}: {why}", flush=True)
        if runnable:
            status, output, seconds = run_tests(base, [] if args.all else
                                                list(dict.fromkeys(t for m in runnable for t in m.tests)))
            if status != 0:
                print(f"the UNMUTATED copy fails ({seconds:.0f} s), so no mutant can be judged:\n{output[-3000:]}")
                return 1
            print(f"unmutated copy: {verdict(output)} ({seconds:.0f} s)", flush=True)

        outcome: dict[str, str] = {}
        futures = {pool.submit(try_mutant, m, base, work, args.all): m for m in runnable}
        for done, future in enumerate(as_completed(futures), 1):
            mutant, (status, output, seconds) = futures[future], future.result()
            if status == 0:
                outcome[mutant.name] = "survived"
                line = f"SURVIVED  {mutant.name} ({seconds:.0f} s): {mutant.why} [{mutant.file}]"
            elif status in (1, 2, 3):  # tests failed, collection error, internal error
                outcome[mutant.name] = "killed"
                line = f"killed    {mutant.name} ({seconds:.0f} s) by {verdict(output)}"
            else:
                outcome[mutant.name] = "error"
                what = "timed out" if status is None else f"pytest exit status {status}"
                line = f"ERROR     {mutant.name} ({seconds:.0f} s): {what}: {verdict(output)}"
            print(f"[{done:2}/{len(runnable)}] {line}", flush=True)
        counts = {kind: [n for n, o in outcome.items() if o == kind] for kind in ("killed", "survived", "error")}
        print(f"\nmutants: {len(counts['killed'])} killed, {len(counts['survived'])} survived, {len(drifted)} missing, "
              f"{len(counts['error'])} errors, of {len(chosen)}, in {time.monotonic() - started:.0f} s")
        for name in counts["survived"]:
            print(f"  survived: {name} (the fast tests miss this bug: add a test that fails on it)")
        for name, why in drifted.items():
            print(f"  missing:  {name}: {why} (rewrite the mutant against the current code)")
        for name in counts["error"]:
            print(f"  error:    {name}")
        return 1 if counts["survived"] or counts["error"] or drifted else 0
    finally:
        for proc in list(RUNNING):
            proc.kill()
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
