"""docs/API.md documents every message, field, enum value and RPC of the contract, and nothing that is not in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from messplus.v1 import routing_pb2 as pb

DOC = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text()


def sections() -> dict[str, str]:
    """`#### \\`Message\\`` headings and their text, up to the next heading."""
    parts = re.split(r"^#{2,4} ", DOC, flags=re.M)
    return {m.group(1): part for part in parts if (m := re.match(r"`(\w+)`", part))}


def table_fields(text: str) -> list[str]:
    return re.findall(r"^\| `(\w+)` \|", text, flags=re.M)


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_every_field_of_every_message_is_documented(name: str) -> None:
    fields = [f.name for f in pb.DESCRIPTOR.message_types_by_name[name].fields]
    assert name in sections(), f"docs/API.md has no section for {name}"
    assert table_fields(sections()[name]) == fields


def test_every_rpc_has_its_status_codes_and_every_enum_value_is_explained() -> None:
    rpcs = [m.name for m in pb.DESCRIPTOR.services_by_name["RoutingService"].methods]
    codes_table = DOC[DOC.index("| RPC | returns |"):]
    assert table_fields(codes_table)[:len(rpcs)] == ["Route", "Generate", "Feedback", "SlaStatus", "ListModels"]
    assert sorted(rpcs) == sorted(["Route", "Generate", "Feedback", "SlaStatus", "ListModels"])
    for value in pb.DESCRIPTOR.enum_types_by_name["ExplorationMode"].values:
        assert f"`{value.name}` ({value.number})" in DOC


def test_compatibility_policy_is_stated_in_the_doc_and_the_proto() -> None:
    proto = (Path(pb.__file__).parent / "routing.proto").read_text()
    assert "## Compatibility policy" in DOC and "`messplus.v1` evolves only by **adding**" in DOC
    assert "v1 evolves only by adding fields" in proto
