"""Governance: who may read what, and in which form, enforced where data is pulled.

- :mod:`~ldw.governance.policies`: table policies, roles and grants -> a user's effective policy
  (row filters, masks, row caps, memory-only, export control) and its fingerprint;
- :mod:`~ldw.governance.masks`: the :class:`~ldw.governance.masks.Mask` kinds, as SQL and as Arrow;
- :mod:`~ldw.governance.resolve` and :mod:`~ldw.governance.allowlist`: ``sql=`` mappings resolved
  by scope in the source and checked against allow-lists (syntax, functions, casts);
- :mod:`~ldw.governance.trust`: local trust: private folders, their owners, locks.

The package imports nothing itself, so a client that needs only the local-trust checks does not
load the policy machinery.
"""
