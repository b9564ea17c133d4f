"""The agent's parameters and actions, declared once; the OCF 1.1 meta-data is generated here.

The model is resource-agents' heartbeat/ocf.py (a Parameter and an Action record, an agent
that renders them), reduced to what this agent needs and extended with each parameter's
parser, so reading OCF_RESKEY_* and checking the values also follow from the table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import replengine
from replengine.errors import ConfigError

AGENT_NAME = "replengine"
OCF_VERSION = "1.1"

TRUE_WORDS = ("1", "true", "yes", "on", "y")
FALSE_WORDS = ("0", "false", "no", "off", "n")


def parse_bool(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"parameter {name}={raw!r} is not a boolean: use true or false")


def parse_count(name: str, raw: str) -> int | None:
    """A non-negative integer, or None when empty (use the config's value)."""
    word = raw.strip()
    if not word:
        return None
    if not word.isdigit():  # also refuses '-1', '1.5', '+2'
        raise ConfigError(
            f"parameter {name}={raw!r} is not a non-negative integer: give a number of "
            "peers (0 lets a lone survivor promote), or leave it empty for the config's "
            "promote_min_peers"
        )
    return int(word)


def parse_string(name: str, raw: str) -> str:
    return raw.strip()


@dataclass(frozen=True)
class Parameter:
    name: str
    shortdesc: str
    longdesc: str
    content: str = "string"  # OCF content type: string | boolean | integer
    default: str = ""
    required: bool = False
    unique: bool = False
    parse: Callable[[str, str], Any] = parse_string

    def value(self, environ: Mapping[str, str]) -> Any:
        """The parsed value of OCF_RESKEY_<name> (the default when unset); ConfigError with a
        sysadmin's reason when it is missing or malformed."""
        raw = environ.get(f"OCF_RESKEY_{self.name}", "")
        if self.required and not raw.strip():
            raise ConfigError(f"parameter {self.name} is required ({self.shortdesc}) but not set")
        return self.parse(self.name, raw if raw.strip() else self.default)

    def to_xml(self) -> str:
        # imported here: xml.sax.saxutils pulls in urllib.request, http.client, email and
        # ssl, 40 ms of every agent run, and only meta-data needs it (a monitor or a
        # failover's notify and promote do not)
        from xml.sax.saxutils import escape, quoteattr

        return (
            f'<parameter name="{self.name}" unique="{int(self.unique)}" '
            f'required="{int(self.required)}">\n'
            f'<longdesc lang="en">{escape(self.longdesc)}</longdesc>\n'
            f'<shortdesc lang="en">{escape(self.shortdesc)}</shortdesc>\n'
            f'<content type="{self.content}" default={quoteattr(self.default)}/>\n'
            "</parameter>\n"
        )


@dataclass(frozen=True)
class Action:
    name: str
    timeout: int  # seconds: the default Pacemaker is told to use
    interval: int | None = None
    role: str | None = None  # OCF 1.1: Promoted | Unpromoted
    depth: int | None = None

    @property
    def method(self) -> str:
        """The Agent method that runs it."""
        return self.name.replace("-", "_")

    def to_xml(self) -> str:
        attrs = [f'name="{self.name}"']
        if self.depth is not None:
            attrs.append(f'depth="{self.depth}"')
        attrs.append(f'timeout="{self.timeout}s"')
        if self.interval is not None:
            attrs.append(f'interval="{self.interval}s"')
        if self.role is not None:
            attrs.append(f'role="{self.role}"')
        return f"<action {' '.join(attrs)}/>\n"


SHORTDESC = "Block-volume replication with log-diff fast failover"
LONGDESC = """\
Manages one replengine resource (a block volume replicated from one primary to several sync
and async secondaries, each node keeping a storage replication log) as a promotable clone.
Start brings the node's replengined up as a secondary that follows the current primary; promote
makes it primary after pulling any records it lacks from the most up-to-date peer (log-diff
failover: only the missing records move, never the whole volume); demote drains in-flight
writes. Promotion scores follow each node's end LSN relative to its peers, so Pacemaker
promotes the most up-to-date secondary. It must run as a promotable clone with notify=true
(start and validate-all refuse otherwise when Pacemaker runs them). Create it with
pcs resource create r0 ocf:replengine:replengine resource=r0 promotable notify=true"""

PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "resource",
        "resource name",
        "Name of the replengine resource, as in [resource] name of its config.",
        required=True,
        unique=True,
    ),
    Parameter(
        "config",
        "config file",
        "Path of the resource's config file (the same file on every node).\n"
        "Default: /etc/replengine/RESOURCE.toml.",
        unique=True,
    ),
    Parameter(
        "min_peers",
        "minimum reachable peers to promote",
        "Peers that must be reachable for promote to proceed: an integer from 0 to the number\n"
        "of other nodes in the config. Empty: the config's promote_min_peers (a majority of\n"
        "the other nodes by default). 0 lets a lone survivor promote.",
        parse=parse_count,  # string: empty is a valid value here
    ),
    Parameter(
        "auto_init",
        "initialise a blank SRL on start",
        "Initialise this node's SRL on start when it has no replengine superblock\n"
        "yet (an initialised SRL is never touched).",
        content="boolean",
        default="true",
        parse=parse_bool,
    ),
)

ACTIONS: tuple[Action, ...] = (
    Action("start", 120),
    Action("stop", 120),
    Action("promote", 300),
    Action("demote", 120),
    Action("notify", 60),
    Action("monitor", 30, interval=10, role="Promoted", depth=0),
    Action("monitor", 30, interval=11, role="Unpromoted", depth=0),
    Action("validate-all", 30),
    Action("meta-data", 5),
)


def action_names() -> list[str]:
    """Each action once, in table order."""
    return list(dict.fromkeys(a.name for a in ACTIONS))


def default_timeout(action: str) -> float:
    return float(next(a.timeout for a in ACTIONS if a.name == action))


def read_parameters(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every parameter's parsed value; ConfigError naming the first bad one."""
    environ = os.environ if environ is None else environ
    return {p.name: p.value(environ) for p in PARAMETERS}


def metadata_xml() -> str:
    from xml.sax.saxutils import escape

    return (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">\n'
        f'<resource-agent name="{AGENT_NAME}" version="{replengine.__version__}">\n'
        f"<version>{OCF_VERSION}</version>\n"
        f'<longdesc lang="en">\n{escape(LONGDESC)}\n</longdesc>\n'
        f'<shortdesc lang="en">{escape(SHORTDESC)}</shortdesc>\n'
        "<parameters>\n"
        + "".join(p.to_xml() for p in PARAMETERS)
        + "</parameters>\n<actions>\n"
        + "".join(a.to_xml() for a in ACTIONS)
        + "</actions>\n</resource-agent>\n"
    )
