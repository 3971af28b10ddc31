"""The wall-clock budget (`pretrain.budget_minutes`) and the schedule.

As budget-pretraining recipes do: time real steps, then fix the step
count that fits and size warm-up and decay to it. The step is compiled
again with the new schedule; that compile is paid from the budget
(reserved as the first call's time). At `REFIT_AT` of the budget the count
is fitted again from the pace since the last fit (`refit`), when the run
would otherwise miss its end by more than `REFIT_TOLERANCE`.
"""

import dataclasses
import time

from configs.schema import ConfigError

PROBE_MIN_SECONDS = 5.0


def warmup_steps_of(p, total_steps):
    if p.warmup_fraction > 0:
        return max(1, int(round(p.warmup_fraction * total_steps)))
    return p.warmup_steps


def probe_done(probe, p, runner, out):
    if probe is None:
        return False
    budget = p.budget_minutes * 60
    if time.time() - probe[0] < max(PROBE_MIN_SECONDS, 0.02 * budget):
        return False
    runner.wait(out)  # measure finished steps, not queued ones
    return True


# Reserved for the final save of every budget run.
SAVE_SECONDS = 10.0
# Paid by every budget run: the probe's minimum and the final save.
FIXED_SECONDS = PROBE_MIN_SECONDS + SAVE_SECONDS


def check_budget(p):
    """Refuses, before anything is built, a budget below the fixed costs,
    and a budget with several processes (each would time its own host and
    could fit another step count: the one that stops first would leave the
    others waiting in a collective)."""
    if p.budget_minutes > 0 and p.strategy == "multi_worker":
        raise ConfigError(
            "--budget_minutes is timed per process, so --strategy=multi_worker "
            "could end its processes at different steps: give --steps"
        )
    if p.budget_minutes > 0 and p.budget_minutes * 60 < FIXED_SECONDS:
        raise ConfigError(
            f"--budget_minutes={p.budget_minutes:g} "
            f"({p.budget_minutes * 60:.0f} s) is too short: a budget run "
            f"times steps for {PROBE_MIN_SECONDS:g} s and reserves "
            f"{SAVE_SECONDS:g} s for "
            f"the final save; give at least {FIXED_SECONDS / 60:.2f} minutes, "
            "or --steps without a budget"
        )


def _pace(window, step, now, eval_seconds, eval_every):
    """(seconds per step since `window` = (time, step), seconds per step
    with the held-out evaluations' share added)."""
    seconds_per_step = (now - window[0]) / max(step - window[1], 1)
    share = eval_seconds / eval_every if eval_every else 0.0
    return seconds_per_step, seconds_per_step + share


def fit_budget(
    p,
    started,
    probe,
    step,
    compile_seconds,
    eval_seconds=0.0,
    eval_every=0,
    now=None,
    first=True,
):
    """(total_steps, warmup_steps) that end within the budget.

    `eval_seconds` (the last held-out evaluation's time, 0 = none) is
    paid every `eval_every` steps and once more at the end. `first`: the
    fit after the probe (a budget spent by then was spent starting up).
    """
    now = time.time() if now is None else now
    seconds_per_step, cost = _pace(probe, step, now, eval_seconds, eval_every)
    # Reserve: one more compile, the final save and evaluation, 3% slack.
    left = p.budget_minutes * 60 - (now - started)
    left = left * 0.97 - compile_seconds - SAVE_SECONDS - eval_seconds
    # `steps` stays an upper bound.
    total = min(step + max(int(left / cost), 0), p.steps)
    warmup = warmup_steps_of(p, total)
    if p.warmup_fraction == 0:
        warmup = min(warmup, max(total // 10, 1))
    print(
        f"budget {p.budget_minutes:g} min: {1 / seconds_per_step:.2f} steps/s "
        f"measured -> {total} steps, warm-up {warmup}",
        flush=True,
    )
    if total <= step and first:
        # Start-up and compiling took what the steps needed: no steps can
        # be added after the timed ones. Said at the first moment it is
        # known (compile time is only known once the step has compiled).
        spent = now - started
        print(
            f"note: start-up and compiling used {spent:.0f} s of the "
            f"{p.budget_minutes * 60:.0f} s budget (compiling {compile_seconds:.0f} "
            f"s): the run stops after the {step} timed steps; give a longer "
            "--budget_minutes for a schedule that trains",
            flush=True,
        )
    return total, warmup


# Fractions of the budget at which the step count is fitted again, from the
# steps timed since the last fit. The probe's 2% of the budget cannot see how
# checkpoint saves, a warmed-up input pipeline or a busier machine change
# the pace later (measured with one fit: a 30-minute run ended after 1,580
# s, a 60-minute one after 3,804 s).
REFIT_AT = (0.5, 0.8)
# A projected end within this fraction of the budget keeps the schedule: a
# re-fit costs a compile and moves the learning rate a little.
REFIT_TOLERANCE = 0.01


def refit_due(p, started, refits_done, now=None):
    """Whether the next re-fit's moment (`REFIT_AT`) has come."""
    if refits_done >= len(REFIT_AT):
        return False
    now = time.time() if now is None else now
    return now - started >= REFIT_AT[refits_done] * p.budget_minutes * 60


def refit(
    p,
    started,
    window,
    step,
    schedule,
    compile_seconds,
    eval_seconds=0.0,
    eval_every=0,
    now=None,
):
    """(total_steps, warmup_steps) fitted again, or None to keep `schedule`.

    Args:
        p: the `PretrainConfig` (its `budget_minutes`).
        started: time.time() at the run's start, seconds.
        window: (time, step) from which the pace is measured: after the
            current schedule's step compiled, evaluations left out.
        step: int, steps finished now.
        schedule: (total_steps, warmup_steps) in force.
        compile_seconds: float, reserved for compiling the new schedule.
        eval_seconds, eval_every: as `fit_budget`.
        now: time.time() (a parameter for tests).
    """
    now = time.time() if now is None else now
    total, warmup = schedule
    budget = p.budget_minutes * 60
    _, cost = _pace(window, step, now, eval_seconds, eval_every)
    end = now - started + (total - step) * cost + eval_seconds + SAVE_SECONDS
    if abs(end - budget) <= REFIT_TOLERANCE * budget:
        return None
    print(
        f"budget re-fit at {now - started:.0f} s: {total} steps would end "
        f"at {end:.0f} s of {budget:.0f}",
        flush=True,
    )
    new_total, new_warmup = fit_budget(
        p,
        started,
        window,
        step,
        compile_seconds,
        eval_seconds,
        eval_every,
        now,
        first=False,
    )
    if new_total <= step:
        print(f"budget spent: the run stops at step {step}", flush=True)
    # Past warm-up the decay does not depend on it: keep what ran.
    return new_total, warmup if step >= warmup else new_warmup


def with_schedule(cfg, total_steps, warmup_steps):
    return cfg.replace(
        pretrain=dataclasses.replace(
            cfg.pretrain, steps=total_steps, warmup_steps=warmup_steps
        )
    )


def recorded_schedule(model_dir, p):
    from configs.loader import load_resolved

    try:
        recorded = load_resolved(model_dir).pretrain
    except ConfigError:
        return p.steps, warmup_steps_of(p, p.steps)
    return recorded.steps, recorded.warmup_steps


def schedule(p, total_steps, warmup_steps):
    from model.optimization import WarmupLinearDecay

    return WarmupLinearDecay(p.learning_rate, total_steps, warmup_steps)
