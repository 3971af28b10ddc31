"""The wall-clock budget (`pretrain.budget_minutes`) and the schedule.

As budget-pretraining recipes do: time real steps, then fix the step
count that fits and size warm-up and decay to it. The step is compiled
again once with the final schedule; that compile is paid from the budget
(reserved as the first call's time).
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


# Paid by every budget run: the probe's minimum and the final save.
FIXED_SECONDS = PROBE_MIN_SECONDS + 10.0


def check_budget(p):
    """Refuses, before anything is built, a budget below the fixed costs."""
    if p.budget_minutes > 0 and p.budget_minutes * 60 < FIXED_SECONDS:
        raise ConfigError(
            f"--budget_minutes={p.budget_minutes:g} "
            f"({p.budget_minutes * 60:.0f} s) is too short: a budget run "
            f"times steps for {PROBE_MIN_SECONDS:g} s and reserves 10 s for "
            f"the final save; give at least {FIXED_SECONDS / 60:.2f} minutes, "
            "or --steps without a budget"
        )


def fit_budget(
    p, started, probe, step, compile_seconds, eval_seconds=0.0, eval_every=0
):
    """(total_steps, warmup_steps) that end within the budget.

    `eval_seconds` (the last held-out evaluation's time, 0 = none) is
    paid every `eval_every` steps and once more at the end.
    """
    seconds_per_step = (time.time() - probe[0]) / max(step - probe[1], 1)
    # Reserve: one more compile, the final save and evaluation, 3% slack.
    left = p.budget_minutes * 60 - (time.time() - started)
    left = left * 0.97 - compile_seconds - 10.0 - eval_seconds
    cost = seconds_per_step + (eval_seconds / eval_every if eval_every else 0.0)
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
    if total <= step:
        # Start-up and compiling took what the steps needed: no steps can
        # be added after the timed ones. Said at the first moment it is
        # known (compile time is only known once the step has compiled).
        spent = time.time() - started
        print(
            f"note: start-up and compiling used {spent:.0f} s of the "
            f"{p.budget_minutes * 60:.0f} s budget (compiling {compile_seconds:.0f} "
            f"s): the run stops after the {step} timed steps; give a longer "
            "--budget_minutes for a schedule that trains",
            flush=True,
        )
    return total, warmup


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
