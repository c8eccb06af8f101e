"""Event translation: task lists, steps, percentages, failure classification, redaction."""

from __future__ import annotations

from orchestrator.errors import classify_failure
from orchestrator.progress import ProgressTracker, event_task_name, parse_task_list
from orchestrator.redact import Redactor

LISTING = """
playbook: playbooks/team.provision.yml

  play #1 (localhost): Provision the team instance\tTAGS: []
    tasks:
      team_instance : Validating arguments against arg spec 'main'\tTAGS: [always]
      team_instance : Check the team slug\tTAGS: [team_instance]
      team_instance : Create the team directory\tTAGS: [team_instance, team_instance_files]
      Say hello\tTAGS: []
"""


def test_parse_task_list() -> None:
    assert parse_task_list(LISTING) == [
        "team_instance : Validating arguments against arg spec 'main'",
        "team_instance : Check the team slug",
        "team_instance : Create the team directory",
        "Say hello",
    ]


def test_event_task_name() -> None:
    assert event_task_name({"task": "Say hello", "role": ""}) == "Say hello"
    assert (
        event_task_name({"task": "Check the team slug", "role": "team_instance"})
        == "team_instance : Check the team slug"
    )


def test_tracker_follows_the_plan_and_never_goes_back() -> None:
    tracker = ProgressTracker(parse_task_list(LISTING))
    first = tracker.task_started({"task": "Validating arguments against arg spec 'main'", "role": "team_instance"})
    assert (first.step, first.total_steps, first.percentage) == (1, 4, 25)
    # A skipped-ahead task jumps to its position.
    jump = tracker.task_started({"task": "Create the team directory", "role": "team_instance"})
    assert (jump.step, jump.percentage) == (3, 75)
    assert jump.message == "Create the team directory"
    # A task the listing did not know (dynamic include, handler) counts one more and grows the total.
    extra1 = tracker.task_started({"task": "Say hello"})
    extra2 = tracker.task_started({"task": "handler: restart"})
    assert (extra1.step, extra2.step) == (4, 5)
    assert extra2.total_steps == 5 and extra2.percentage == 100


def test_tracker_without_a_plan_counts_up() -> None:
    tracker = ProgressTracker([])
    steps = [tracker.task_started({"task": f"t{i}"}) for i in range(3)]
    assert [s.step for s in steps] == [1, 2, 3]
    assert all(s.percentage < 100 for s in steps)


def test_classify_failure() -> None:
    transient = classify_failure(
        "runner_on_failed",
        {"task": "Call API", "role": "github_repo", "res": {"msg": "Status code was 503", "status": 503}},
    )
    assert transient.transient and transient.message == "task 'github_repo : Call API' failed: Status code was 503"
    refused = classify_failure("runner_on_failed", {"task": "x", "res": {"msg": "Connection refused"}})
    assert refused.transient
    permanent = classify_failure("runner_on_failed", {"task": "x", "res": {"msg": "Not Found", "status": 404}})
    assert not permanent.transient
    unreachable = classify_failure("runner_on_unreachable", {"task": "x", "res": {"msg": "ssh: no route"}})
    assert unreachable.transient and "unreachable" in unreachable.message
    long = classify_failure("runner_on_failed", {"task": "x", "res": {"msg": "y" * 5000}})
    assert len(long.message) < 2100


def test_redactor_masks_plain_and_json_escaped_values() -> None:
    redactor = Redactor(["short", "hunter2-secret"])
    assert redactor.redact("pw=hunter2-secret;short") == "pw=***;short"  # too short to be a secret
    redactor.add('quote"and\\slash')
    assert redactor.redact('{"v": "quote\\"and\\\\slash"}') == '{"v": "***"}'
    assert Redactor().redact("nothing") == "nothing"
