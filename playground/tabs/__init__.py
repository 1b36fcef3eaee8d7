"""The playground's page, one module per tab; :mod:`playground.app` (what ``streamlit run`` runs) joins them.

- :mod:`.common`    what every tab uses: the session's state, the history store, the worker and its status in the
  sidebar, the sidebar's parameters, the adapter pickers and uploads.
- :mod:`.outputs`   how outputs are shown: each one streaming in its lane, their timings, failures, the A/B comparison.
- :mod:`.run`       the **Run** tab: one diagram, one output or A/B side by side.
- :mod:`.evaluate`  the **Evaluate a set** tab: A/B over a set of diagrams, scores, review and verdicts.
- :mod:`.history`   the **History** tab: past runs and evaluations, charts, exports, reopen and repeat.

These modules render (they call Streamlit) but draw nothing when imported: the page calls them on every script run.
"""
