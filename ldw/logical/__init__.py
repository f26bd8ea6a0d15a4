"""The logical layer's query analysis: what SQL needs from each relation it reads.

:mod:`ldw.logical.analyze` finds, per relation, the columns a query uses, the conditions that
may filter it first and a row limit; :mod:`ldw.logical.conjuncts` turns a condition into ldw's
predicate format, which decides what reaches a source. The engine's
:mod:`ldw.engine.federation` resolves relations, reads them and runs the query. Nothing here
touches a source or imports the engine.
"""
