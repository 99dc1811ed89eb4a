"""`stars-guard doctor` on setups that cannot work: it reports, it does not crash."""

from __future__ import annotations

from stars_guard.doctor import diagnose
from tests.doubles import ScriptedReward
from tests.loopback import free_port


def test_an_unreachable_server_is_reported_not_raised() -> None:
    report = diagnose(
        f"llama-server:http://127.0.0.1:{free_port()}",
        "default",
        build_reward=lambda _: ScriptedReward(lambda text: 1.0),
    )
    assert not report.healthy
    failed = [finding for finding in report.findings if not finding.ok]
    assert failed and failed[0].topic == "backend" and "BackendError" in failed[0].detail
    assert "STARS cannot run on this setup" in report.render()


def test_a_bad_spec_is_reported() -> None:
    report = diagnose("nonsense:x", "default")
    assert not report.healthy and report.findings[0].topic == "backend" and "nonsense" in report.findings[0].detail


def test_engine_provisioning_parses_its_command_line(monkeypatch) -> None:
    from stars_guard import engines

    chosen: list[str] = []
    monkeypatch.setattr(engines, "provision_llama_server", lambda progress: chosen.append("llama-server"))
    monkeypatch.setattr(engines, "provision_vllm", lambda progress: chosen.append("vllm"))
    assert engines.main(["provision"]) == 0 and chosen == ["llama-server", "vllm"]
    chosen.clear()
    assert engines.main(["provision", "vllm"]) == 0 and chosen == ["vllm"]
