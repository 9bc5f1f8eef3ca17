"""Real-time scoring under a standing, approved serving contract (``docs/protocols/serving.md``).

A ``serving_contract`` job is admitted, approved and started like any job; its roles set it up
(each party loads its part of the model, the providers agree on masking keys), and it then
stands SERVING at every node: the bank's loan system asks its own node to score applicants, the
bank's node asks every provider for its masked partial scores under a fresh nonce, and each
provider checks the request against the contract's terms, records it and answers. The model-part
interface (a part turns ids into partial scores) is ``bund.parties.protocols.scoring_parts``,
shared with the contract's set-up. Modules:

- ``errors``: why a request is refused;
- ``ledger``: each node's index of the requests its audit log recorded (``state/serving.db``);
- ``commit``: the group-commit thread that records requests, refusals and roots;
- ``service``: :class:`~bund.parties.serving.service.ServingService`, what the RPCs call;
- ``proofs``: a request's inclusion proof in a signed root, and its check by a regulator.
"""
