"""script: a plain shell script (or any command), run as the user wrote it, in the sandbox host.

The command runs in the sandbox host namespace with the spec file's folder as working
directory, and gets the namespace names and addresses to use through NETCHECK_* variables
(docs/tools.md). It must create each container's namespace under the name it is given
(``ip netns add "$NETCHECK_NETNS_NETNS0"``); netcheck records those names before the command
runs, so a crash never leaves them behind.

``sh FILE`` and ``bash FILE`` run traced (netcheck.adapters.shelltrace): a command that fails is
named by its line, with its cause and the corrected line, and the setup fails with the list.
``review`` goes further, as a careful reader of a tutorial would: it corrects the first mistake,
runs the script again in a fresh lab, and so on, so that each correction is shown to work.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netcheck import spec
from netcheck.adapters import shelltrace
from netcheck.adapters.lab import ToolFailed, env_name
from netcheck.lab import LabError
from netcheck.lab.mode import HostMode
from netcheck.resolvconf import ETC_NETNS, netns_dir, path_for

if TYPE_CHECKING:
    from netcheck.adapters.lab import ExternalLab


class ScriptAdapter:
    mode = "script"

    def missing(self, topology: spec.Topology, mode: HostMode) -> list[str]:
        prog = topology.setup.command[0] if topology.setup.command else ""
        if prog and "/" not in prog and shutil.which(prog) is None:
            return [f"{prog} (the command's program is not on PATH)"]
        return []

    def setup(self, lab: ExternalLab) -> None:
        t = lab.declared
        names = [env_name(c.name) for c in t.containers]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise LabError(f"{t.source}: containers map to the same variable {', '.join(clash)}; rename them so that they differ in more than - . _ or case")
        for c in t.containers:
            lab.expect_container_ns(c.name)
        self._record_resolv_confs(lab)
        workdir = lab.workdir or lab.make_workdir()
        traced = shelltrace.traced(t.setup.command, workdir / "trace-startup.sh")
        if traced is None:
            lab.run_tool("setup command", t.setup.command)
        else:
            argv, extra = traced
            proc = lab.run_tool("setup command", argv, env=lab.tool_env(extra), check=False)
            steps = shelltrace.parse(proc.stderr.decode(errors="replace"))
            found = script_mistakes(lab, steps)
            lab.state["script_mistakes"] = found
            lab.state["script_steps"] = steps
            failed = [m for m in found if m.cause != "quoted_pipe"]
            if proc.returncode != 0 or failed:
                raise ScriptFailed(lab, proc.returncode, found)
        for c in t.containers:
            lab.open_container_ns(c.name, f'create it with: ip netns add "${env_name(c.name)}"')

    @staticmethod
    def _record_resolv_confs(lab: ExternalLab) -> None:
        """A script may write /etc/netns/NETNS/resolv.conf (seed 2 does): the paths are recorded first,
        so teardown and ``netcheck clean`` remove them (folders only when empty)."""
        from netcheck.ledger import EmptyDirEntry, FileEntry

        assert lab.ledger is not None
        if not ETC_NETNS.is_dir():
            lab.ledger.record(EmptyDirEntry(str(ETC_NETNS), shared=True))
        for c in lab.declared.containers:
            ns = lab.netns_name(c.name)
            if not netns_dir(ns).exists():
                lab.ledger.record(EmptyDirEntry(str(netns_dir(ns))))
                lab.ledger.record(FileEntry(str(path_for(ns))))

    def discover_existing(self, lab: ExternalLab) -> None:
        adopt_by_path(lab)

    def teardown(self, lab: ExternalLab) -> list[str]:
        t = lab.declared
        if not t.setup.teardown:
            return []
        try:
            lab.run_tool("teardown command", t.setup.teardown)
        except LabError as exc:
            return [str(exc)]
        return []


class ScriptFailed(ToolFailed):
    """Commands of the setup script failed; each is named with its cause and the corrected line."""

    def __init__(self, lab: ExternalLab, returncode: int, found: list[shelltrace.Mistake]) -> None:
        self.mistakes = found
        status = f"exit {returncode}" if returncode else "it went on after them"
        lines = "\n".join(f"  {m.describe()}" for m in found)
        super().__init__(f"setup command {' '.join(lab.declared.setup.command)}: {sum(m.cause != 'quoted_pipe' for m in found)} command(s) failed ({status}):\n{lines}\n"
                         f"(`netcheck review {lab.declared.source}` corrects them one by one and shows that each correction works)")


def script_mistakes(lab: ExternalLab, steps: list[shelltrace.Step]) -> list[shelltrace.Mistake]:
    """The mistakes of one traced run, in the words of the script files it ran."""
    scripts: dict[str, list[str]] = {}
    for step in steps:
        if step.source and step.source not in scripts:
            path = Path(step.source) if Path(step.source).is_absolute() else lab.spec_dir / step.source
            try:
                scripts[step.source] = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                scripts[step.source] = []
    links = [link.name for link in lab.host.links()]
    namespaces = [lab.netns_name(c.name) for c in lab.declared.containers]
    return shelltrace.mistakes(steps, scripts, programs=shelltrace.executables(lab.tool_env().get("PATH")), links=links, namespaces=namespaces)


@dataclass(frozen=True)
class Correction:
    """One mistake, and whether the script ran past that line once it was corrected."""

    mistake: shelltrace.Mistake
    verified: bool


@dataclass(frozen=True)
class ScriptReview:
    """What ``review`` found: the corrections in the order made, the corrected script, what is left."""

    script: Path
    corrections: tuple[Correction, ...]
    corrected: str
    left: tuple[shelltrace.Mistake, ...]  # mistakes with no correction known, or not shown to work

    @property
    def clean(self) -> bool:
        return not self.left


def review(topology: spec.Topology, build: Callable[[spec.Topology], ExternalLab], *, limit: int = 20) -> ScriptReview:
    """Correct the script's first mistake, run it again in a fresh lab, and repeat.

    A correction is verified when the next run gets past it (the line no longer fails that way: it
    may fail for the next reason, a second mistake on the same line; a quoted pipe's file gets
    written). Stops when the script runs clean, or at a mistake with no correction known.
    """
    command = topology.setup.command
    if shelltrace.traced(command, Path("/dev/null")) is None:
        raise LabError(f"{topology.source}: setup.command {list(command)} is not `sh FILE` or `bash FILE`; review reads shell scripts only")
    source = Path(topology.source)
    script = (source.parent if source.is_file() else Path.cwd()) / command[1]
    lines = script.read_text(encoding="utf-8").splitlines()
    corrections: list[Correction] = []
    pending: shelltrace.Mistake | None = None
    with tempfile.TemporaryDirectory(prefix="netcheck-review-") as tmp:
        copy = Path(tmp) / script.name
        for _ in range(limit):
            copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
            trial = dataclasses.replace(topology, setup=dataclasses.replace(topology.setup, command=(command[0], str(copy), *command[2:])))
            found, written = _run_once(trial, build)
            by_line = {m.line: m for m in found}
            if pending is not None:
                again = by_line.get(pending.line)
                works = (again is None or again.cause != pending.cause) and (pending.cause != "quoted_pipe" or written.get(pending.line, False))
                corrections.append(Correction(pending, works))
            todo = [m for m in found if m.cause != "quoted_pipe"] or found
            if not todo:
                break
            first = todo[0]
            if first.corrected is None or (pending is not None and first.line == pending.line and first.cause == pending.cause):
                return ScriptReview(script, tuple(corrections), "\n".join(lines) + "\n", tuple(todo))
            pending = dataclasses.replace(first, source=str(script))
            lines[first.line - 1] = first.corrected
    return ScriptReview(script, tuple(corrections), "\n".join(lines) + "\n", ())


def _run_once(topology: spec.Topology, build: Callable[[spec.Topology], ExternalLab]) -> tuple[list[shelltrace.Mistake], dict[int, bool]]:
    """One run's mistakes, and for each line that pipes into ``tee FILE``, whether FILE was written."""
    try:
        lab = build(topology)
    except ScriptFailed as exc:
        return exc.mistakes, {}
    try:
        steps: list[shelltrace.Step] = lab.state.get("script_steps", [])
        written = {s.line: Path(s.command.split()[-1]).is_file() for s in steps if s.command.split()[:1] == ["tee"]}
        found: list[shelltrace.Mistake] = lab.state.get("script_mistakes", [])
        return found, written
    finally:
        lab.teardown()


def adopt_by_path(lab: ExternalLab, skip: frozenset[str] = frozenset()) -> None:
    """Host mode: every container names its existing namespace (``netns = "/run/netns/X"``)."""
    t = lab.declared
    for i, c in enumerate(t.containers):
        if c.name in skip:
            continue
        if c.netns is None:
            raise spec.SpecError(t.source, f"container[{i}].netns", None,
                              f"in host mode netcheck does not run {t.setup.mode}; it discovers containers that already exist",
                              'add netns = "/run/netns/NAME" (or "/proc/PID/ns/net") for each container')
        lab.adopt_container_ns(c.name, c.netns, owned=False)


__all__ = ["Correction", "ScriptAdapter", "ScriptFailed", "ScriptReview", "adopt_by_path", "review", "script_mistakes"]
