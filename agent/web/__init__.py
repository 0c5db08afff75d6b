"""The HTTP side: the aiohttp application, its API and ingest endpoints, auth and guards.

The top of the core: it builds the :class:`agent.root.Agent` as the store
opens and serves it; nothing below imports it. See docs/architecture.md.
"""
