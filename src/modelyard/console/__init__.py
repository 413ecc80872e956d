"""The web console: what serves now and why, rollouts live, drift and metrics as pictures.

Served by ``modelyard serve`` at ``/ui`` (mounted by name, :mod:`modelyard.serving.mounts`):
server-rendered Jinja2 pages that read through the server's own objects, htmx (vendored) for
the live parts, the server's keys and roles for who sees and does what. Above serving in the
layers: it may import serving, registry, rollout and monitoring; nothing below imports it.

======================  =====================================================================
:mod:`~.app`            the ASGI app, sessions in and out, buttons sent to the JSON API
:mod:`~.pages`          one handler per page and the route table
:mod:`~.views`          what each page reads (bounded queries)
:mod:`~.paging`         pagination, sorting, filtering (pure)
:mod:`~.session`        cookies and CSRF tokens (pure)
:mod:`~.traffic`        requests, errors, p50/p99 from the server's metrics (pure)
:mod:`~.compare`        two versions side by side (pure)
:mod:`~.render`         templates and the filters that format units and times
======================  =====================================================================
"""

__all__: list[str] = []
