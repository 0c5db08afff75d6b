"""Built-in notifiers: ``webhook``, ``email``, ``slack`` and ``alertmanager``.

A receiver in ``alerting.receivers`` lists entries per type
(``webhook_configs``, ``email_configs``, ``slack_configs``,
``alertmanager_configs``); this plugin checks those entries at load (and on
reload) against each notifier's schema, and checks the route tree's receiver
names, so ``tsagent check-config`` reports every mistake with its key path.
A third-party notifier is the same: an object with ``name`` and
``async notify(alerts, receiver)`` returned from ``register_notifiers``, and its
entries under ``<name>_configs``.
"""

from __future__ import annotations

from typing import Any

from agent.plugin_api import AgentContext, Config, check_alerting, hookimpl
from plugins.notifiers.alertmanager import AlertmanagerNotifier
from plugins.notifiers.common import entry_errors
from plugins.notifiers.mail import EmailNotifier
from plugins.notifiers.slack import SlackNotifier
from plugins.notifiers.webhook import WebhookNotifier

NOTIFIERS = (WebhookNotifier, EmailNotifier, SlackNotifier, AlertmanagerNotifier)
SCHEMAS = {cls.name: cls.schema for cls in NOTIFIERS}
REQUIRED = {"webhook": "url", "email": "to", "slack": "api_url", "alertmanager": "url"}


@hookimpl
def register_notifiers(ctx: AgentContext) -> list[Any]:
    return [cls() for cls in NOTIFIERS]


@hookimpl
def validate_config(config: Config) -> list[str]:
    section = config.section("alerting")
    errors = check_alerting(section)
    for i, rcv in enumerate(section.get("receivers") or []):
        if not isinstance(rcv, dict):
            continue
        for kind, schema in SCHEMAS.items():
            for j, entry in enumerate(rcv.get(f"{kind}_configs") or []):
                path = f"alerting.receivers[{i}].{kind}_configs[{j}]"
                errors.extend(entry_errors(schema, entry, path))
                need = REQUIRED[kind]
                if isinstance(entry, dict) and not entry.get(need):
                    errors.append(f"{path}.{need}: required")
                if kind == "email" and isinstance(entry, dict) and not entry.get("from"):
                    errors.append(f"{path}.from: required")
    return errors
