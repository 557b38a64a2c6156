"""The schedule catalogue against torch's own schedulers, stepped by hand here.

Parameters count epochs; the per-batch cases show the conversion to torch's batch counts.
"""

import json
import time

import pytest
import torch
from torch.optim import lr_scheduler as S

from conftest import run_main
from trainer.__main__ import main
from trainer.config import ScheduleConfig
from trainer.formula import Formula
from trainer.schedules import CATALOGUE, ScheduleError, lr_curve, resolve, schedule_code

EPOCHS, STEPS, LR = 12, 3, 0.1
VAL_LOSS = [1.0, 0.8, 0.7, 0.7, 0.71, 0.7, 0.69, 0.7, 0.7, 0.72, 0.7, 0.7]


def hand_curve(make, per_batch, epochs=EPOCHS, steps=STEPS, metric=None):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR, momentum=0.9)
    scheduler = make(optimizer)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_batch:
                scheduler.step()
        if metric is not None:
            scheduler.step(metric[epoch])
        elif not per_batch:
            scheduler.step()
    return lrs


# (scheduler, params, step_per, how torch is called by hand)
CASES = [
    ("StepLR", {"step_size": 3, "gamma": 0.5}, "epoch", lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
    # Keras' ExponentialDecay(decay_steps=6, staircase=True) is StepLR stepped per batch: 2 epochs of 3 batches.
    ("StepLR", {"step_size": 2, "gamma": 0.9}, "batch", lambda o: S.StepLR(o, step_size=2 * STEPS, gamma=0.9)),
    ("MultiStepLR", {"milestones": [4, 8]}, "epoch", lambda o: S.MultiStepLR(o, milestones=[4, 8])),
    ("MultiStepLR", {"milestones": "2, 5"}, "batch", lambda o: S.MultiStepLR(o, milestones=[2 * STEPS, 5 * STEPS])),
    ("ExponentialLR", {"gamma": 0.8}, "epoch", lambda o: S.ExponentialLR(o, gamma=0.8)),
    ("ExponentialLR", {"gamma": 0.8}, "batch", lambda o: S.ExponentialLR(o, gamma=0.8 ** (1 / STEPS))),
    ("CosineAnnealingLR", {"T_max": 12, "eta_min": 0.001}, "epoch", lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=0.001)),
    ("CosineAnnealingWarmRestarts", {"T_0": 4, "T_mult": 2}, "batch",
     lambda o: S.CosineAnnealingWarmRestarts(o, T_0=4 * STEPS, T_mult=2)),
    ("ReduceLROnPlateau", {"patience": 2, "factor": 0.5}, "epoch", lambda o: S.ReduceLROnPlateau(o, patience=2, factor=0.5)),
    ("LambdaLR", {"lr_lambda": "0.9 ** epoch"}, "epoch", lambda o: S.LambdaLR(o, lr_lambda=lambda epoch: 0.9**epoch)),
    ("LambdaLR", {"lr_lambda": "lambda epoch: 0.9 ** epoch"}, "batch",
     lambda o: S.LambdaLR(o, lr_lambda=lambda step: 0.9 ** (step / STEPS))),
    ("MultiplicativeLR", {"lr_lambda": "0.95"}, "batch", lambda o: S.MultiplicativeLR(o, lr_lambda=lambda step: 0.95 ** (1 / STEPS))),
    ("OneCycleLR", {"max_lr": 0.1, "total_steps": 36}, "batch", lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=36)),
    ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5, "mode": "triangular2"}, "batch",
     lambda o: S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=5, mode="triangular2")),
    ("LinearLR", {"start_factor": 0.25, "total_iters": 6}, "epoch", lambda o: S.LinearLR(o, start_factor=0.25, total_iters=6)),
    ("ConstantLR", {"factor": 0.5, "total_iters": 4}, "epoch", lambda o: S.ConstantLR(o, factor=0.5, total_iters=4)),
    ("PolynomialLR", {"total_iters": 10, "power": 2.0}, "epoch", lambda o: S.PolynomialLR(o, total_iters=10, power=2.0)),
]


def config(name, params, step_per="epoch", **kw):
    return ScheduleConfig(name, LR, kw.pop("epochs", EPOCHS), kw.pop("steps_per_epoch", STEPS), params, step_per=step_per, **kw)


def test_every_catalogue_scheduler_has_a_hand_stepped_case():
    assert {case[0] for case in CASES} == set(CATALOGUE)


@pytest.mark.parametrize("name,params,step_per,make", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_curve_matches_torch_scheduler_stepped_by_hand(name, params, step_per, make):
    metric = VAL_LOSS if name == "ReduceLROnPlateau" else None
    curve = lr_curve(config(name, params, step_per), metric)
    expected = hand_curve(make, per_batch=step_per == "batch", metric=metric)
    assert len(curve.lr) == EPOCHS * STEPS
    assert curve.lr == expected


@pytest.mark.parametrize("name,params,step_per,make", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_generated_pytorch_code_reproduces_the_curve(name, params, step_per, make):
    metric = VAL_LOSS if name == "ReduceLROnPlateau" else None
    cfg = config(name, params, step_per, warmup_epochs=2 if CATALOGUE[name].warmup_allowed else 0)
    namespace = {}
    exec(schedule_code(lr_curve(cfg, metric)), namespace)  # the test runs code the tool generated, not user text
    assert namespace["lrs"] == lr_curve(cfg, metric).lr


def test_warmup_is_a_sequential_lr_with_the_main_scheduler_counting_after_it():
    cfg = config("CosineAnnealingLR", {"T_max": 10}, warmup_epochs=2)

    def make(o):
        warmup = S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=2)
        return S.SequentialLR(o, [warmup, S.CosineAnnealingLR(o, T_max=10)], milestones=[2])

    assert lr_curve(cfg).lr == hand_curve(make, per_batch=False)


def test_warmup_counts_batches_when_stepping_per_batch():
    cfg = config("StepLR", {"step_size": 4}, step_per="batch", warmup_epochs=1)

    def make(o):
        warmup = S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=STEPS)
        return S.SequentialLR(o, [warmup, S.StepLR(o, step_size=4 * STEPS)], milestones=[STEPS])

    assert lr_curve(cfg).lr == hand_curve(make, per_batch=True)


def test_one_cycle_and_cyclic_always_step_per_batch():
    curve = lr_curve(config("OneCycleLR", {}, step_per="epoch"))
    assert curve.step_per == "batch"
    assert curve.lr == hand_curve(lambda o: S.OneCycleLR(o, max_lr=LR, total_steps=EPOCHS * STEPS), per_batch=True)
    assert "always steps per batch" in curve.notes[0]


def test_torch_required_parameters_are_derived_from_the_run_length():
    kwargs = resolve(config("CosineAnnealingLR", {}, warmup_epochs=2)).kwargs
    assert kwargs["T_max"] == EPOCHS - 2
    assert resolve(config("CosineAnnealingLR", {}, step_per="batch")).kwargs["T_max"] == EPOCHS * STEPS
    assert resolve(config("StepLR", {})).kwargs == {"step_size": 4, "gamma": 0.1}  # gamma: torch's default


def test_torch_defaults_are_used_for_parameters_left_out():
    kwargs = resolve(config("ReduceLROnPlateau", {})).kwargs
    assert kwargs["patience"] == 10 and kwargs["factor"] == 0.1 and kwargs["threshold"] == 1e-4
    assert resolve(config("PolynomialLR", {})).kwargs == {"total_iters": 5, "power": 1.0}


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("StepLR", {"step_size": -3}, "StepLR: step_size must be at least 1, got -3"),
        ("StepLR", {"step_size": 2.5}, "step_size must be a whole number"),
        ("StepLR", {"gamma": "abc"}, "gamma must be a number"),
        ("MultiStepLR", {"milestones": [6, 3]}, "milestones must be strictly increasing"),
        ("MultiStepLR", {"milestones": "3, x"}, "milestones must be a list of numbers like [30, 80], got '3, x'"),
        ("CosineAnnealingLR", {"T_max": 0}, "T_max must be at least 1"),
        ("ExponentialLR", {"gamma": 0}, "gamma must be greater than 0"),
        ("ReduceLROnPlateau", {"factor": 1.0}, "factor must be less than 1"),
        ("OneCycleLR", {"total_steps": 5}, "total_steps (5) must cover the run's 36 batches"),
        ("LinearLR", {"start_factor": 1.5}, "start_factor must be at most 1"),
        ("CyclicLR", {"mode": "zigzag"}, "mode must be one of triangular, triangular2, exp_range"),
        ("StepLR", {"stepsize": 3}, "StepLR has no parameter stepsize"),
        ("LambdaLR", {"lr_lambda": "__import__('os').system('id')"}, "lr_lambda"),
        ("LambdaLR", {"lr_lambda": "epoch.real"}, "lr_lambda"),
        ("Nonsense", {}, "Unknown scheduler 'Nonsense'. Choose one of: StepLR"),
    ],
)
def test_invalid_parameters_are_refused_with_a_readable_message(name, params, message):
    with pytest.raises(ScheduleError) as info:
        lr_curve(config(name, params))
    assert message in str(info.value)


def test_invalid_run_settings_are_refused():
    for kwargs, message in [
        ({"epochs": 0}, "epochs must be a whole number of at least 1"),
        ({"warmup_epochs": 12}, "warmup_epochs (12) must be less than epochs (12)"),
    ]:
        with pytest.raises(ScheduleError, match=message.replace("(", r"\(").replace(")", r"\)")):
            lr_curve(config("StepLR", {}, **kwargs))
    with pytest.raises(ScheduleError, match="cannot have a warm-up"):
        lr_curve(config("OneCycleLR", {}, warmup_epochs=1))
    with pytest.raises(ScheduleError, match="lr must be a positive number"):
        lr_curve(ScheduleConfig("StepLR", lr=-1.0))


def test_formula_that_fails_at_some_epoch_says_which():
    with pytest.raises(ScheduleError, match="epoch 3"):
        lr_curve(config("LambdaLR", {"lr_lambda": "1 / abs(epoch - 3)"}))


def test_plateau_without_a_metric_uses_the_shaped_val_loss_and_returns_it():
    curve = lr_curve(config("ReduceLROnPlateau", {"patience": 1}))
    assert len(curve.val_loss) == EPOCHS
    assert curve.lr[-1] < LR  # the default shape plateaus, so the LR was reduced


def test_ten_thousand_step_curve_is_fast():
    lr_curve(config("CosineAnnealingLR", {}))  # torch's optimizer imports once per process
    started = time.perf_counter()
    curve = lr_curve(config("CosineAnnealingLR", {}, step_per="batch", epochs=100, steps_per_epoch=100, warmup_epochs=5))
    assert len(curve.lr) == 10_000
    assert time.perf_counter() - started < 0.5


def run_cli(*args):
    return run_main(main, "lr", *args)


def test_cli_prints_one_lr_per_optimizer_step_as_json():
    done = run_cli("--scheduler", "MultiStepLR", "--lr", "0.1", "--epochs", "6", "--steps-per-epoch", "2",
                   "--param", "milestones=[3,5]", "--param", "gamma=0.5", "--json")
    assert done.returncode == 0, done.stderr
    lrs = json.loads(done.stdout)["lr"]
    assert lrs == hand_curve(lambda o: S.MultiStepLR(o, milestones=[3, 5], gamma=0.5), False, epochs=6, steps=2)


def test_cli_takes_formulas_and_warmup():
    done = run_cli("--scheduler", "LambdaLR", "--epochs", "5", "--param", "lr_lambda=0.5 ** epoch",
                   "--warmup-epochs", "1", "--step-per", "epoch", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["lr"]) == 5


def test_cli_bad_input_exits_non_zero_with_one_line():
    done = run_cli("--scheduler", "StepLR", "--param", "step_size=-1", "--json")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0
    assert "step_size must be at least 1" in done.stderr


def test_negative_formula_factor_is_refused():
    with pytest.raises(ScheduleError, match="cannot be negative"):
        lr_curve(config("LambdaLR", {"lr_lambda": "1 - epoch / 5"}))


def test_multiplicative_factors_that_overflow_the_lr_are_refused():
    with pytest.raises(ScheduleError, match="overflow at epoch 2"):
        lr_curve(config("MultiplicativeLR", {"lr_lambda": "1e300"}))
    assert lr_curve(config("MultiplicativeLR", {"lr_lambda": "1.5"})).lr[-1] == pytest.approx(LR * 1.5 ** (EPOCHS - 1))


EITHER_WAY = [name for name, info in CATALOGUE.items() if not (info.per_batch_only or info.needs_metric)]


@pytest.mark.parametrize("name", EITHER_WAY)
def test_stepping_per_batch_keeps_the_curve_at_every_epoch_start(name):
    per_epoch = lr_curve(config(name, {}, "epoch", epochs=9, steps_per_epoch=4)).lr
    per_batch = lr_curve(config(name, {}, "batch", epochs=9, steps_per_epoch=4)).lr
    assert per_batch[::4] == pytest.approx(per_epoch[::4], rel=1e-9)
    assert len(set(per_batch)) > len(set(per_epoch)) or len(set(per_epoch)) <= 3  # smoother, or a few steps


@pytest.mark.parametrize("step_per", ["epoch", "batch"])
def test_counts_of_epochs_are_whole_numbers_either_way(step_per):
    # Per batch too: training only learns its batches per epoch once the photos are read, after this check.
    with pytest.raises(ScheduleError, match="StepLR: step_size must be a whole number, got 2.5"):
        lr_curve(config("StepLR", {"step_size": 2.5}, step_per))


def test_generated_code_says_how_epochs_became_batches():
    code = schedule_code(lr_curve(config("MultiStepLR", {"milestones": [2, 5]}, "batch")))
    assert "# Stepped per batch, 3 per epoch: milestones [2, 5] epochs = [6, 15] batches" in code
    assert "gamma=0.5 ** (1 / 3)" in schedule_code(lr_curve(config("ExponentialLR", {"gamma": 0.5}, "batch")))


def test_a_lambda_written_as_in_the_tutorials_is_its_formula():
    typed = lr_curve(config("LambdaLR", {"lr_lambda": "lambda epoch: 0.95 ** epoch"}))
    assert typed.lr == lr_curve(config("LambdaLR", {"lr_lambda": "0.95 ** epoch"})).lr
    assert "lr_lambda=lambda epoch: 0.95 ** epoch)" in schedule_code(typed)


def test_defaults_torch_requires_are_shown_in_the_resolved_parameters():
    assert resolve(config("MultiStepLR", {}, epochs=30)).params == {"milestones": [15, 22], "gamma": 0.1}
    assert resolve(config("ExponentialLR", {})).params == {"gamma": 0.9}
    assert resolve(config("LambdaLR", {})).params["lr_lambda"].python_source() == "0.95 ** epoch"


def test_plateau_with_torch_defaults_and_the_default_loss_shape_reduces_the_lr():
    curve = lr_curve(ScheduleConfig("ReduceLROnPlateau", lr=0.1, epochs=30))
    assert curve.lr[-1] < 0.1 / 10 * 1.0001  # at least one reduction by torch's factor 0.1


@pytest.mark.parametrize(
    "params,message",
    [
        ({"milestones": list(range(1, 1_002))}, "MultiStepLR: milestones can have at most 1,000 values, got 1,001"),
        ({"milestones": ",".join(["1"] * 20_000)}, "MultiStepLR: milestones can have at most 1,000 values"),
        ({"milestones": [10**400]}, "milestones must be a finite number no larger than about 1.8e308"),
        ({"gamma": 10**1000}, "gamma must be a finite number no larger than about 1.8e308, got 1000000"),
        ({"gamma": 10**5000}, "gamma must be a finite number no larger than about 1.8e308, got a number too large to print"),
    ],
)
def test_huge_lists_and_numbers_are_refused_before_any_work(params, message):
    started = time.perf_counter()
    with pytest.raises(ScheduleError) as info:
        lr_curve(config("MultiStepLR", params))
    assert message in str(info.value)
    assert time.perf_counter() - started < 0.5


def test_a_heavy_formula_over_a_long_run_is_refused_before_it_is_evaluated():
    heavy = "+".join(["sin(epoch)**2"] * 30)  # never negative: only its size is wrong
    started = time.perf_counter()
    with pytest.raises(ScheduleError, match=f"lr_lambda has {Formula(heavy).size} parts to evaluate at 1,000,001 steps"):
        lr_curve(config("LambdaLR", {"lr_lambda": heavy}, "batch", epochs=1000, steps_per_epoch=1000))
    assert time.perf_counter() - started < 0.5


def test_a_learning_rate_that_overflows_is_refused_with_its_step():
    with pytest.raises(ScheduleError, match=r"ExponentialLR: the learning rate becomes inf at step 2 \(epoch 3\)"):
        lr_curve(config("ExponentialLR", {"gamma": 1e300}, steps_per_epoch=1))


@pytest.mark.parametrize(
    "val_loss,message",
    [
        ("abc", "val_loss must be a list of numbers, one per epoch, got 'abc'"),
        ([1.0] * 5_000_000, "val_loss has 5,000,000 values; ReduceLROnPlateau needs one per epoch (12)"),
        ([1.0] * 11 + ["x"], "val_loss[11] must be a number, got 'x'"),
        ([1.0] * 11 + [None], "val_loss[11] must be a number, got None"),
    ],
)
def test_a_bad_val_loss_for_plateau_says_what_is_wrong(val_loss, message):
    with pytest.raises(ScheduleError) as info:
        lr_curve(config("ReduceLROnPlateau", {}), val_loss)
    assert str(info.value) == message


def test_cli_refuses_a_learning_rate_that_overflows_instead_of_printing_infinity():
    done = run_cli("--scheduler", "ExponentialLR", "--epochs", "5", "--param", "gamma=1e300", "--json")
    assert done.returncode == 2 and "Infinity" not in done.stdout
    assert "error: ExponentialLR: the learning rate becomes inf at step 2 (epoch 3)" in done.stderr
