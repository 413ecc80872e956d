"""The model card's pure parts: blocks from plain records, and both renderings escaping what a
user or a trainer wrote."""

from __future__ import annotations

from datetime import UTC, datetime

from modelyard.governance.card import CardFacts, build, render
from modelyard.governance.document import Bullets, Heading, Paragraph, Table, to_html, to_markdown
from modelyard.registry.records import AliasEvent, AuditEvent, Model, ModelVersion, Run

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _version(**changes: object) -> ModelVersion:
    fields: dict[str, object] = dict(
        model="loans", version=4, flavor="sklearn", artifact_digest="ab" * 32,
        artifact_size=10, meta={}, signature={"inputs": [{"name": "income", "dtype": "float64"}]},
        metrics={"recall": 0.81}, params={"C": 0.5}, data_fingerprint="fp",
        code_ref={"content": "c0de"}, environment={}, reference_stats=None, run_id="run-1",
        description="", created_at=AT, created_by="ana", aliases=("production",))
    fields.update(changes)
    return ModelVersion(**fields)  # type: ignore[arg-type]


def _facts(version: ModelVersion, run: Run | None = None) -> CardFacts:
    model = Model("loans", "Decides <i>loans</i>", 4, AT, "ana", {"production": 4})
    moves = (AliasEvent("loans", "production", 4, 3, "set", "bob", "approved in review", AT),)
    rollout = AuditEvent(7, AT, "bob", "deployment.promote", "loans",
                         {"deployment": 2, "from": "canary", "to": "promoted", "step": 3,
                          "candidate": 4, "stable": 3, "reason": "analysis passed"})
    return CardFacts(model, version, run, moves, (rollout,), (), None,
                     "no drift check has measured this version", AT)


def test_the_card_falls_back_to_the_models_description_and_escapes_it() -> None:
    facts = _facts(_version())
    markdown = render(facts)
    assert r"Decides \<i>loans\</i>" in markdown
    page = render(facts, "html")
    assert "Decides &lt;i&gt;loans&lt;/i&gt;" in page and "<i>" not in page
    assert "bob pointed production at this version (set) (approved in review)" in markdown
    assert "rollout 2 promote (canary -> promoted, step 3): analysis passed" in markdown
    assert "No drift check has measured this version." in markdown


def test_fairness_figures_stored_with_the_version_become_a_table_per_rule() -> None:
    fairness = {"group": "sex", "metric": "recall", "gap": 0.12, "max_gap": 0.05,
                "passed": False, "groups": {"f": {"n": 40, "value": 0.7},
                                            "m": {"n": 60, "value": 0.82}}}
    blocks = build(_facts(_version(meta={"fairness": [fairness]})))
    at = blocks.index(Heading("Fairness"))
    summary, table = blocks[at + 1], blocks[at + 2]
    assert isinstance(summary, Paragraph) and "gap 0.12" in summary.text
    assert isinstance(table, Table) and table.header == ["group", "rows", "recall"]
    assert [list(r) for r in table.rows] == [["f", 40, 0.7], ["m", 60, 0.82]]


def test_the_gate_recorded_on_the_run_is_listed_rule_by_rule() -> None:
    run = Run("run-1", "loans", "succeeded", "manual", AT, AT, 1.0, 4, True, {}, {
        "passed": True, "reasons": [], "champion": {"ref": "loans:3"},
        "checks": [{"rule": "min", "message": "recall 0.81 within min 0.80", "passed": True}]},
        "", None, "ana")
    markdown = render(_facts(_version(), run))
    assert "The gate passed, against the champion loans:3." in markdown
    assert "| min | recall 0.81 within min 0.80 |" in markdown


def test_markdown_and_html_render_the_same_blocks() -> None:
    blocks = [Heading("T", 1), Paragraph("a | b * c"), Bullets(["x <y>"]),
              Table(["k", "n"], [["z", 1.23456], ["w", None]], numeric=frozenset({1}))]
    assert to_markdown(blocks) == (
        "# T\n\na \\| b \\* c\n\n- x \\<y>\n\n| k | n |\n| --- | ---: |\n| z | 1.235 |\n"
        "| w | - |\n")
    page = to_html(blocks, title="T")
    assert "<li>x &lt;y&gt;</li>" in page and '<td class="n">1.235</td>' in page
