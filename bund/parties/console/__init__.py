"""``bund console``: a local web console for a party's operators and approvers, or a regulator.

It talks to nodes only through :class:`bund.parties.client.NodeClient`, the same mTLS client API
as the ``bund`` command, and shows what the command's views show (:mod:`bund.parties.views`).
Pages are rendered on the server from autoescaped Jinja2 templates and work without
JavaScript; one local script file adds live progress under a strict Content-Security-Policy.
``docs/console.md`` is the tour.
"""
