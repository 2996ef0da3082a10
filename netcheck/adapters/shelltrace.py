"""A setup script, run so that each command's fate is kept, and the mistakes read from it.

A script given as ``sh FILE`` or ``bash FILE`` runs under bash with a start-up file
(``BASH_ENV``) that turns on xtrace with the file and line in the prompt, and an ERR trap that
prints each failed command's exit status. Both go to stderr, in order with the commands' own
messages, so every message belongs to the command traced just before it. ``parse`` turns that
stream into ``Step`` values; ``mistakes`` reads each failed step (and a few lines that fail
silently, like a quoted pipe) into a ``Mistake`` with its cause and the corrected line of the
script, in the script's own words (its variables, not their values).
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TRACE_MARK = "netcheck-trace"
STATUS_MARK = "netcheck-status"

# Read by bash before the script (BASH_ENV). The trap keeps $? first; -E carries it into functions.
STARTUP = f"""\
trap '{{ netcheck_status=$?; set +x; }} 2>/dev/null; printf "{STATUS_MARK}:%s:%s:%s\\n" "${{BASH_SOURCE[0]:-}}" "$LINENO" "$netcheck_status" >&2; set -x' ERR
set -E
PS4='+{TRACE_MARK}:${{BASH_SOURCE[0]:-}}:${{LINENO}}: '
set -x
"""

SHELLS = frozenset({"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash"})

# iproute2's objects (`ip OBJECT ...`), to read `ipnetns` as `ip netns`.
IP_OBJECTS = ("address", "addr", "link", "route", "rule", "neighbour", "neigh", "netns", "tunnel", "maddress", "mroute", "monitor", "vrf", "xfrm", "netconf")
# `ip netns` subcommands: any other word after `netns` is a namespace given without `exec`.
NETNS_COMMANDS = frozenset({"list", "add", "attach", "set", "delete", "del", "identify", "pids", "exec", "monitor", "list-id", "help"})


@dataclass(frozen=True)
class Step:
    """One traced command: where it is in the script, what ran (expanded), its status, its messages."""

    source: str
    line: int
    command: str
    status: int = 0
    errors: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status != 0


@dataclass(frozen=True)
class Mistake:
    """A line of the script that does not do what it says, why, and the line corrected."""

    source: str
    line: int
    text: str  # the line as written
    cause: str  # a short id: command_not_found, netns_without_exec, no_such_device, route_exists, quoted_pipe
    why: str
    corrected: str | None  # the corrected line; None when no correction is known

    def describe(self) -> str:
        where = f"{Path(self.source).name}:{self.line}"
        fix = f"; corrected: {self.corrected}" if self.corrected else "; no correction known"
        return f"{where}: `{self.text.strip()}`: {self.why}{fix}"


def traced(command: Sequence[str], startup: Path) -> tuple[list[str], dict[str, str]] | None:
    """The argv and extra environment that run ``sh FILE``/``bash FILE`` traced; None for other commands."""
    if len(command) < 2 or command[0] not in SHELLS or command[1].startswith("-"):
        return None
    startup.write_text(STARTUP, encoding="utf-8")
    return ["bash", *command[1:]], {"BASH_ENV": str(startup)}


_TRACE = re.compile(rf"^\+{TRACE_MARK}:(?P<source>[^:]*):(?P<line>\d+): (?P<command>.*)$")
_STATUS = re.compile(rf"^{STATUS_MARK}:(?P<source>[^:]*):(?P<line>\d+):(?P<status>\d+)$")


def parse(stderr: str) -> list[Step]:
    """The steps of one traced run, from its stderr (commands, their messages, failed statuses).

    A message goes to the command it names: bash's own say ``line N:``, and tools quote the word
    they choke on (``Cannot find device "X"``, ``exec of "X" failed``). Others go to the command
    traced last. A background command's status is not traced, so a step whose message says the
    program could not run counts as failed (status 127) too.
    """
    steps: list[Step] = []
    for raw in stderr.splitlines():
        if m := _TRACE.match(raw):
            steps.append(Step(m["source"], int(m["line"]), m["command"]))
        elif m := _STATUS.match(raw):
            src, line = m["source"], int(m["line"])
            at = next((i for i in range(len(steps) - 1, -1, -1) if steps[i].source == src and steps[i].line == line and not steps[i].failed), None)
            if at is not None:
                steps[at] = _with(steps[at], status=int(m["status"]))
        elif steps and not raw.startswith("+"):
            at = _owner(steps, raw)
            steps[at] = _with(steps[at], errors=(*steps[at].errors, raw))
            if steps[at].status == 0 and _COULD_NOT_RUN.search(raw):
                steps[at] = _with(steps[at], status=127)
    return steps


_BASH_LINE = re.compile(r"^(?P<source>.*?): line (?P<line>\d+): ")
_QUOTED = re.compile(r'"([^"\s]+)"|: ([^\s:]+): ')
_COULD_NOT_RUN = re.compile(r'command not found|exec of "[^"]+" failed')


def _last(steps: Sequence[Step], wanted: Callable[[Step], bool]) -> int | None:
    return next((i for i in range(len(steps) - 1, -1, -1) if wanted(steps[i])), None)


def _owner(steps: Sequence[Step], message: str) -> int:
    """The index of the step a message belongs to."""
    if m := _BASH_LINE.match(message):
        at = _last(steps, lambda s: s.line == int(m["line"]) and s.source.endswith(m["source"].split("/")[-1]))
        if at is not None:
            return at
    for word in (q.group(1) or q.group(2) for q in _QUOTED.finditer(message)):
        at = next((i for i in range(len(steps) - 1, -1, -1) if word in steps[i].command.split()), None)
        if at is not None:
            return at
    return len(steps) - 1


def _with(step: Step, *, status: int | None = None, errors: tuple[str, ...] | None = None) -> Step:
    return Step(step.source, step.line, step.command, step.status if status is None else status, step.errors if errors is None else errors)


def executables(path: str | None = None) -> list[str]:
    """The program names on PATH (what `command not found` is compared with)."""
    names: set[str] = set()
    for folder in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        try:
            for entry in os.scandir(folder or "."):
                if entry.is_file() and os.access(entry.path, os.X_OK):
                    names.add(entry.name)
        except OSError:
            continue
    return sorted(names)


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return line.split()


def _replace_word(text: str, old: str, new: str) -> str:
    """``text`` with the first whole-word ``old`` replaced by ``new``."""
    return re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", lambda _m: new, text, count=1)


def _not_found(step: Step, text: str, programs: Sequence[str]) -> Mistake | None:
    words = step.command.split()
    # the program is the first word that is not `sudo`, an assignment or a wrapper (`ip netns exec NS`)
    name = next((m.group(1) or m.group(2) for e in step.errors if (m := re.search(r':\s*([^\s:]+): (?:command )?not found|exec of "([^"]+)" failed', e))), None)
    if name is None and words:
        name = words[0]
    if not name:
        return None
    for obj in IP_OBJECTS:  # `ipnetns` is `ip netns` without its space
        if name == f"ip{obj}" and "ip" in programs:
            return Mistake(step.source, step.line, text, "command_not_found", f"there is no program {name!r}: `ip {obj}` lost its space",
                           _replace_word(text, name, f"ip {obj}"))
    close = difflib.get_close_matches(name, programs, n=1, cutoff=0.8)
    if close:
        return Mistake(step.source, step.line, text, "command_not_found", f"there is no program {name!r}; {close[0]!r} is the nearest on PATH",
                       _replace_word(text, name, close[0]))
    return Mistake(step.source, step.line, text, "command_not_found", f"there is no program {name!r} on PATH", None)


def _netns_without_exec(step: Step, text: str, namespaces: Sequence[str]) -> Mistake | None:
    words = step.command.split()
    if len(words) < 3 or words[:2] != ["ip", "netns"] or words[2] in NETNS_COMMANDS:
        return None
    if words[2] not in namespaces and not any("is unknown" in e for e in step.errors):
        return None
    src = _words(text)
    at = src.index("netns") if "netns" in src else -1
    if at < 0 or at + 1 >= len(src):
        return None
    corrected = re.sub(r"\bnetns(\s+)", lambda m: f"netns{m.group(1)}exec ", text, count=1)
    name = src[at + 1]
    return Mistake(step.source, step.line, text, "netns_without_exec",
                   f"`ip netns {name} ...` is not a command: running a command in a namespace takes `ip netns exec {name} ...`", corrected)


def _no_such_device(step: Step, text: str, links: Sequence[str]) -> Mistake | None:
    name = next((m.group(1) for e in step.errors if (m := re.search(r'Cannot find device "([^"]+)"', e))), None)
    if name is None:
        return None
    close = difflib.get_close_matches(name, links, n=1, cutoff=0.7)
    if close:
        return Mistake(step.source, step.line, text, "no_such_device", f"there is no link {name!r}; {close[0]!r} exists (a typo?)",
                       _replace_word(text, name, close[0]))
    return Mistake(step.source, step.line, text, "no_such_device", f"there is no link {name!r}, and none with a name like it", None)


def _route_exists(step: Step, text: str) -> Mistake | None:
    words = step.command.split()
    if "route" not in words or "add" not in words or not any("File exists" in e for e in step.errors):
        return None
    return Mistake(step.source, step.line, text, "route_exists",
                   "a route to that destination exists already (an earlier step added one): `add` fails; `replace` sets it",
                   re.sub(r"\broute(\s+)add\b", lambda m: f"route{m.group(1)}replace", text, count=1))


_QUOTED_PIPE = re.compile(r"""^(?P<head>\s*(?:sudo\s+)?(?:echo|printf)\s+)(?P<q>["'])(?P<body>[^"']*?)\s*(?P<pipe>\|\s*(?:sudo\s+)?\w.*?)(?P=q)(?P<tail>\s*)$""")


def quoted_pipes(source: str, lines: Sequence[str]) -> list[Mistake]:
    """``echo "text | tee FILE"``: the quotes make the pipe part of the text, so FILE is never written."""
    found = []
    for n, text in enumerate(lines, start=1):
        m = _QUOTED_PIPE.match(text)
        if m:
            corrected = f"{m['head']}{m['q']}{m['body']}{m['q']} {m['pipe']}{m['tail']}"
            found.append(Mistake(source, n, text, "quoted_pipe",
                                 f"the quotes swallow the pipe: this prints `{m['body']} {m['pipe']}` and runs no `{next(w for w in m['pipe'].split()[1:] if w != 'sudo')}`", corrected))
    return found


_IN_NETNS = re.compile(r"""\bip\s+netns\s+exec\s+("[^"]*"|'[^']*'|\S+)\s+(?P<program>[\w.+-]+)""")


def missing_programs(source: str, lines: Sequence[str], programs: Sequence[str]) -> list[Mistake]:
    """``ip netns exec NS PROGRAM`` with no such PROGRAM: caught here too, since a background
    command's failure (a server started with ``&``, its output sent away) is never seen."""
    found: list[Mistake] = []
    for n, text in enumerate(lines, start=1):
        m = _IN_NETNS.search(text)
        if m and m["program"] not in programs and not m["program"].startswith("$"):
            step = Step(source, n, m["program"], 127)
            found.extend(x for x in [_not_found(step, text, programs)] if x is not None and x.corrected is not None)
    return found


def mistakes(steps: Iterable[Step], scripts: Mapping[str, Sequence[str]], *, programs: Sequence[str], links: Sequence[str], namespaces: Sequence[str]) -> list[Mistake]:
    """Each failed step read as a mistake (one per line), then the silent ones, in the script's order."""
    found: dict[tuple[str, int], Mistake] = {}
    for step in steps:
        if not step.failed or (step.source, step.line) in found:
            continue
        lines = scripts.get(step.source, ())
        text = lines[step.line - 1] if 0 < step.line <= len(lines) else step.command
        mistake = (
            (_not_found(step, text, programs) if step.status == 127 else None)
            or _netns_without_exec(step, text, namespaces)
            or _no_such_device(step, text, links)
            or _route_exists(step, text)
            or Mistake(step.source, step.line, text, "command_failed", f"exit status {step.status}: {' / '.join(step.errors[-2:]) or 'no message'}", None)
        )
        found[(step.source, step.line)] = mistake
    for source, lines in scripts.items():
        for m in (*quoted_pipes(source, lines), *missing_programs(source, lines, programs)):
            found.setdefault((m.source, m.line), m)
    return sorted(found.values(), key=lambda m: (m.source, m.line))


__all__ = ["Mistake", "Step", "executables", "missing_programs", "mistakes", "parse", "quoted_pipes", "traced"]
