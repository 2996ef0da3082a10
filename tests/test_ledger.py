"""The ledger's typed entries: each written as the JSON line it always was, read back equal, and
records written before entries were typed (no "version" in the header) still clean up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from netcheck.kernel.netns import Netns
from netcheck.kernel.worker import netns_path
from netcheck.kernel.xtables import XRule
from netcheck.ledger import (
    ENTRY_KINDS,
    LEDGER_VERSION,
    ChainEntry,
    ContainerEntry,
    DirEntry,
    EmptyDirEntry,
    Entry,
    FileEntry,
    Ledger,
    LinkEntry,
    NetnsEntry,
    NftChainEntry,
    NftTableEntry,
    NodeEntry,
    PolicyEntry,
    ProcessEntry,
    RouteEntry,
    RuleEntry,
    SysctlEntry,
    Undoer,
    clean,
    from_json,
    read_record,
    to_json,
    undo_all,
)

EXAMPLES: list[Entry] = [
    NetnsEntry("nc0000-host"), LinkEntry("nc0000-host", "nc0000b0"), RouteEntry(None, "198.51.100.0/24"),
    RuleEntry("nc0000-host", XRule("nat", "POSTROUTING", "MASQUERADE", src="172.18.0.0/16", comment="netcheck nc0000"), "nft"),
    ChainEntry("nc0000-host", "nat", "VIP-EXAMPLE"), NftChainEntry(None, "nat", "POSTROUTING"), NftTableEntry(None, "nat"),
    PolicyEntry(None, "filter", "FORWARD", "ACCEPT"), SysctlEntry("nc0000-host", "net.ipv4.ip_forward", "0"),
    ProcessEntry(4242, 17, ("netavark", "setup")), DirEntry("/tmp/netcheck-nc0000"),
    FileEntry("/etc/netns/nc0000-web/resolv.conf"), EmptyDirEntry("/etc/netns/nc0000-web"), EmptyDirEntry("/etc/netns", shared=True),
    ContainerEntry("unix:///tmp/netcheck-nc0001/docker/docker.sock", "nc0001-taker"),
    NodeEntry("ssh", "ssh=root@198.51.100.12", "nc0001"),
]


def test_every_kind_has_an_example() -> None:
    assert {e.kind for e in EXAMPLES} == set(ENTRY_KINDS)


@pytest.mark.parametrize("entry", EXAMPLES, ids=lambda e: e.kind)
def test_entry_round_trips_through_its_json_line(entry: Entry) -> None:
    line = json.loads(json.dumps(to_json(entry)))
    assert line["kind"] == entry.kind
    assert from_json(line) == entry
    assert entry.describe()


def test_version_one_lines_read_as_typed_entries() -> None:
    """The lines an older netcheck wrote, verbatim."""
    old = [
        {"kind": "netns", "name": "ncold0-host"},
        {"kind": "link", "netns": "ncold0-host", "name": "ncold0up"},
        {"kind": "rule", "netns": "ncold0-host", "rule": {"table": "nat", "chain": "OUTPUT", "target": "DNAT", "src": None, "dst": "203.0.113.2", "in_interface": None,
                                                          "out_interface": None, "protocol": "tcp", "dport": 5000, "to_destination": "172.18.0.10:5000",
                                                          "comment": "netcheck ncold0", "packets": 0, "bytes": 0}, "backend": "legacy"},
        {"kind": "process", "pid": 4242, "starttime": None, "argv": ["conmon"]},
        {"kind": "route", "netns": None, "dst": "10.100.100.100/32"},
    ]
    entries = [from_json(line) for line in old]
    assert entries[0] == NetnsEntry("ncold0-host")
    assert isinstance(entries[2], RuleEntry) and entries[2].rule.to_destination == "172.18.0.10:5000" and entries[2].backend == "legacy"
    assert entries[3] == ProcessEntry(4242, None, ("conmon",))
    assert entries[4] == RouteEntry(None, "10.100.100.100/32")


def test_a_record_says_its_version(tmp_path: Path) -> None:
    ledger = Ledger("nctest", topology="t", mode="sandbox", run_dir=tmp_path)
    ledger.create(DirEntry(str(tmp_path / "made")), lambda: (tmp_path / "made").mkdir())
    ledger.close(remove=False)
    header, entries, kept = read_record(tmp_path / "nctest.jsonl")
    assert header["version"] == LEDGER_VERSION and entries == [DirEntry(str(tmp_path / "made"))] and not kept


@pytest.mark.root
def test_a_version_less_record_of_a_dead_run_is_cleaned(tmp_path: Path) -> None:
    name = f"ncold-{os.urandom(2).hex()}"
    Netns.create(name, "old").close()
    header = {"kind": "run", "tag": name, "pid": 1 << 22, "starttime": None, "topology": "seed1", "mode": "sandbox"}  # no version: an older netcheck's
    lines = [header, {"kind": "netns", "name": name}, {"kind": "link", "netns": name, "name": "gone0"}]
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    cleaned, errors = clean(run_dir=tmp_path, log=lambda _m: None)
    assert (cleaned, errors) == (1, [])
    assert not os.path.exists(netns_path(name)), "the namespace the old record named is still there"
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_rule_from_a_newer_netcheck_is_not_read_rather_than_a_crash() -> None:
    """Another version's run record on the same machine (a rule with matches this one does not model) never breaks listing or clean."""
    from netcheck.ledger import from_json

    line = {"kind": "rule", "netns": "nc5st9-host", "backend": "legacy",
            "rule": {"table": "nat", "chain": "POSTROUTING", "target": "MASQUERADE", "some_future_match": ["x"]}}
    assert from_json(line) is None
    assert from_json({**line, "rule": {"table": "nat", "chain": "POSTROUTING", "target": "MASQUERADE"}}) is not None


def test_file_and_empty_dir_entries_remove_exactly_their_paths(tmp_path: Path) -> None:
    folder = tmp_path / "nc0000-web"
    folder.mkdir()
    (folder / "resolv.conf").write_text("nameserver 203.0.113.53\n")
    (tmp_path / "other").write_text("not ours")
    errors = undo_all([EmptyDirEntry(str(tmp_path), shared=True), EmptyDirEntry(str(folder)), FileEntry(str(folder / "resolv.conf"))], Undoer())
    assert errors == [] and not folder.exists() and (tmp_path / "other").exists()  # the shared folder is not empty: left alone
    (folder).mkdir()
    (folder / "someone-elses").write_text("x")
    errors = undo_all([EmptyDirEntry(str(folder)), FileEntry(str(folder / "resolv.conf"))], Undoer())
    assert len(errors) == 1 and (folder / "someone-elses").exists()  # never removed by pattern: reported instead
