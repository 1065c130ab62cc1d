from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sidecar.config import KEYS, Config, LogConfig
from sidecar.config.sections import SECTIONS
from sidecar.config.table import (
    BEGIN,
    END,
    REFERENCE_BEGIN,
    REFERENCE_END,
    RESTART_BEGIN,
    RESTART_END,
    SECTIONS_BEGIN,
    SECTIONS_END,
    main,
    markdown_table,
    replace_between_markers,
    restart_keys,
    sections_table,
    short_table,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "run: python -m sidecar.config.table README.md docs/configuration.md docs/routes.md docs/operations.md"
OPERATIONS = ROOT / "docs" / "operations.md"


def test_the_readme_table_is_the_one_generated_from_the_declarations() -> None:
    text = README.read_text(encoding="utf-8")
    between = text.partition(BEGIN)[2].partition(END)[0]
    assert between == "\n" + short_table(), REGENERATE


def test_the_reference_table_is_the_one_generated_from_the_declarations() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    between = text.partition(REFERENCE_BEGIN)[2].partition(REFERENCE_END)[0]
    assert between == "\n" + markdown_table(), REGENERATE


def test_the_short_table_names_every_key_meant_for_the_readme_in_its_section() -> None:
    rows = {row.split(" | ")[0].strip("| `[]"): row for row in short_table().splitlines()[2:]}
    shown = [k for k in KEYS if k.spec.readme]
    assert set(rows) == {k.section for k in shown} and "policy.scope_match" not in {k.dotted for k in shown}
    for k in shown:
        assert f"`{k.name}`" in rows[k.section].split(" | ")[1], k.dotted


def test_the_table_has_one_row_per_key_with_its_environment_variable_and_default() -> None:
    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(KEYS)
    assert "| `idp.connect_timeout` | number > 0, seconds | `0.5` | `SIDECAR_IDP__CONNECT_TIMEOUT` |" in rows[
        [k.dotted for k in KEYS].index("idp.connect_timeout")]
    trusted = next(r for r in rows if r.startswith("| `client_cert.trusted_proxies`"))
    assert "| `127.0.0.1/32,::1/128` |" in trusted


def test_regenerating_rewrites_only_what_lies_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# Title\n\nbefore\n{BEGIN}\n| stale |\n{END}\nafter\n", encoding="utf-8")
    assert main([str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == f"# Title\n\nbefore\n{BEGIN}\n{short_table()}{END}\nafter\n"


def test_regenerating_a_file_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers("# no table here\n", markdown_table())


def test_the_sections_of_the_reference_are_the_ones_generated_from_the_declarations() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    between = text.partition(SECTIONS_BEGIN)[2].partition(SECTIONS_END)[0]
    assert between == "\n" + sections_table(), REGENERATE


def test_every_field_of_the_configuration_is_a_section_of_the_reference() -> None:
    headings = [row.split(" | ")[0].strip("| `") for row in sections_table().splitlines()[2:]]
    assert headings == [f"[{f.name}]" for f in dataclasses.fields(Config) if f.name in SECTIONS] + [
        "[policies.NAME]", "[[routes]]", "[issuers.NAME]"]
    assert {"[dpop]", "[admission]", "[fleet]", "[routing]"} <= set(headings)


def test_a_section_without_a_doc_cannot_be_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LogConfig, "__doc__", "LogConfig(level: str = 'info')")  # what dataclass writes
    with pytest.raises(ValueError, match=r"\[log\] has no doc"):
        sections_table()


def test_the_keys_a_reload_refuses_are_listed_in_the_operations_docs_and_marked_in_the_reference() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert text.partition(RESTART_BEGIN)[2].partition(RESTART_END)[0] == "\n" + restart_keys(), REGENERATE
    assert "`server.port`" in restart_keys() and "`server.invalid_request_status`" not in restart_keys()
    rows = {row.split(" | ")[0].strip("| `"): row for row in markdown_table().splitlines()[2:]}
    assert rows["server.port"].endswith("; **restart** |") and "**restart**" not in rows["policy.required_scopes"]
