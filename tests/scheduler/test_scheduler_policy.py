"""Restart backoff and circuit breaker, stagger, pause ownership, and where a
job's schedule resumes: pure functions fed with times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from otel_render.scheduler.control import (
    APS_PAUSED,
    APS_RUNNING,
    APS_STOPPED,
    KIND_BACKGROUND,
    KIND_BLOCKING,
    MODE_ACTIVE,
    MODE_WAITING,
    derive_state,
    job_key,
    plan_next_run_time,
)
from otel_render.scheduler.policy import (
    GIVE_UP,
    RESTART,
    WAIT,
    PauseLedger,
    RestartPolicy,
    stagger_wait,
    supervisor_interval,
)

UTC = timezone.utc


def test_restart_waits_for_a_doubling_backoff():
    policy = RestartPolicy(limit=5, window_s=600, backoff_s=1)
    decision = policy.decide([], died_at=100, now=100.5)
    assert decision.action == WAIT and decision.at == 101
    assert policy.decide([], died_at=100, now=101).action == RESTART
    assert policy.decide([90, 95], died_at=100, now=103.9).action == WAIT  # 2 recent restarts: 4 s
    assert policy.decide([90, 95], died_at=100, now=104).action == RESTART


def test_backoff_is_capped():
    policy = RestartPolicy(limit=100, window_s=10_000, backoff_s=1)
    assert policy.delay(30) == 60
    assert RestartPolicy(limit=1, window_s=1, backoff_s=120).delay(3) == 120
    assert RestartPolicy(limit=1, window_s=1, backoff_s=0).delay(3) == 0


def test_the_breaker_opens_after_the_limit_within_the_window_and_the_window_slides():
    policy = RestartPolicy(limit=3, window_s=600, backoff_s=0)
    assert policy.decide([10, 20, 30], died_at=40, now=40).action == GIVE_UP
    assert policy.decide([10, 20, 30], died_at=615, now=615).action == RESTART  # the first fell out
    assert RestartPolicy(limit=0, window_s=600, backoff_s=0).decide([], 1, 1).action == GIVE_UP


def test_stagger():
    assert stagger_wait(None, now=50, stagger_s=5) == 0
    assert stagger_wait(48, now=50, stagger_s=5) == 3
    assert stagger_wait(40, now=50, stagger_s=5) == 0
    assert stagger_wait(49, now=50, stagger_s=0) == 0


@pytest.mark.parametrize(
    ("poll", "stagger", "backoff", "expected"),
    [(2, 5, 1, 0.5), (60, 300, 60, 1.0), (0.1, 0, 0, 0.05), (2, 0.4, 0, 0.1)],
)
def test_supervisor_interval_honours_the_shortest_delay(poll, stagger, backoff, expected):
    assert supervisor_interval(poll_s=poll, stagger_s=stagger, backoff_s=backoff) == pytest.approx(expected)


def test_an_owner_resumes_only_what_it_paused():
    ledger = PauseLedger()
    assert ledger.pause("recovery", "s1", running=True)
    assert not ledger.pause("memory", "s1", running=False)  # already paused, now held by two
    assert not ledger.pause("recovery", "s2", running=False)  # paused by the app: not ours
    assert not ledger.resume("recovery", "s2")
    assert not ledger.resume("recovery", "s1")
    assert ledger.holders("s1") == {"memory"}
    assert ledger.resume("memory", "s1")
    assert not ledger.resume("memory", "s1")
    ledger.pause("recovery", "s3", running=True)
    ledger.forget("s3")
    assert not ledger.resume("recovery", "s3")


def test_job_key_replaces_random_ids_with_the_job_name():
    assert job_key("nightly-report", "report") == "nightly-report"
    assert job_key("0f4c3b2a1d6e5f708192a3b4c5d6e7f8", "send_digest") == "send_digest"
    assert job_key("0F4C3B2A1D6E5F708192A3B4C5D6E7F8", "send_digest") == "0F4C3B2A1D6E5F708192A3B4C5D6E7F8"


@pytest.mark.parametrize(
    ("aps_state", "mode", "kind", "failed", "alive", "expected"),
    [
        (APS_RUNNING, MODE_ACTIVE, KIND_BACKGROUND, False, True, "running"),
        (APS_PAUSED, MODE_ACTIVE, KIND_BACKGROUND, False, True, "paused"),
        (APS_RUNNING, MODE_ACTIVE, KIND_BACKGROUND, False, False, "dead"),
        (APS_RUNNING, MODE_ACTIVE, KIND_BLOCKING, False, False, "running"),
        (APS_RUNNING, MODE_ACTIVE, KIND_BACKGROUND, True, False, "failed"),
        (APS_RUNNING, MODE_WAITING, KIND_BACKGROUND, False, False, "standby"),
        (APS_PAUSED, MODE_WAITING, KIND_BACKGROUND, False, False, "paused"),
        (APS_STOPPED, MODE_ACTIVE, KIND_BACKGROUND, True, False, "stopped"),
    ],
)
def test_reported_state(aps_state, mode, kind, failed, alive, expected):
    assert derive_state(aps_state=aps_state, mode=mode, kind=kind, failed=failed, thread_alive=alive) == expected


START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_a_takeover_continues_at_the_first_fire_time_after_the_previous_runner():
    trigger = IntervalTrigger(minutes=10, start_date=START)
    recorded = (START + timedelta(minutes=30)).timestamp()
    planned = plan_next_run_time(
        next_run_time=START + timedelta(minutes=10),
        recorded=recorded,
        has_record=True,
        trigger=trigger,
        misfire_grace_time=1,
        now=START + timedelta(minutes=31),
    )
    assert planned == START + timedelta(minutes=30)


def test_a_takeover_aligns_to_its_own_phase_after_the_previous_runner():
    # Without --preload each worker built its trigger at a slightly different time.
    trigger = IntervalTrigger(minutes=10, start_date=START + timedelta(seconds=3))
    recorded = (START + timedelta(minutes=30)).timestamp()
    planned = plan_next_run_time(
        next_run_time=START + timedelta(minutes=10, seconds=3),
        recorded=recorded,
        has_record=True,
        trigger=trigger,
        misfire_grace_time=1,
        now=START + timedelta(minutes=29),
    )
    assert planned == START + timedelta(minutes=30, seconds=3)


def test_a_takeover_keeps_a_schedule_already_ahead_and_leaves_one_off_jobs_alone():
    cron = CronTrigger(minute="0", timezone=UTC)
    ahead = START + timedelta(hours=2)
    assert plan_next_run_time(
        next_run_time=ahead, recorded=(START + timedelta(hours=1)).timestamp(), has_record=True,
        trigger=cron, misfire_grace_time=1, now=START,
    ) == ahead  # fmt: skip
    once = DateTrigger(run_date=START, timezone=UTC)
    assert plan_next_run_time(
        next_run_time=START, recorded=(START + timedelta(hours=1)).timestamp(), has_record=True,
        trigger=once, misfire_grace_time=1, now=START + timedelta(hours=2),
    ) == START  # fmt: skip


def test_without_a_previous_runner_a_run_that_fell_due_while_waiting_runs_now():
    trigger = IntervalTrigger(minutes=10, start_date=START)
    now = START + timedelta(minutes=10, seconds=8)
    due = START + timedelta(minutes=10)
    assert plan_next_run_time(
        next_run_time=due, recorded=None, has_record=False, trigger=trigger, misfire_grace_time=1, now=now
    ) == now  # fmt: skip
    # Within the grace time APScheduler runs it as scheduled; with no grace limit, too.
    assert plan_next_run_time(
        next_run_time=due, recorded=None, has_record=False, trigger=trigger, misfire_grace_time=30, now=now
    ) == due  # fmt: skip
    assert plan_next_run_time(
        next_run_time=due, recorded=None, has_record=False, trigger=trigger, misfire_grace_time=None, now=now
    ) == due  # fmt: skip
