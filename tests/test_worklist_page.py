"""The worklist page in headless Chromium (phone-sized) against a real node.

Two synthetic chest series go through the node by C-STORE; the page, signed
in through its login form, must list both studies in triage order with the
recorded flag, priority and state and the thumbnail of the key image (a
placeholder for the study that was not analysed), show the research-use line, fit the
phone's width, refresh itself, and keep the token out of page-readable
storage. Screenshots go to ``test-artifacts/worklist/`` and `tmp_path`.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import JobState
from tests.api_fixtures import ApiNode, api_node, process_series
from tests.node_fixtures import tiny_model
from tests.viewer_server import VIEWER_DIR, require_browser_tools
from tests.api_fixtures import triage_of

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts" / "worklist"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiNode]:
    model_dir = tiny_model(tmp_path_factory.mktemp("model"))
    with api_node(tmp_path_factory.mktemp("node"), model_dir) as running:
        yield running


def run_page_check(api: ApiNode, studies: list[str], screenshots: list[Path],
                   tmp_path: Path) -> dict:
    node = require_browser_tools()  # /usr/bin/chromium, as worklist_check.mjs launches it
    config = tmp_path / "worklist-check.json"
    config.write_text(json.dumps({
        "baseUrl": api.base_url,
        "token": api.token,
        "studies": studies,
        "screenshots": [str(p) for p in screenshots],
        "timeoutMs": 30000,
    }))
    completed = subprocess.run(
        [node, str(VIEWER_DIR / "worklist_check.mjs"), str(config)],
        cwd=VIEWER_DIR, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["ok"], result.get("error")
    return result


def test_processed_studies_appear_in_triage_order_with_their_flag(
    api: ApiNode, tmp_path: Path
) -> None:
    # A series too short to analyse: rejected, flagged "not analysed: ..." (routine).
    short = process_series(api, tmp_path / "short", seed=7, slices=8)
    first = process_series(api, tmp_path / "a", seed=3, label="covid19")
    second = process_series(api, tmp_path / "b", seed=5, label="no_pneumonia")
    jobs = (short, first, second)
    triage = {job.study_instance_uid: triage_of(api, job.id) for job in jobs}
    assert short.state is JobState.REJECTED
    assert triage[short.study_instance_uid].flag.startswith("not analysed: ")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = [ARTIFACTS / "worklist-phone.png", tmp_path / "worklist-phone.png"]
    for shot in shots:
        shot.unlink(missing_ok=True)

    result = run_page_check(api, list(triage), shots, tmp_path)

    assert result["loginUrl"].endswith("/login") and result["pageUrl"].endswith("/worklist")
    cards = {card["studyUid"]: card for card in result["cards"]}
    for job in jobs:
        card, expected = cards[job.study_instance_uid], triage[job.study_instance_uid]
        assert card["flag"] == expected.flag
        assert card["priority"] == expected.priority
        assert card["state"] == job.state.value
        if job.state is JobState.EXPORTED:  # the key image of its SC "AI summary" series
            assert card["thumbnail"]["src"] == f"/api/jobs/{job.id}/thumbnail.png", card
            assert card["thumbnail"]["width"] > 0, card  # the PNG loaded
        else:  # not analysed: no result objects
            assert card["thumbnail"] is None and card["placeholder"] == "no image"
    order = [card["studyUid"] for card in result["cards"] if card["studyUid"] in triage]
    ranks = [triage[uid].rank for uid in order]
    assert ranks == sorted(ranks), order
    assert len(set(ranks)) > 1  # the order is decided by the priorities, not by chance
    assert result["refreshes"] >= 2  # it polled again on its own
    assert any(r["visible"] and r["text"] == "RESEARCH USE ONLY, NOT FOR DIAGNOSIS."
               for r in result["researchUse"])
    assert result["layout"]["viewport"] == "width=device-width, initial-scale=1"
    assert result["layout"]["scrollWidth"] <= result["layout"]["innerWidth"] == 390
    assert all(0 <= c["left"] and c["right"] <= 390 for c in result["cards"])
    assert result["cookies"] == [
        {"name": "deepsc_session", "httpOnly": True, "sameSite": "Strict"}
    ]
    assert result["tokenInStorage"] is False
    assert result["consoleErrors"] == [] and result["failedRequests"] == []
    for shot in shots:
        assert shot.stat().st_size > 10_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
