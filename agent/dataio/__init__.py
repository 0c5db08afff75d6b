"""Data in and out as files and streams: CSV import, CSV/JSON-lines export, joins, live streams.

Above the query layer and below the web layer: these modules read and write
through :class:`agent.storage.Store` and are offered to users by
:class:`agent.root.Agent` and to HTTP by the plugins. See docs/architecture.md.
"""
