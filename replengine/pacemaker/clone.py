"""How Pacemaker runs this agent, read from its meta variables (OCF_RESKEY_CRM_meta_*).

replengine has exactly one primary chosen by Pacemaker and relies on notifications, so a
clone set up otherwise would misbehave silently; start and validate-all refuse it here with
the command that fixes it. A run by hand (ocf-tester, crm_resource) has no such variables
and is not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from replengine import config as configmod
from replengine.pacemaker import params as paramsmod
from replengine.pacemaker.ocf import OCF_ERR_CONFIGURED, OCFError

#: meta variables ocf-tester and crm_resource also set on a run by hand
MANUAL_META = frozenset({"timeout", "interval"})

_META_PREFIX = "OCF_RESKEY_CRM_meta_"

log = logging.getLogger("replengine.agent")


def clone_meta(environ: Mapping[str, str]) -> dict[str, str]:
    """Pacemaker's meta variables (OCF_RESKEY_CRM_meta_*), by their short name."""
    return {k[len(_META_PREFIX) :]: v for k, v in environ.items() if k.startswith(_META_PREFIX)}


def is_promotable_instance(meta: Mapping[str, str]) -> bool:
    """True when Pacemaker runs us as a promotable clone instance (ocf-tester does not)."""
    return "promoted_max" in meta or "master_max" in meta


def check_clone_meta(meta: Mapping[str, str], instance: str, cfg: configmod.ResourceConfig) -> None:
    """Refuse to run other than as a promotable clone with notify=true, when Pacemaker's
    meta variables are there to say how we run (a run by hand has none). `instance` is
    $OCF_RESOURCE_INSTANCE, named in the command a refusal suggests."""
    if not set(meta) - MANUAL_META:
        return
    create = (
        f"pcs resource create {instance.split(':')[0]} "
        f"ocf:replengine:replengine resource={cfg.name} promotable notify=true"
    )

    def number(*names: str) -> int | None:
        for n in names:
            try:
                return int(meta[n])
            except (KeyError, ValueError):
                continue
        return None

    promoted_max = number("promoted_max", "master_max")
    promotable = meta.get("promotable", "").lower() in paramsmod.TRUE_WORDS or (
        promoted_max is not None and promoted_max > 0
    )
    if not promotable:
        raise OCFError(
            OCF_ERR_CONFIGURED,
            f"not run as a promotable clone: replengine needs Pacemaker to choose its "
            f"primary; create it with '{create}'",
        )
    notify = meta.get("notify", "").lower() in paramsmod.TRUE_WORDS
    if not notify and "notify_start_uname" not in meta:
        raise OCFError(
            OCF_ERR_CONFIGURED,
            "the clone runs without notifications: set the clone's meta attribute "
            "notify=true (pcs resource meta <clone> notify=true)",
        )
    if promoted_max is not None and promoted_max > 1:
        raise OCFError(
            OCF_ERR_CONFIGURED,
            f"promoted-max={promoted_max}, but a replengine resource has one primary: set "
            "the clone's meta attribute promoted-max=1",
        )
    clone_node_max = number("clone_node_max")
    if clone_node_max is not None and clone_node_max > 1:
        raise OCFError(
            OCF_ERR_CONFIGURED,
            f"clone-node-max={clone_node_max}, but a node runs one replengined per "
            "resource: set the clone's meta attribute clone-node-max=1",
        )
    clone_max = number("clone_max")
    if clone_max is not None and clone_max > len(cfg.nodes):
        log.warning(
            "clone-max=%d but %s has %d nodes: instances on nodes not in %s will not start",
            clone_max,
            cfg.name,
            len(cfg.nodes),
            cfg.path,
        )
